"""compute_tracking: this scan against the patient's previous one, view by view, and the
patient's trend across all their scans."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime

from prefect import get_run_logger, task

from cv.images import RGB, decode_jpeg, encode_jpeg, encode_png
from cv.synthetic import VIEWS
from cv.tracking.registration import best_frame_per_view, register, render_change_map
from cv.tracking.trend import render_trend
from scanflow.contracts.manifest import MANIFEST_NAME, Manifest, read_manifest
from scanflow.contracts.stages import (
    MIN_VIEW_CONFIDENCE,
    FramesResult,
    InferenceResult,
    TrackingResult,
    TrackingSummary,
    Trend,
    TrendPoint,
    ViewChange,
    ViewFrame,
)
from scanflow.storage import join, store_for
from tasks.frames import load_frame
from tasks.inference import load_views

_COMPARED_FIGURES = ("usable_fraction", "time_coverage", "median_sharpness")


def completed_scans(results_root: str, patient_id: str) -> list[Manifest]:
    """The patient's completed scans in the results store, oldest first (by when they were
    scanned: a scan processed again keeps its place).

    A scan counts once its manifest exists (it is written last), so a scan still being
    processed, or one that failed half-way, is never taken as history. Nothing else is
    shared between a patient's scans, so concurrent scans cannot corrupt the history.
    """
    patient_uri = join(results_root, patient_id)
    store = store_for(patient_uri)
    out = []
    for scan_dir in store.list_dirs(patient_uri):
        uri = join(scan_dir, MANIFEST_NAME)
        if store.exists(uri):
            out.append(read_manifest(uri))
    return sorted(out, key=lambda m: m.scanned)


def _view_frames(frames: FramesResult, inference: InferenceResult) -> list[ViewFrame]:
    _, rows = load_views(inference.views_uri)
    views = [
        r["view"] if r["confidence"] >= MIN_VIEW_CONFIDENCE and r["view"] != "other" else None
        for r in rows
    ]
    best = best_frame_per_view(
        views, [f.sharpness for f in frames.kept], [f.usable for f in frames.kept]
    )
    return [
        ViewFrame(
            view=v,
            uri=frames.kept[i].uri,
            kept_index=i,
            time_s=frames.kept[i].time_s,
            sharpness=frames.kept[i].sharpness,
        )
        for v, i in sorted(best.items())
    ]


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def frame_loader(frames: FramesResult) -> Callable[[ViewFrame], RGB]:
    """A view frame's pixels from this run's kept frames (their local copies)."""
    return lambda v: load_frame(frames.kept[v.kept_index])


def stored_frame(v: ViewFrame) -> RGB:
    """A view frame's pixels from the results store."""
    return decode_jpeg(store_for(v.uri).get_bytes(v.uri))


def compare_view(
    view: str,
    current: ViewFrame | None,
    previous: ViewFrame | None,
    current_pixels: Callable[[ViewFrame], RGB],
    scan_uri: str,
) -> ViewChange:
    """One view of this scan against the previous scan's; the change map goes under
    ``scan_uri``/tracking/."""
    if current is None or previous is None:
        status = "missing_now" if current is None else "missing_before"
        return ViewChange(
            view=view,
            status=status,
            current_frame=current.uri if current else None,
            previous_frame=previous.uri if previous else None,
        )
    cur = current_pixels(current)
    prev = stored_frame(previous)
    reg, change_map = register(cur, prev)
    map_uri = None
    if change_map is not None:
        map_uri = join(scan_uri, "tracking", f"{view}.jpg")
        store_for(map_uri).put_bytes(
            map_uri, encode_jpeg(render_change_map(cur, change_map)), "image/jpeg"
        )
    figures = {k: v for k, v in asdict(reg).items() if k in ViewChange.model_fields}
    return ViewChange(
        **{**figures, "reprojection_px": _finite(reg.reprojection_px)},
        view=view,
        status="compared" if reg.trustworthy else "untrustworthy",
        current_frame=current.uri,
        previous_frame=previous.uri,
        change_map=map_uri,
    )


