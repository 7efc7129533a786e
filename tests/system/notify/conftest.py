"""Fixtures of the notification tests (the harness is in notify_harness.py)."""

from __future__ import annotations

from typing import Any

from tests.support.stack import FIGURES, platform, slack

__all__ = ["platform", "slack"]  # the receivers, as fixtures


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FIGURES:
        return
    terminalreporter.section("notification delivery: outcome -> platform receiver")
    for case, what, seconds in FIGURES:
        terminalreporter.write_line(f"{case:<34} {what:<44} {seconds:8.2f} s")
