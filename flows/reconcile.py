"""reconcile: every upload accounted for, every outcome acknowledged.

For a window (``since`` .. ``until``; by default the last ``reconcile_lookback_s``), one pass
compares the upload bucket (``uploads_uri``) with process-scan's runs (by the trigger's
idempotency key), each final run with the platform's receipt of its event
(scanflow/notify/receipts.py) and each completed run with its manifest, and heals what it
can: a run for an upload that has none, the event sent again (same ``event_id``) for an
outcome never acknowledged. Runs waiting past ``pending_after_s`` and completed runs without
a manifest are reported. At most ``reconcile_max_actions`` writes a pass; the rest waits for
the next one. Each pass leaves a ledger: a table artifact on its run and a JSON report in
the results store (``<results root>/_reconcile/``).

Deployed with a 15-minute schedule and a concurrency limit of 1 (prefect.yaml); by hand:
``scanflow reconcile [--since T] [--until T] [--dry-run]``. Every write is idempotent, so a
pass by hand during a scheduled one changes nothing twice.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from scanflow.settings import Settings
from scanflow.storage import join, store_for
from tasks.reconcile import (
    FINAL,
    Gap,
    check_outcomes,
    flow_run_ids,
    list_uploads,
    read_runs,
    resend_outcomes,
    submit_missing,
    unwalked,
)

PROCESS_SCAN = "process-scan"


LEDGER_KEY = "reconcile-ledger"


def _window(
    since: datetime | None, until: datetime | None, settings: Settings
) -> tuple[datetime, datetime]:
    now = datetime.now(UTC)
    end = until or now - timedelta(seconds=settings.reconcile_settle_s)
    start = since or end - timedelta(seconds=settings.reconcile_lookback_s)
    if start >= end:
        raise ValueError(
            f"an empty window: since {start.isoformat()} is not before {end.isoformat()}"
        )
    return start, end


@flow(name="reconcile", flow_run_name="reconcile-{dry_run}", persist_result=False)
def reconcile(
    since: datetime | None = None, until: datetime | None = None, dry_run: bool = False
) -> dict[str, Any]:
    """One pass over the window; returns the ledger (also a table artifact and a JSON report)."""
    log = get_run_logger()
    settings = Settings()
    started = datetime.now(UTC)
    start, end = _window(since, until, settings)
    budget = settings.reconcile_max_actions
    runs = read_runs(PROCESS_SCAN, start)
    by_key = {r.idempotency_key for r in runs if r.idempotency_key}
    gaps: list[Gap] = []
    uploads = 0
    if settings.uploads_uri:
        scans = list_uploads(settings.uploads_uri, start, end)
        uploads = len(scans)
        missing = [s for s in scans if s.upload.idempotency_key not in by_key]
        gaps += submit_missing(unwalked(missing), settings.deployment, dry_run, budget)
        budget -= sum(g.healed for g in gaps)
    else:
        log.info("no uploads_uri set: runs and outcomes only")
    outcome_gaps = check_outcomes(
        unwalked(runs),
        settings.results_root,
        started,
        settings.reconcile_settle_s,
        settings.pending_after_s,
    )
    unacknowledged = [g for g in outcome_gaps if g.kind == "unacknowledged"]
    if not dry_run and unacknowledged and budget > 0:
        resend_outcomes(unwalked(unacknowledged), unwalked(flow_run_ids(runs)), budget)
    gaps += outcome_gaps
    ledger = _ledger(started, start, end, dry_run, uploads, runs, gaps)
    _publish(ledger, settings)
    log.info(
        "reconciled %s .. %s: %d uploads, %d runs, %d gaps found, %d healed",
        ledger["window"]["since"],
        ledger["window"]["until"],
        uploads,
        len(runs),
        ledger["gaps_found"],
        ledger["gaps_healed"],
    )
    return ledger


def _ledger(
    started: datetime,
    start: datetime,
    end: datetime,
    dry_run: bool,
    uploads: int,
    runs: list[Any],
    gaps: list[Gap],
) -> dict[str, Any]:
    states = Counter(r.state.name if r.state else "none" for r in runs)
    kinds = Counter(g.kind for g in gaps)
    healed = Counter(g.kind for g in gaps if g.healed)
    return {
        "started_at": started.isoformat(),
        "seconds": round((datetime.now(UTC) - started).total_seconds(), 3),
        "window": {"since": start.isoformat(), "until": end.isoformat()},
        "dry_run": dry_run,
        "uploads": uploads,
        "runs": len(runs),
        "final_runs": sum(1 for r in runs if r.state and r.state.type.value in FINAL),
        "runs_by_state": dict(sorted(states.items())),
        "gaps_found": len(gaps),
        "gaps_healed": sum(healed.values()),
        "gaps_by_kind": {k: {"found": n, "healed": healed[k]} for k, n in sorted(kinds.items())},
        "gaps": [vars(g) for g in gaps],
    }


def _publish(ledger: dict[str, Any], settings: Settings) -> None:
    """The ledger as a table artifact (the UI) and a JSON report (the results store)."""
    rows = [{"what": "uploads in the window", "count": ledger["uploads"], "healed": ""}]
    rows += [
        {"what": f"runs {s}", "count": n, "healed": ""} for s, n in ledger["runs_by_state"].items()
    ]
    rows += [
        {"what": f"gap: {k}", "count": v["found"], "healed": v["healed"]}
        for k, v in ledger["gaps_by_kind"].items()
    ]
    create_table_artifact(
        key=LEDGER_KEY,
        table=rows,
        description=f"reconcile {ledger['window']['since']} .. {ledger['window']['until']}"
        f"{' (dry run)' if ledger['dry_run'] else ''}: {ledger['gaps_found']} gaps, "
        f"{ledger['gaps_healed']} healed",
    )
    stamp = ledger["started_at"].replace(":", "").replace("+0000", "Z")
    uri = join(settings.results_root, "_reconcile", f"{stamp}.json")
    store_for(uri).put_bytes(uri, json.dumps(ledger, indent=1).encode(), "application/json")
    ledger["report"] = uri
