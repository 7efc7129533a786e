"""Shadow runs: a candidate model over scans production already processed, from their
stored kept frames (no video decoded again), its results beside production's, never over
them (flows/shadow_model.py composes these).

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
from scanflow.contracts.manifest import MANIFEST_NAME, read_manifest
from scanflow.contracts.options import ModelRef
from scanflow.models.cache import classifier
from scanflow.storage import join, store_for
from tasks.inference import MIN_VIEW_CONFIDENCE, load_views

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


def _views_seen(rows: list[dict[str, Any]]) -> set[str]:
    return {
        r["view"]
        for r in rows
        if r["usable"] and r["confidence"] >= MIN_VIEW_CONFIDENCE and r["view"] not in NOT_A_VIEW
    }


@task(name="shadow-scan", retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE)
def shadow_scan(
    scan_uri: str, candidate: ModelRef, cache_dir: str, threads: int | None
) -> dict[str, Any]:
    """Classify a scan's kept frames with the candidate; compare with production's views."""
    started = time.perf_counter()
    labels, rows = load_views(join(scan_uri, "views.json"))
    frames = [
        decode_jpeg(store_for(u).get_bytes(u))
        for u in (join(scan_uri, "frames", f"{int(r['frame_index']):06d}.jpg") for r in rows)
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
    out = join(shadow_folder(scan_uri, str(candidate.sha256)), "views.json")
    store_for(out).put_bytes(out, json.dumps(doc).encode(), "application/json")
    agree = sum(1 for a, b in zip(rows, shadow_rows, strict=True) if a["view"] == b["view"])
    before, after = _views_seen(rows), _views_seen(shadow_rows)
    return {
        "scan": scan_uri,
        "frames": len(rows),
        "agreement": round(agree / len(rows), 4) if rows else 1.0,
        "views_lost": sorted(before - after),
        "views_found": sorted(after - before),
        "seconds": round(time.perf_counter() - started, 3),
        "production_labels": labels,
    }
