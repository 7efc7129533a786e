"""`scanflow backfill` on a local stack of its own: two patients' scans processed by
production (the shipped default), then re-processed with another model on the backfill
queue, never more than one at a time on the stack's two slots, so an upload that arrives
while the backfill runs always finds a slot. The backfill killed half-way resumes without
re-processing what was done or duplicating the run in flight; every scan ends made by the
new model, its previous result kept under versions/, its place in the patient's history
kept, and the patient's trend rebuilt; run again, it does nothing."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cv.model.network import sha256_file
from cv.synthetic import SyntheticScan
from scanflow.local.sandbox import Sandbox
from scanflow.models.registry import DEFAULT_PACKAGE
from scanflow.settings import REPO_ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCANS = [("pa", "pa-1"), ("pb", "pb-1"), ("pa", "pa-2"), ("pb", "pb-2")]


def _manifest(box: Sandbox, patient: str, scan: str) -> dict[str, Any]:
    return json.loads((box.home / "results" / patient / scan / "manifest.json").read_text())


def _backfill_runs(box: Sandbox) -> list[Any]:
    return [r for r in box.runs_of("process-scan") if "backfill" in r.tags]


def _until(what: str, timeout: float, check: Any) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.5)
    raise TimeoutError(f"waited {timeout:.0f} s for {what}")


def _report(stdout: str) -> dict[str, Any]:
    return json.loads(stdout[stdout.index("{\n") :])  # type: ignore[no-any-return]


def test_a_backfill_reprocesses_resumes_and_leaves_uploads_a_slot(
    good_scan: SyntheticScan, later_scan: SyntheticScan, package: Path, tmp_path: Path
) -> None:
    registry = tmp_path / "registry"
    with Sandbox("backfill", settings={"model_registry_uri": registry.as_uri()}) as box:
        published = box.cli("model", "publish", str(package))
        assert published.returncode == 0, published.stderr
        target = sha256_file(package)
        for pair in (SCANS[:2], SCANS[2:]):  # each patient's first scan, then their second
            ids = [
                box.submit(scan, (good_scan if scan.endswith("1") else later_scan).path.as_uri(),
                           patient_id=patient)
                for patient, scan in pair
            ]  # fmt: skip
            for run_id in ids:
                run = box.wait_state(run_id, {"COMPLETED", "FAILED", "CRASHED"}, timeout=300)
                assert run.state.type.value == "COMPLETED", run.state.message
        before = {scan: _manifest(box, patient, scan) for patient, scan in SCANS}
        assert {m["model"]["sha256"] for m in before.values()} == {DEFAULT_PACKAGE.sha256}

        first = subprocess.Popen(
            [sys.executable, "-m", "scanflow.cli.main", "backfill", "--model", "test-views@0.1.0"],
            cwd=REPO_ROOT,
            env=box.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            running = _until(
                "a backfill run to be Running",
                180,
                lambda: [r for r in _backfill_runs(box) if r.state.type.value == "RUNNING"],
            )[0]
            upload = box.submit("pc-1", good_scan.path.as_uri(), patient_id="pc")
            started = box.wait_state(upload, {"RUNNING", "COMPLETED"}, timeout=120)
            assert started.work_queue_name == "default" and running.work_queue_name == "backfill"
            # (which of an upload and a waiting backfill run a freed slot goes to is the
            # queues' priority: tests/system/test_queue_priority.py. A backfill run the
            # worker had already taken when the upload came may start first.)
            box.wait_state(upload, {"COMPLETED"}, timeout=300)
            # interrupted once the first scan is re-processed
            _until(
                "a backfill run to complete",
                300,
                lambda: [r for r in _backfill_runs(box) if r.state.type.value == "COMPLETED"],
            )
        finally:
            first.kill()
            first.wait()
        done_before = {r.name for r in _backfill_runs(box) if r.state.type.value == "COMPLETED"}
        assert done_before and len(done_before) < len(SCANS)

        again = box.cli("backfill", "--model", "test-views@0.1.0", "--json", timeout=900)
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
        report = _report(again.stdout)
        assert report["selected"] == len(SCANS) + 1  # and the upload that came meanwhile
        assert report["skipped"] >= len(done_before)
        assert not {r["scan_id"] for r in report["runs"]} & done_before  # not done twice
        per_scan: dict[str, int] = {}
        for r in _backfill_runs(box):
            per_scan[r.name] = per_scan.get(r.name, 0) + 1
        assert per_scan == dict.fromkeys([s for _, s in SCANS] + ["pc-1"], 1), per_scan

        for patient, scan in SCANS:
            now = _manifest(box, patient, scan)
            assert now["model"]["sha256"] == target and "pinned" in now["model"]["source"]
            assert now["scanned_at"] == before[scan]["scanned_at"]  # its place is kept
            [kept] = now["previous_versions"]
            old = json.loads(Path(kept.removeprefix("file://")).read_text())
            assert old["model"]["sha256"] == DEFAULT_PACKAGE.sha256
            assert old["flow_run_id"] == before[scan]["flow_run_id"]
            assert old["artifacts"]["views"].startswith(kept.rsplit("/", 1)[0])
        second = _manifest(box, "pa", "pa-2")
        assert second["tracking"]["previous_scan_id"] == "pa-1"
        assert [p["scan_id"] for p in second["trend"]["scans"]] == ["pa-1", "pa-2"]
        assert second["started_at"] > _manifest(box, "pa", "pa-1")["completed_at"]

        # the backfill queue's limit held: never two backfill runs at once, so an upload
        # always found the pool's other slot free
        spans = sorted((r.start_time, r.end_time) for r in _backfill_runs(box))
        for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
            assert start >= end, spans
        wait = (started.start_time - started.created).total_seconds()
        print(f"\nthe upload waited {wait:.1f} s to start while the backfill ran")

        idle = box.cli("backfill", "--model", "test-views@0.1.0", "--json", timeout=300)
        assert idle.returncode == 0, idle.stderr[-3000:]
        nothing = _report(idle.stdout)
        assert nothing["skipped"] == nothing["selected"] and not nothing["runs"]
