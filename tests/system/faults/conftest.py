"""Fixtures of the fault tests: the shared harness (tests/support/stack.py: receivers for
the platform and Slack, local stacks of their own)."""

from __future__ import annotations

from typing import Any

from tests.support.stack import platform, slack
from tests.system.faults.harness import FAULT_FIGURES

__all__ = ["platform", "slack"]  # the receivers, as fixtures


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FAULT_FIGURES:
        return
    terminalreporter.section("faults: outcome, time to final state, time to platform delivery")
    terminalreporter.write_line(f"{'case':<34} {'outcome':<40} {'-> final':>9} {'-> platform':>12}")
    for row in FAULT_FIGURES:
        final = f"{row.to_final_s:7.1f} s" if row.to_final_s is not None else "-"
        platform = f"{row.to_platform_s:9.1f} s" if row.to_platform_s is not None else "-"
        terminalreporter.write_line(f"{row.case:<34} {row.outcome:<40} {final:>9} {platform:>12}")
        if row.note:
            terminalreporter.write_line(f"{'':<34} {row.note}")
