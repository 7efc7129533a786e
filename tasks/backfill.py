"""Backfill: past scans processed again, in full, with a chosen model and this code version
(flows/backfill.py composes these).

A scan is done when its manifest says it was made by the target model (its package's
sha256) and code version: a backfill started again skips it, and one interrupted half-way
resumes where it stopped. Each scan is a run of process-scan on the backfill queue, created
with an idempotency key of the scan, the model and the code: started again while that run
is still waiting or running, the backfill follows the same run instead of making another.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any
from uuid import UUID

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from pydantic import BaseModel

from scanflow.contracts.manifest import MANIFEST_NAME, read_manifest
from scanflow.contracts.options import ModelRef
from scanflow.storage import join, store_for

FINAL = frozenset({"COMPLETED", "FAILED", "CRASHED", "CANCELLED"})


class PastScan(BaseModel):
    """A completed scan, as its current manifest describes it."""

    scan_id: str
    patient_id: str
    scan_uri: str
    source_uri: str
    scanned_at: datetime
    model_sha256: str
    code_version: str

    def done(self, model_sha256: str, code_version: str) -> bool:
        return self.model_sha256 == model_sha256 and self.code_version == code_version


def past_scans(
    results_root: str, since: datetime | None = None, patient_id: str | None = None
) -> list[PastScan]:
    """Completed scans (scanned since ``since``, of one patient if given), by patient, then
    oldest first: the order a patient's history must be rebuilt in."""
    store = store_for(results_root)
    patients = (
        [join(results_root, patient_id)]
        if patient_id
        else [
            p
            for p in store.list_dirs(results_root)
            if not p.rstrip("/").rsplit("/", 1)[-1].startswith("_")  # _reconcile, _shadow ...
        ]
    )
    out: list[PastScan] = []
    for patient in patients:
        for scan in store.list_dirs(patient):
            uri = join(scan, MANIFEST_NAME)
            if not store.exists(uri):
                continue  # never completed: nothing to re-process from
            m = read_manifest(uri)
            if since is None or m.scanned >= since:
                out.append(
                    PastScan(
                        scan_id=m.scan_id,
                        patient_id=m.patient_id,
                        scan_uri=scan,
                        source_uri=m.source_uri,
                        scanned_at=m.scanned,
                        model_sha256=m.model.sha256,
                        code_version=m.code_version,
                    )
                )
    return sorted(out, key=lambda s: (s.patient_id, s.scanned_at))


def run_key(scan: PastScan, model_sha256: str, code_version: str) -> str:
    return f"backfill/{scan.patient_id}/{scan.scan_id}/{model_sha256[:16]}/{code_version}"


@task(name="backfill-scan", cache_policy=NO_CACHE)
def backfill_scan(
    scan: PastScan,
    model: ModelRef,
    code_version: str,
    deployment: str,
    queue: str,
    timeout_s: float,
) -> dict[str, Any]:
    """One past scan processed again by a run of ``deployment`` on ``queue``; waits for it.

    The run is the one with this scan's key when there is one (a backfill interrupted while
    it waited, or one that finished since the scan was listed); a final one that did not
    leave the scan done (it failed, or another processing came after it) gives way to a new
    run.
    """
    assert model.sha256 is not None  # the flow pins the model by hash
    started = time.perf_counter()
    key = run_key(scan, model.sha256, code_version)
    with get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name(deployment)
        params = {
            "scan_id": scan.scan_id,
            "patient_id": scan.patient_id,
            "video_uri": scan.source_uri,
            "options": {"model": model.model_dump(exclude_none=True)},
        }

        def create(idempotency_key: str) -> Any:
            return client.create_flow_run_from_deployment(
                dep.id,
                parameters=params,
                name=scan.scan_id,
                idempotency_key=idempotency_key,
                tags=["scanflow", "backfill"],
                work_queue_name=queue,
            )

        run = create(key)
        resumed = run.state is not None and run.state.type.value not in ("SCHEDULED", "PENDING")
        final = run.state is not None and run.state.type.value in FINAL
        if final and not _now_done(scan, model.sha256, code_version):
            run, resumed = create(f"{key}/again-{time.time_ns()}"), False
        state = _wait(client, run.id, timeout_s)
    return {
        "scan_id": scan.scan_id,
        "patient_id": scan.patient_id,
        "flow_run_id": str(run.id),
        "state": state,
        "followed_a_run_in_flight": resumed,
        "seconds": round(time.perf_counter() - started, 2),
    }


def _now_done(scan: PastScan, model_sha256: str, code_version: str) -> bool:
    """Is the scan done now (its run with this key may have finished since it was listed)?"""
    m = read_manifest(join(scan.scan_uri, MANIFEST_NAME))
    return m.model.sha256 == model_sha256 and m.code_version == code_version


def _wait(client: Any, run_id: UUID, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        run = client.read_flow_run(run_id)
        if run.state is not None and run.state.type.value in FINAL:
            return str(run.state.name)
        if time.monotonic() > deadline:
            get_run_logger().warning("run %s not final after %.0f s", run_id, timeout_s)
            return f"not final after {timeout_s:.0f} s ({run.state.name if run.state else '?'})"
        time.sleep(1.0)
