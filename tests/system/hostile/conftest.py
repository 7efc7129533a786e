"""Fixtures of the hostile-input and security tests: the corpus of bad media, a stack of its
own for the leak and replay tests, and the table of outcomes printed at the end."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import report
from tests.system.hostile.corpus import Case, build_corpus
from tests.system.hostile.leak_world import LeakWorld, start_leak_world
from tests.system.hostile.report import REPORT, record, table


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Case]:
    cases = build_corpus(tmp_path_factory.mktemp("hostile"))
    for case in cases.values():
        record(case.name, what=case.what, expected=case.expected or "completes")
    return cases


@pytest.fixture(scope="session")
def leak_world(s3_endpoint: str, good_scan: Any) -> Iterator[LeakWorld]:
    """A stack of its own whose worker holds distinctive secrets, its runs done."""
    world = start_leak_world(s3_endpoint, good_scan.path)
    try:
        yield world
    finally:
        world.stop()


report.register("hostile inputs: outcome, reason, time and memory", lambda: REPORT, table)
