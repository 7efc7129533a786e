"""The real path: prefect.yaml's local deployment on the process pool, a worker, runs created
through the API by the same code the command line uses."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cv.synthetic import SyntheticScan
from scanflow.cli.local import submit_scan, wait_for_run
from scanflow.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_submitted_scans_run_on_the_worker_and_it_keeps_serving(
    local_stack,
    good_scan: SyntheticScan,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    settings = Settings()
    bad = tmp_path / "junk.mp4"
    bad.write_bytes(os.urandom(50_000))
    first = _run(
        submit_scan(
            settings, video_uri=good_scan.path.as_uri(), patient_id="dep-1", scan_id="dep-scan"
        )
    )
    again = _run(
        submit_scan(
            settings, video_uri=good_scan.path.as_uri(), patient_id="dep-1", scan_id="dep-scan"
        )
    )
    assert again.id == first.id  # idempotency key: the same scan is the same run
    assert first.name == "dep-scan" and "scanflow" in first.tags
    junk = _run(
        submit_scan(settings, video_uri=bad.as_uri(), patient_id="dep-1", scan_id="dep-junk")
    )
    done = _run(wait_for_run(first.id, 240))
    failed = _run(wait_for_run(junk.id, 240))
    assert done.state.type.value == "COMPLETED", done.state.message
    assert failed.state.type.value == "FAILED"
    assert "[unreadable_video]" in failed.state.message and "junk.mp4" in failed.state.message
    # the worker is still serving after a bad scan
    after = _run(
        submit_scan(
            settings, video_uri=good_scan.path.as_uri(), patient_id="dep-1", scan_id="dep-after"
        )
    )
    assert _run(wait_for_run(after.id, 240)).state.type.value == "COMPLETED"
    manifest = (
        Path(settings.results_root.removeprefix("file://"))
        / "dep-1"
        / "dep-after"
        / "manifest.json"
    )
    assert json.loads(manifest.read_text())["flow_run_id"] == str(after.id)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scanflow.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_command_line_process_and_submit(local_stack, good_scan: SyntheticScan) -> None:  # type: ignore[no-untyped-def]
    status = _cli("server", "status")
    assert status.returncode == 0 and '"healthy": true' in status.stdout
    out = _cli("process", str(good_scan.path), "--patient-id", "cli-1", "--scan-id", "cli-a")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("/cli-1/cli-a/manifest.json")
    sub = _cli(
        "submit", str(good_scan.path), "--patient-id", "cli-1", "--scan-id", "cli-b", "--wait"
    )
    assert sub.returncode == 0, sub.stdout + sub.stderr
    assert "state: Completed" in sub.stdout and "/runs/flow-run/" in sub.stdout
    assert "/cli-1/cli-b/report.html" in sub.stdout
    # the run's progress, followed from the worker's run, ends full (on stderr)
    assert re.search(r"^progress:\s+100\.0%\s+done$", sub.stderr, re.M), sub.stderr[-2000:]
    again = _cli("submit", str(good_scan.path), "--patient-id", "cli-1", "--scan-id", "cli-b")
    assert again.stdout.splitlines()[0] == sub.stdout.splitlines()[0]  # same run id
    bad = _cli("process", "/nonexistent/scan.mp4", "--patient-id", "cli-1")
    assert bad.returncode == 1 and "[not_found]" in bad.stderr
    # heartbeats: the deployment's run sends them (the missed-heartbeats automation watches
    # it); the run called in the command's own process sends none (nothing watches it, and
    # joining Prefect's heartbeat thread would hold its end up to a second)
    manifest = Path(out.stdout.strip().removeprefix("file://"))
    in_process = json.loads(manifest.read_text())["flow_run_id"]
    deployed = sub.stdout.splitlines()[0].split()[0]
    deadline = time.monotonic() + 30
    while not _heartbeats(deployed) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _heartbeats(deployed), "the deployment run sent no heartbeat"
    assert _heartbeats(in_process) == 0


def _heartbeats(flow_run_id: str) -> int:
    import httpx
    from prefect.settings import PREFECT_API_URL

    page = httpx.post(
        f"{PREFECT_API_URL.value()}/events/filter",
        json={
            "filter": {
                "event": {"name": ["prefect.flow-run.heartbeat"]},
                "resource": {"id": [f"prefect.flow-run.{flow_run_id}"]},
            },
            "limit": 50,
        },
        timeout=30,
    )
    page.raise_for_status()
    return int(page.json()["total"])
