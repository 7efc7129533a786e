"""Fixtures of the notification tests (the harness is in notify_harness.py), and their table
at the end of the run."""

from __future__ import annotations

from tests.support import report
from tests.support.stack import FIGURES, platform, slack

__all__ = ["platform", "slack"]  # the receivers, as fixtures

report.register(
    "notification delivery: outcome -> platform receiver",
    lambda: [f"{case:<34} {what:<44} {seconds:8.2f} s" for case, what, seconds in FIGURES],
)
