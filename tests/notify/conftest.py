"""Fixtures of the notification tests (the harness is in notify_harness.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from notify_harness import FIGURES, SIGNING_SECRET, Receiver


@pytest.fixture(scope="session")
def platform() -> Iterator[Receiver]:
    receiver = Receiver("platform", secret=SIGNING_SECRET).start()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="session")
def slack() -> Iterator[Receiver]:
    receiver = Receiver("slack").start()
    yield receiver
    receiver.stop()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FIGURES:
        return
    terminalreporter.section("notification delivery: outcome -> platform receiver")
    for case, what, seconds in FIGURES:
        terminalreporter.write_line(f"{case:<34} {what:<44} {seconds:8.2f} s")
