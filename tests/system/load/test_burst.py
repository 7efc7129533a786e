"""A burst of uploads through the Lambda trigger onto a stack of its own, on the embedded
default (SQLite, with basic auth on) and on PostgreSQL: every upload ends once, in the
outcome its input calls for, and the orchestrator crashes none of them.

The burst is bench/burst.py's, smaller: 20 uploads within 4 s, each delivered twice as S3
may (40 invocations, 10 at a time), one in five bad (random bytes and a 2 s scan are rejected
by the flow, a missing object fails as not_found, an empty upload is refused by the
trigger). Every accepted
upload is processed for real (a process per run, as the process pool does), which is what
bounds the size: on 2 idle cores a run costs about 8 s of CPU.
"""

from __future__ import annotations

import pytest

from deployments.rehearsal.burst import BAD_KINDS, BurstReport, BurstStack, plan_uploads, run_burst

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCANS = 20
MIX_BAD = 0.2


def _burst(stack: BurstStack, reports: list[BurstReport]) -> BurstReport:
    report = run_burst(
        stack,
        SCANS,
        within_s=4.0,
        mix_bad=MIX_BAD,
        redeliver=1.0,
        lambda_concurrency=10,
        stall_s=180,
        timeout_s=600,
    )
    reports.append(report)
    return report


def _assert_each_scan_ended_once(report: BurstReport) -> None:
    kinds = plan_uploads(SCANS, MIX_BAD)
    refused = kinds.count("empty")
    good = kinds.count("good")
    missing = kinds.count("missing")  # not_found: failed (the integration's), not rejected
    assert set(kinds) - {"good"} == set(BAD_KINDS)  # every kind of bad upload was tried
    assert report.deliveries == 2 * SCANS
    assert report.dead_lettered == 0, report.lines()
    assert report.refused == refused
    assert report.accepted == SCANS - refused
    assert report.found_again >= report.accepted  # each second delivery found its run
    assert report.lost == 0, report.lines()
    assert report.crashed == 0, report.lines()
    assert report.duplicates == 0, report.lines()
    assert report.unexpected == 0, report.notes
    assert report.completed == good
    assert report.rejected == SCANS - good - refused - missing
    assert report.failed == missing and report.cancelled == 0


def test_burst_on_sqlite_ends_every_scan_once(
    sqlite_stack: BurstStack, burst_reports: list[BurstReport]
) -> None:
    _assert_each_scan_ended_once(_burst(sqlite_stack, burst_reports))


def test_burst_on_postgres_ends_every_scan_once(
    postgres_stack: BurstStack, burst_reports: list[BurstReport]
) -> None:
    _assert_each_scan_ended_once(_burst(postgres_stack, burst_reports))
