"""compute_tracking: compare this scan with the patient's previous completed scan."""

from __future__ import annotations

import json
import math

from prefect import get_run_logger, task
from pydantic import BaseModel

from cv.errors import ScanError
from cv.images import decode_jpeg
from cv.tracking import compare_scans
from tasks.inference import InferenceResult, load_embeddings
from tasks.manifest import MANIFEST_NAME, Manifest, PairMetrics, TrackingSummary, read_manifest
from tasks.storage import join, store_for
from tasks.summary import SummaryResult


class TrackingResult(BaseModel):
    summary: TrackingSummary
    uri: str


def completed_scans(results_root: str, patient_id: str) -> list[Manifest]:
    """The patient's completed scans in the results store, oldest first.

    A scan counts once its manifest exists (it is written last), so a scan still being
    processed, or one that failed half-way, is never taken as history.
    """
    patient_uri = join(results_root, patient_id)
    store = store_for(patient_uri)
    out = []
    for scan_dir in store.list_dirs(patient_uri):
        uri = join(scan_dir, MANIFEST_NAME)
        if store.exists(uri):
            out.append(read_manifest(uri))
    return sorted(out, key=lambda m: m.completed_at)


def _previous(
    results_root: str, patient_id: str, scan_id: str, previous_scan_ids: list[str] | None
) -> Manifest | None:
    if previous_scan_ids:
        uri = join(results_root, patient_id, previous_scan_ids[-1], MANIFEST_NAME)
        return read_manifest(uri)
    history = [m for m in completed_scans(results_root, patient_id) if m.scan_id != scan_id]
    return history[-1] if history else None


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


@task(name="compute-tracking")
def compute_tracking(
    patient_id: str,
    scan_id: str,
    results_root: str,
    scan_uri: str,
    previous_scan_ids: list[str] | None,
    summary: SummaryResult,
    inference: InferenceResult,
) -> TrackingResult | None:
    """Pair keyframes with the previous scan's, register them, and store tracking.json."""
    logger = get_run_logger()
    previous = _previous(results_root, patient_id, scan_id, previous_scan_ids)
    if previous is None:
        logger.info("no previous scan for this patient: nothing to track against")
        return None
    cur_emb = load_embeddings(inference.embeddings_uri)[[k.kept_index for k in summary.keyframes]]
    try:
        prev_all = load_embeddings(previous.artifacts.embeddings)
    except ScanError as exc:
        logger.warning("previous scan %s has no readable embeddings (%s)", previous.scan_id, exc)
        return None
    prev_emb = prev_all[[k.kept_index for k in previous.artifacts.keyframes]]
    cur_img = [decode_jpeg(store_for(k.uri).get_bytes(k.uri)) for k in summary.keyframes]
    prev_img = [
        decode_jpeg(store_for(k.uri).get_bytes(k.uri)) for k in previous.artifacts.keyframes
    ]
    comparison = compare_scans(cur_img, cur_emb, prev_img, prev_emb)
    result = TrackingSummary(
        previous_scan_id=previous.scan_id,
        mean_similarity=comparison.mean_similarity,
        trusted_pairs=comparison.trusted_pairs,
        mean_change=comparison.mean_change,
        pairs=[
            PairMetrics(
                current_keyframe=p.current,
                previous_keyframe=p.previous,
                similarity=p.similarity,
                inliers=r.inliers,
                inlier_ratio=r.inlier_ratio,
                reprojection_px=_finite(r.reprojection_px),
                trustworthy=r.trustworthy,
                change_score=r.change_score,
                reason=r.reason,
            )
            for p, r in comparison.pairs
        ],
    )
    uri = join(scan_uri, "tracking.json")
    store_for(uri).put_bytes(
        uri, json.dumps(result.model_dump(), indent=2).encode(), "application/json"
    )
    logger.info(
        "tracked against %s: similarity %.2f, %d trustworthy pairs",
        previous.scan_id,
        comparison.mean_similarity,
        comparison.trusted_pairs,
    )
    return TrackingResult(summary=result, uri=uri)