def _trend(history: list[Manifest], now: TrendPoint, scan_uri: str) -> Trend:
    points = [
        TrendPoint(
            scan_id=m.scan_id,
            completed_at=m.completed_at,
            scanned_at=m.scanned,
            usable_fraction=m.quality.usable_fraction,
            time_coverage=m.quality.time_coverage,
            views=len(m.view_frames),
            changed_views=len(m.tracking.changed_views) if m.tracking else None,
        )
        for m in history
    ] + [now]
    plot = render_trend(
        {
            "usable frames (share)": [p.usable_fraction for p in points],
            "time coverage (share)": [p.time_coverage for p in points],
            f"views seen (of {len(VIEWS)})": [p.views / len(VIEWS) for p in points],
        },
        [(p.scanned_at or p.completed_at).strftime("%Y-%m-%d") for p in points],
    )
    json_uri, plot_uri = join(scan_uri, "trend.json"), join(scan_uri, "trend.png")
    store = store_for(scan_uri)
    store.put_bytes(
        json_uri,
        json.dumps({"scans": [p.model_dump(mode="json") for p in points]}, indent=2).encode(),
        "application/json",
    )
    store.put_bytes(plot_uri, encode_png(plot), "image/png")
    return Trend(scans=points, json_uri=json_uri, plot_uri=plot_uri)


@task(name="compute-tracking")
def compute_tracking(
    patient_id: str,
    scan_id: str,
    results_root: str,
    scan_uri: str,
    previous_scan_ids: list[str] | None,
    frames: FramesResult,
    inference: InferenceResult,
    scanned_at: datetime | None = None,
) -> TrackingResult:
    """Compare each view with the previous scan; write tracking.json, change maps, trend.

    The history is the patient's scans made before this one (``scanned_at``, now for a new
    upload): a scan processed again is compared with the scan before it, not a later one.
    """
    logger = get_run_logger()
    scanned_at = scanned_at or datetime.now(UTC)
    view_frames = _view_frames(frames, inference)
    history = [
        m
        for m in completed_scans(results_root, patient_id)
        if m.scan_id != scan_id and m.scanned < scanned_at
    ]
    # previous_scan_ids pins what this scan is compared with; the trend is every scan's
    compared = [m for m in history if not previous_scan_ids or m.scan_id in previous_scan_ids]
    previous = compared[-1] if compared else None
    summary = None
    uri = None
    if previous is None:
        logger.info("no previous scan for this patient: nothing to compare with")
    else:
        cur = {v.view: v for v in view_frames}
        prev = {v.view: v for v in previous.view_frames}
        changes = [
            compare_view(view, cur.get(view), prev.get(view), frame_loader(frames), scan_uri)
            for view in sorted(cur.keys() | prev.keys())
        ]
        summary = TrackingSummary(
            previous_scan_id=previous.scan_id,
            views=changes,
            changed_views=[c.view for c in changes if c.changed],
            quality_delta={
                k: getattr(frames.quality, k) - getattr(previous.quality, k)
                for k in _COMPARED_FIGURES
            },
            views_gained=sorted(cur.keys() - prev.keys()),
            views_lost=sorted(prev.keys() - cur.keys()),
        )
        uri = join(scan_uri, "tracking.json")
        store_for(uri).put_bytes(
            uri, summary.model_dump_json(indent=2).encode(), "application/json"
        )
        logger.info(
            "compared with %s: %d views compared, changed: %s",
            previous.scan_id,
            sum(c.status == "compared" for c in changes),
            ", ".join(summary.changed_views) or "none",
        )
    now = TrendPoint(
        scan_id=scan_id,
        completed_at=datetime.now(UTC),
        scanned_at=scanned_at,
        usable_fraction=frames.quality.usable_fraction,
        time_coverage=frames.quality.time_coverage,
        views=len(view_frames),
        changed_views=len(summary.changed_views) if summary else None,
    )
    trend = _trend(history, now, scan_uri)
    return TrackingResult(view_frames=view_frames, summary=summary, trend=trend, uri=uri)
