"""Fixtures of the fault tests: the shared harness (tests/support/stack.py: receivers for
the platform and Slack, local stacks of their own), and their table at the end of the run."""

from __future__ import annotations

from tests.support import report
from tests.support.stack import platform, slack
from tests.system.faults.harness import FAULT_FIGURES

__all__ = ["platform", "slack"]  # the receivers, as fixtures


def _table() -> list[str]:
    if not FAULT_FIGURES:
        return []
    lines = [f"{'case':<34} {'outcome':<40} {'-> final':>9} {'-> platform':>12}"]
    for row in FAULT_FIGURES:
        final = f"{row.to_final_s:7.1f} s" if row.to_final_s is not None else "-"
        platform = f"{row.to_platform_s:9.1f} s" if row.to_platform_s is not None else "-"
        lines.append(f"{row.case:<34} {row.outcome:<40} {final:>9} {platform:>12}")
        if row.note:
            lines.append(f"{'':<34} {row.note}")
    return lines


report.register("faults: outcome, time to final state, time to platform delivery", _table)
