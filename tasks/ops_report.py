"""The daily operations report's tasks (flows/ops_report.py composes them): what each
process-scan run of the window went through, from the upload to the platform's receipt.

    collect_timelines   per run: uploaded, created, started, ended, acknowledged; its
                        outcome (the state's name), cause and reason
    summarize           counts by outcome and cause, latencies of each leg (p50, p95, max),
                        the slowest scans, rejection reasons and their shares

No patient id leaves here: the report names scans by their (pseudonymous) scan id only.
"""

from __future__ import annotations

import base64
import json
import math
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from prefect import task
from prefect.cache_policies import NO_CACHE

from cv.charts import render_bars
from cv.images import encode_png
from scanflow.contracts.events import classify, event_id_for, outcome_of
from scanflow.notify.receipts import receipt_uri
from scanflow.storage import FileStore, S3Store, store_for

FINAL = frozenset({"COMPLETED", "FAILED", "CRASHED", "CANCELLED"})
LEGS = (
    ("upload → run created", "uploaded", "created"),
    ("created → started", "created", "started"),
    ("started → ended", "started", "ended"),
    ("ended → platform acknowledged", "ended", "acknowledged"),
    ("upload → platform acknowledged", "uploaded", "acknowledged"),
)


@dataclass
class Timeline:
    scan_id: str
    outcome: str  # the state's name: Completed, Rejected, Failed, Crashed, Running, ...
    cause: str | None
    reason: str | None
    uploaded: datetime | None
    created: datetime | None
    started: datetime | None
    ended: datetime | None
    acknowledged: datetime | None


def _uploaded_at(uri: str) -> datetime | None:
    """When the upload was written (S3's LastModified, a file's mtime); None if gone."""
    try:
        if urlparse(uri).scheme == "s3":
            bucket, key = S3Store.split(uri)
            head = S3Store()._call(uri, "head_object", Bucket=bucket, Key=key)
            return head["LastModified"]  # type: ignore[no-any-return]
        path = FileStore.path(uri)
        return datetime.fromtimestamp(Path(path).stat().st_mtime).astimezone()
    except Exception:  # noqa: BLE001 - a removed upload: that leg is unknown
        return None


def _acknowledged_at(results_root: str, run: Any) -> datetime | None:
    state, params = run.state, run.parameters or {}
    if state is None or state.type.value not in FINAL:
        return None
    uri = receipt_uri(
        results_root,
        str(params.get("patient_id")),
        str(params.get("scan_id")),
        event_id_for(run.id, outcome_of(state.type.value)),
    )
    try:
        body = json.loads(store_for(uri).get_bytes(uri))
    except Exception:  # noqa: BLE001 - not acknowledged (yet)
        return None
    return datetime.fromisoformat(body["acknowledged_at"])


def timeline(run: Any, results_root: str) -> Timeline:
    state, params = run.state, run.parameters or {}
    cause = reason = None
    if state is not None and state.type.value in FINAL:
        _, found = classify(state.type.value, state.name, state.message)
        reason = found.value if found else None
        cause = found.cause.value if found else None
    return Timeline(
        scan_id=str(params.get("scan_id")),
        outcome=state.name if state else "unknown",
        cause=cause,
        reason=reason,
        uploaded=_uploaded_at(str(params.get("video_uri", ""))),
        created=run.created,
        started=run.start_time,
        ended=run.end_time if state is not None and state.type.value in FINAL else None,
        acknowledged=_acknowledged_at(results_root, run),
    )


@task(name="collect-timelines", retries=2, retry_delay_seconds=[5, 30], cache_policy=NO_CACHE)
def collect_timelines(runs: list[Any], results_root: str) -> list[Timeline]:
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda r: timeline(r, results_root), runs))


def chart_markdown(values: dict[str, float], title: str, unit: str = "") -> str:
    """A bar chart as a markdown image with a data: URI (the Prefect UI shows it inline)."""
    png = encode_png(render_bars(values, title, unit))
    return f"![{title}](data:image/png;base64,{base64.b64encode(png).decode()})"


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), nearest rank."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def summarize(timelines: list[Timeline], slowest: int = 5) -> dict[str, Any]:
    """The report's figures (JSON-ready)."""
    outcomes = Counter(t.outcome for t in timelines)
    causes = Counter(t.cause for t in timelines if t.cause)
    legs: dict[str, dict[str, float | int]] = {}
    for label, a, b in LEGS:
        values = [
            (getattr(t, b) - getattr(t, a)).total_seconds()
            for t in timelines
            if getattr(t, a) is not None and getattr(t, b) is not None
        ]
        if values:
            legs[label] = {
                "n": len(values),
                "p50_s": round(percentile(values, 50), 2),
                "p95_s": round(percentile(values, 95), 2),
                "max_s": round(max(values), 2),
            }
    done = [t for t in timelines if t.created and t.ended]
    done.sort(key=lambda t: (t.ended - t.created).total_seconds(), reverse=True)  # type: ignore[operator]
    rejected = [t for t in timelines if t.cause == "patient"]
    reasons = Counter(t.reason for t in rejected)
    return {
        "runs": len(timelines),
        "by_outcome": dict(outcomes.most_common()),
        "by_cause": dict(causes.most_common()),
        "latency": legs,
        "slowest": [
            {
                "scan_id": t.scan_id,
                "outcome": t.outcome,
                "seconds": round((t.ended - t.created).total_seconds(), 1),  # type: ignore[operator]
            }
            for t in done[:slowest]
        ],
        "rejections": [
            {"reason": r, "count": n, "share": round(n / len(rejected), 3)}
            for r, n in reasons.most_common()
        ],
        "unacknowledged_final": sum(1 for t in timelines if t.ended and not t.acknowledged),
    }
