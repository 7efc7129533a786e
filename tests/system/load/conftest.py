"""Fixtures of the load tests: stacks of their own, started as bench/burst.py starts them.

Each stack (``deployments.rehearsal.burst.BurstStack``) is moto's S3 server and a scanflow
stack brought up by ``scanflow up`` in a temporary home on free ports, never the session's
shared one: a burst fills its pool for minutes. The PostgreSQL stack gets a database named
for this test run, dropped when it goes down. The SQLite stack has basic auth on, so the
bursts against it also show that the worker and the Lambda trigger work with auth.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator

import pytest

from deployments.rehearsal.burst import BurstReport, BurstStack
from tests.support import report

REPORTS: list[BurstReport] = []  # printed at the end of the run


@pytest.fixture(scope="session")
def burst_reports() -> list[BurstReport]:
    """Reports the tests add, printed at the end of the run."""
    return REPORTS


@pytest.fixture(scope="session")
def auth_string() -> str:
    return "scanflow:" + base64.urlsafe_b64encode(os.urandom(12)).decode().rstrip("=")


@pytest.fixture(scope="session")
def sqlite_stack(auth_string: str) -> Iterator[BurstStack]:
    """The embedded default (SQLite) with basic auth on."""
    with BurstStack("sqlite", auth=auth_string, name="load-sqlite") as stack:
        yield stack


@pytest.fixture(scope="session")
def postgres_stack() -> Iterator[BurstStack]:
    """The same on PostgreSQL (127.0.0.1:5432), in a database of its own."""
    with BurstStack("postgres", name="load-pg") as stack:
        yield stack


report.register(
    "load: bursts through the Lambda trigger",
    lambda: [line for burst in REPORTS for line in burst.lines()],
)
