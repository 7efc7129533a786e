"""The reconciler's tasks: what the bucket, the server and the results store say, and the
gaps between them healed (flows/reconcile.py composes them).

    list_uploads        the upload bucket, paginated, the window's scans
    read_runs           process-scan's runs since the window's start, by idempotency key
    submit_missing      an upload without a run gets one, with the trigger's own key
    check_outcomes      a final run without a receipt of its event; a completed run without
                        its manifest; a run Scheduled or Pending past the limit
    resend_outcomes     each unacknowledged event sent again, same event_id

Every write is idempotent (the run's key, the event's id), so two passes at once, or a pass
racing the trigger, change nothing twice.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, cast

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import opaque

from scanflow.contracts.events import build_event, event_id_for, outcome_of
from scanflow.contracts.manifest import manifest_uri
from scanflow.contracts.uploads import ScanUpload, Upload, scan_of, version_of
from scanflow.notify.receipts import has_receipt
from scanflow.notify.senders import RetryPolicy, manifest_for, resolve_targets, run_url
from scanflow.notify.senders import send_platform as _send_platform
from scanflow.settings import Settings
from scanflow.storage import S3Store, join, store_for

FINAL = frozenset({"COMPLETED", "FAILED", "CRASHED", "CANCELLED"})
WAITING = frozenset({"SCHEDULED", "PENDING"})
PAGE = 200  # the API's largest page of flow runs
CHECKERS = 8  # receipts and manifests looked up at once
T = TypeVar("T")
RESEND = RetryPolicy(attempts=3, base_s=0.5, cap_s=4.0, deadline_s=15.0)


@dataclass
class Gap:
    """One thing that does not add up, and what the pass did about it."""

    kind: str  # upload_without_run, unacknowledged, manifest_missing, stuck
    scan_id: str | None
    flow_run_id: str | None
    detail: str
    healed: bool = False


@dataclass
class Findings:
    counts: dict[str, int] = field(default_factory=dict)  # runs per state name
    gaps: list[Gap] = field(default_factory=list)


@task(name="list-uploads", retries=2, retry_delay_seconds=[5, 30], cache_policy=NO_CACHE)
def list_uploads(uploads_uri: str, since: datetime, until: datetime) -> list[ScanUpload]:
    """The scans uploaded in [since, until) under ``uploads_uri`` (s3://bucket[/prefix])."""
    found: list[ScanUpload] = []
    listed = 0
    for entry in S3Store().list_objects(uploads_uri):
        listed += 1
        modified = entry["LastModified"]
        if not since <= modified < until:
            continue
        bucket = S3Store.split(uploads_uri)[0]
        upload = Upload(bucket, entry["Key"], version_of(entry), modified, int(entry["Size"]))
        scan = scan_of(upload)
        if scan is not None:
            found.append(scan)
    get_run_logger().info(
        "uploads: %d scans in the window among %d objects listed", len(found), listed
    )
    return found


@task(name="read-runs", retries=2, retry_delay_seconds=[5, 30], cache_policy=NO_CACHE)
def read_runs(flow_name: str, since: datetime) -> list[Any]:
    """Every run of ``flow_name`` expected to start since ``since``, and every one still
    Scheduled or Pending whenever it was expected (a stuck run is stuck however old)."""
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    waiting = FlowRunFilter(
        state=FlowRunFilterState(
            type=FlowRunFilterStateType(any_=[StateType.SCHEDULED, StateType.PENDING])
        )
    )
    runs = {r.id: r for r in read_window(flow_name, since)}
    for run in _all_runs(flow_name, waiting):
        runs.setdefault(run.id, run)
    return list(runs.values())


def read_window(flow_name: str, since: datetime) -> list[Any]:
    """Every run of ``flow_name`` expected to start since ``since``."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterExpectedStartTime

    return _all_runs(
        flow_name,
        FlowRunFilter(expected_start_time=FlowRunFilterExpectedStartTime(after_=since)),
    )


def _all_runs(flow_name: str, flow_run_filter: Any) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    runs: list[Any] = []
    with get_client(sync_client=True) as client:
        while True:
            page = client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
                flow_run_filter=flow_run_filter,
                sort=FlowRunSort.ID_DESC,
                limit=PAGE,
                offset=len(runs),
            )
            runs += page
            if len(page) < PAGE:
                return runs


@task(name="submit-missing", cache_policy=NO_CACHE)
def submit_missing(
    scans: list[ScanUpload], deployment: str, dry_run: bool, budget: int
) -> list[Gap]:
    """A run for each upload that has none, keyed as the trigger keys it (a race with the
    trigger finds the same run); at most ``budget`` of them."""
    from prefect.client.orchestration import get_client

    gaps = [Gap("upload_without_run", s.scan_id, None, s.upload.uri) for s in scans]
    if dry_run or not scans:
        return gaps
    started = datetime.now(UTC)
    with get_client(sync_client=True) as client:
        deployment_id = client.read_deployment_by_name(deployment).id
        for scan, gap in zip(scans[:budget], gaps, strict=False):
            run = client.create_flow_run_from_deployment(
                deployment_id,
                parameters=scan.parameters(),
                name=scan.scan_id,
                idempotency_key=scan.upload.idempotency_key,
                tags=["scanflow", "reconciler"],
            )
            gap.flow_run_id = str(run.id)
            created = run.created is None or run.created >= started - timedelta(seconds=1)
            gap.healed = True
            gap.detail += " -> run created" if created else " -> the trigger's run, found"
    return gaps


def _outcome_gaps(run: Any, results_root: str, settle: datetime) -> list[Gap]:
    state = run.state
    params = run.parameters or {}
    patient, scan = params.get("patient_id"), params.get("scan_id")
    if state is None or not patient or not scan:
        return []
    kind = state.type.value
    if kind in WAITING:
        return []  # judged by the caller (stuck)
    if kind not in FINAL or (run.end_time and run.end_time > settle) or state.timestamp > settle:
        return []  # still running, or too recent: the hook and the automation are on it
    gaps: list[Gap] = []
    event_id = event_id_for(run.id, outcome_of(kind))
    if not has_receipt(results_root, str(patient), str(scan), event_id):
        gaps.append(Gap("unacknowledged", str(scan), str(run.id), f"{state.name}: {event_id}"))
    if kind == "COMPLETED":
        uri = manifest_uri(join(results_root, str(patient), str(scan)))
        if not store_for(uri).exists(uri):
            gaps.append(Gap("manifest_missing", str(scan), str(run.id), uri))
    return gaps


def _waiting_since(run: Any, now: datetime) -> datetime:
    """Since when a Scheduled run should have started, or a Pending one has waited; ``now``
    for a run that is neither."""
    state = run.state
    if state is None or state.type.value not in WAITING:
        return now
    since: datetime = state.timestamp
    if state.type.value == "SCHEDULED" and run.expected_start_time:
        since = run.expected_start_time
    return since


def _stuck(run: Any) -> Gap:
    since = _waiting_since(run, datetime.now(UTC)).isoformat(timespec="seconds")
    scan = (run.parameters or {}).get("scan_id")
    return Gap("stuck", scan, str(run.id), f"{run.state.name} since {since}")


@task(name="check-outcomes", retries=2, retry_delay_seconds=[5, 30], cache_policy=NO_CACHE)
def check_outcomes(
    runs: list[Any], results_root: str, now: datetime, settle_s: float, pending_after_s: float
) -> list[Gap]:
    """Final runs without a receipt or (completed) without a manifest, and runs waiting past
    ``pending_after_s``; runs that ended within ``settle_s`` are left to the hook and the
    automation."""
    settle = now - timedelta(seconds=settle_s)
    late = now - timedelta(seconds=pending_after_s)
    gaps = [_stuck(r) for r in runs if _waiting_since(r, now) < late]
    with ThreadPoolExecutor(CHECKERS) as pool:
        for found in pool.map(lambda r: _outcome_gaps(r, results_root, settle), runs):
            gaps += found
    return gaps


@task(name="resend-outcomes", cache_policy=NO_CACHE)
def resend_outcomes(gaps: list[Gap], runs: dict[str, Any], budget: int) -> None:
    """Send each unacknowledged outcome again, same event_id (the receipt is written when
    the platform answers 2xx); at most ``budget``."""
    log = get_run_logger()
    settings = Settings()
    targets = resolve_targets(settings)
    if not targets.platform_url:
        log.warning("no platform webhook configured: %d outcomes left unsent", len(gaps))
        return
    for gap in gaps[:budget]:
        run = runs[gap.flow_run_id or ""]
        event = build_event(
            run,
            run.state,
            source="reconciler",
            run_url=run_url(run.id),
            manifest_uri=manifest_for(settings, run.parameters or {}),
        )
        try:
            _send_platform(event, targets, RESEND, log)
        except Exception as exc:  # noqa: BLE001 - the next pass tries again
            gap.detail += f" -> not delivered ({exc})"
        else:
            gap.healed = True
            gap.detail += " -> delivered"


def unwalked(value: T) -> T:
    """A task argument Prefect does not walk into: flow runs hold states it would take for
    upstream dependencies, and 10,000 of them take seconds to walk."""
    return cast(T, opaque(value))


def flow_run_ids(runs: list[Any]) -> dict[str, Any]:
    return {str(r.id): r for r in runs}
