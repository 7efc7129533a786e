"""backfill: past scans processed again, in full, with one model and this code version.

Each scan not yet done (its manifest names another model or code version) becomes a run of
process-scan on the backfill queue (served after uploads, with a concurrency limit that
leaves uploads a slot), pinned to the target model by hash. A patient's scans go one after
the other, oldest first, so each is compared with the re-processed scan before it and the
patient's trend is rebuilt from re-processed scans; ``backfill_patients`` patients at once.
The previous result of every scan is kept under ``<scan>/versions/`` (tasks/versions.py).

Idempotent and resumable: started again, it skips what is done and follows the runs still in
flight. Progress is a progress artifact and a log line per scan; the ledger is a table
artifact and ``<results root>/_backfill/<started>.json``.

    scanflow backfill [--since DATE] [--patient P] [--model NAME@VERSION | URI]
"""

from __future__ import annotations

import contextvars
import json
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from itertools import groupby
from typing import Any, cast
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from scanflow.contracts.options import ModelRef
from scanflow.models.registry import choose_model
from scanflow.settings import Settings
from scanflow.storage import join, store_for
from tasks.backfill import PastScan, backfill_scan, past_scans

REPORTS = "_backfill"


class _Progress:
    """Scans accounted for (skipped or finished) out of the total, on the run's progress
    artifact and in the log."""

    def __init__(self, total: int, skipped: int) -> None:
        self.total, self.count = total, skipped
        self.lock = threading.Lock()
        made = create_progress_artifact(
            self.percent(), key="backfill-progress", description="scans done, of those selected"
        )
        self.artifact = cast(UUID, made)  # a UUID when called from sync code

    def percent(self) -> float:
        return round(100.0 * self.count / self.total, 1) if self.total else 100.0

    def advance(self, row: dict[str, Any]) -> None:
        with self.lock:
            self.count += 1
            update_progress_artifact(self.artifact, self.percent())
            get_run_logger().info(
                "backfill %d/%d: %s/%s %s in %.1f s",
                self.count,
                self.total,
                row["patient_id"],
                row["scan_id"],
                row["state"],
                row["seconds"],
            )


def _patient(
    scans: list[PastScan],
    model: ModelRef,
    code: str,
    settings: Settings,
    deployment: str,
    timeout_s: float,
    progress: _Progress,
) -> list[dict[str, Any]]:
    rows = []
    for scan in scans:  # oldest first: each is tracked against the re-processed one before
        row = backfill_scan(scan, model, code, deployment, settings.backfill_queue, timeout_s)
        progress.advance(row)
        rows.append(row)
    return rows


@flow(name="backfill", persist_result=False)
def backfill(
    model: ModelRef | None = None,
    since: datetime | None = None,
    patient_id: str | None = None,
    deployment: str | None = None,
    timeout_s: float = 3600.0,
) -> dict[str, Any]:
    """Re-process past scans (scanned since ``since``, of ``patient_id`` if given) with
    ``model`` (default: production's) through ``deployment`` (default: settings')."""
    settings = Settings()
    started = datetime.now(UTC)
    target, why = choose_model(model or ModelRef())
    if target.sha256 is None:
        raise ValueError(f"model {target.uri}: its sha256 is needed to pin it")
    code = settings.resolved_code_version()
    deployment = deployment or settings.deployment
    scans = past_scans(settings.results_root, since, patient_id)
    todo = [s for s in scans if not s.done(target.sha256, code)]
    logger = get_run_logger()
    logger.info(
        "backfill with %s %s (%s), code %s: %d scans selected, %d already done",
        target.name,
        target.version,
        why,
        code,
        len(scans),
        len(scans) - len(todo),
    )
    progress = _Progress(len(scans), len(scans) - len(todo))
    chains = [list(g) for _, g in groupby(todo, key=lambda s: s.patient_id)]
    with ThreadPoolExecutor(max_workers=settings.backfill_patients) as pool:
        futures = [
            pool.submit(
                contextvars.copy_context().run,
                _patient,
                chain,
                target,
                code,
                settings,
                deployment,
                timeout_s,
                progress,
            )
            for chain in chains
        ]
        rows = [row for f in futures for row in f.result()]
    states = Counter(r["state"] for r in rows)
    report = {
        "model": target.model_dump(),
        "why": why,
        "code_version": code,
        "deployment": deployment,
        "queue": settings.backfill_queue,
        "since": since.isoformat() if since else None,
        "patient_id": patient_id,
        "started_at": started.isoformat(),
        "finished_at": datetime.now(UTC).isoformat(),
        "selected": len(scans),
        "skipped": len(scans) - len(todo),
        "processed": states.get("Completed", 0),
        "not_completed": len(rows) - states.get("Completed", 0),
        "states": dict(states),
        "runs": rows,
    }
    uri = join(settings.results_root, REPORTS, f"{started:%Y%m%dT%H%M%S}Z.json")
    store_for(uri).put_bytes(uri, json.dumps(report, indent=1).encode(), "application/json")
    report["report"] = uri
    create_table_artifact(
        key="backfill-ledger",
        table=[
            {k: r[k] for k in ("patient_id", "scan_id", "state", "seconds", "flow_run_id")}
            for r in rows
        ]
        or [{"patient_id": "-", "scan_id": "-", "state": "nothing to do", "seconds": 0}],
        description=(
            f"{target.name} {target.version}, code {code}: {report['processed']} processed, "
            f"{report['skipped']} already done, {report['not_completed']} not completed"
        ),
    )
    return report
