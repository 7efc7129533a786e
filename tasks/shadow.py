"""Shadow runs: a candidate model over scans production already processed, from their
stored kept frames (no video decoded again), its results beside production's, never over
them (flows/shadow_model.py composes these). Tracking is what the candidate's views would
make it: a view whose best frame the candidate chooses differently is registered again with
the previous scan's, and its verdict (changed, compared, untrustworthy, missing) set beside
production's; change maps go to the shadow folder too.

    <scan>/views.json                          production's views (untouched)
    <scan>/shadow/<candidate sha256[:12]>/views.json   the candidate's, same format
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from cv.images import decode_jpeg
from cv.model.heads import classify_frames
from cv.tracking.registration import best_frame_per_view
from scanflow.contracts.manifest import MANIFEST_NAME, Manifest, manifest_uri, read_manifest
from scanflow.contracts.options import ModelRef
from scanflow.contracts.stages import MIN_VIEW_CONFIDENCE, ViewChange, ViewFrame
from scanflow.models.cache import classifier
from scanflow.storage import join, store_for
from tasks.inference import load_views
from tasks.tracking import compare_view, stored_frame

SHADOW = "shadow"
NOT_A_VIEW = frozenset({"other"})


def completed_scan_uris(results_root: str, last: int, since: datetime | None) -> list[str]:
    """The newest ``last`` completed scans (since ``since``), newest first."""
    store = store_for(results_root)
    found: list[tuple[datetime, str]] = []
    for patient in store.list_dirs(results_root):
        if patient.rstrip("/").rsplit("/", 1)[-1].startswith("_"):
            continue  # _reconcile, _reports, _shadow: not patients
        for scan in store.list_dirs(patient):
            uri = join(scan, MANIFEST_NAME)
            if store.exists(uri):
                manifest = read_manifest(uri)
                if since is None or manifest.completed_at >= since:
                    found.append((manifest.completed_at, scan))
    return [uri for _, uri in sorted(found, reverse=True)[:last]]


def shadow_folder(scan_uri: str, candidate_sha256: str) -> str:
    return join(scan_uri, SHADOW, candidate_sha256[:12])


def _frame_uri(scan_uri: str, frame_index: int) -> str:
    return join(scan_uri, "frames", f"{int(frame_index):06d}.jpg")


def _verdict(change: ViewChange) -> str:
    return "changed" if change.changed else change.status


def _candidate_view_frames(
    manifest: Manifest, scan_uri: str, rows: list[dict[str, Any]]
) -> dict[str, ViewFrame]:
    """The frame that shows each view best, by the candidate's views (tasks/tracking.py's
    rule, sharpness from frame_quality.json)."""
    quality = json.loads(store_for(scan_uri).get_bytes(manifest.artifacts.frame_quality))
    sharpness = {int(row[0]): float(row[2]) for row in quality["rows"]}
    views = [r["view"] if _seen(r) else None for r in rows]
    sharp = [sharpness.get(int(r["frame_index"]), 0.0) for r in rows]
    best = best_frame_per_view(views, sharp, [bool(r["usable"]) for r in rows])
    return {
        v: ViewFrame(
            view=v,
            uri=_frame_uri(scan_uri, rows[i]["frame_index"]),
            kept_index=i,
            time_s=float(rows[i]["time_s"]),
            sharpness=sharp[i],
        )
        for v, i in best.items()
    }


def shadow_tracking(
    scan_uri: str, rows: list[dict[str, Any]], out_uri: str
) -> tuple[str | None, list[dict[str, str]]]:
    """The previous scan production compared with, and the views whose tracking verdict
    the candidate's views change (production's verdict, the candidate's)."""
    manifest = read_manifest(manifest_uri(scan_uri))
    if manifest.tracking is None:
        return None, []  # a patient's first scan: nothing was compared
    previous_id = manifest.tracking.previous_scan_id
    patient_uri = scan_uri.rstrip("/").rsplit("/", 1)[0]
    previous = read_manifest(manifest_uri(join(patient_uri, previous_id)))
    production = {c.view: c for c in manifest.tracking.views}
    mine = {v.view: v for v in manifest.view_frames}
    candidate = _candidate_view_frames(manifest, scan_uri, rows)
    before = {v.view: v for v in previous.view_frames}
    changed = []
    for view in sorted(candidate.keys() | before.keys()):
        current = candidate.get(view)
        was_frame = mine[view].uri if view in mine else None
        if view in production and (current.uri if current else None) == was_frame:
            continue  # the same two frames: the same registration, the same verdict
        change = compare_view(view, current, before.get(view), stored_frame, out_uri)
        was = _verdict(production[view]) if view in production else "absent"
        if _verdict(change) != was:
            changed.append({"view": view, "production": was, "candidate": _verdict(change)})
    return previous_id, changed


def _seen(row: dict[str, Any]) -> bool:
    """A confident prediction of a real view (tracking takes unusable frames too)."""
    return row["confidence"] >= MIN_VIEW_CONFIDENCE and row["view"] not in NOT_A_VIEW


def _views_seen(rows: list[dict[str, Any]]) -> set[str]:
    return {r["view"] for r in rows if r["usable"] and _seen(r)}


@task(name="shadow-scan", retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE)
def shadow_scan(
    scan_uri: str, candidate: ModelRef, cache_dir: str, threads: int | None
) -> dict[str, Any]:
    """Classify a scan's kept frames with the candidate; compare with production's views."""
    started = time.perf_counter()
    labels, rows = load_views(join(scan_uri, "views.json"))
    frames = [
        decode_jpeg(store_for(u).get_bytes(u))
        for u in (_frame_uri(scan_uri, r["frame_index"]) for r in rows)
    ]
    model = classifier(candidate, cache_dir, "cpu")
    pred = classify_frames(model, frames, threads=threads)
    shadow_rows = [
        {**r, "view": model.labels[int(v)], "confidence": round(float(c), 4)}
        for r, v, c in zip(rows, pred.views, pred.confidence, strict=True)
    ]
    columns = ["kept_index", "frame_index", "time_s", "usable", "view", "confidence"]
    doc = {
        "model": candidate.model_dump(),
        "labels": list(model.labels),
        "columns": columns,
        "rows": [[r[c] for c in columns] for r in shadow_rows],
    }
    folder = shadow_folder(scan_uri, str(candidate.sha256))
    out = join(folder, "views.json")
    store_for(out).put_bytes(out, json.dumps(doc).encode(), "application/json")
    compared_with, tracking_changed = shadow_tracking(scan_uri, shadow_rows, folder)
    agree = sum(1 for a, b in zip(rows, shadow_rows, strict=True) if a["view"] == b["view"])
    before, after = _views_seen(rows), _views_seen(shadow_rows)
    return {
        "scan": scan_uri,
        "frames": len(rows),
        "agreement": round(agree / len(rows), 4) if rows else 1.0,
        "views_lost": sorted(before - after),
        "views_found": sorted(after - before),
        "tracking_compared_with": compared_with,
        "tracking_changed": tracking_changed,
        "seconds": round(time.perf_counter() - started, 3),
        "production_labels": labels,
    }
