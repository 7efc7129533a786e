"""One builder of a completed scan's manifest, for tests that need one without running the
flow (the manifest's own tests, the patient's history in tracking)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from cv.quality.analysis import ScanQuality
from scanflow.contracts.manifest import Artifacts, Manifest
from scanflow.contracts.stages import ModelInfo, VideoSummary

# a 6 s 320x240 scan at 15 fps: 90 frames, 80 usable
QUALITY = ScanQuality(True, 90, 80, 80 / 90, 6.0, 120, 60, 128, 0, 0, 0, 0, 1.0, 0.5)


def sample_manifest(
    scan_id: str,
    patient_id: str,
    completed_at: datetime,
    *,
    scan_uri: str | None = None,
    **fields: Any,
) -> Manifest:
    """A completed scan's manifest with plausible figures, its artifacts under ``scan_uri``
    (default ``file:///results/PATIENT/SCAN``); ``fields`` replace any of the manifest's."""
    uri = scan_uri or f"file:///results/{patient_id}/{scan_id}"
    values: dict[str, Any] = {
        "scan_id": scan_id,
        "patient_id": patient_id,
        "flow_run_id": None,
        "code_version": "test",
        "started_at": completed_at - timedelta(seconds=30),
        "completed_at": completed_at,
        "source_uri": f"file:///uploads/{scan_id}.mp4",
        "video": VideoSummary(
            codec="h264",
            width=320,
            height=240,
            fps=15.0,
            declared_duration_s=6.0,
            duration_s=6.0,
            size_bytes=1,
        ),
        "quality": QUALITY,
        "model": ModelInfo(name="m", version="1", sha256="0" * 64, device="cpu"),
        "timings_s": {},
        "artifacts": Artifacts(
            summary_video=f"{uri}/summary.mp4",
            summary_video_frames=1,
            summary_video_seconds=0.1,
            contact_sheet=f"{uri}/contact_sheet.jpg",
            keyframes=[],
            embeddings=f"{uri}/embeddings.npy",
            frame_quality=f"{uri}/frame_quality.json",
        ),
    }
    return Manifest(**(values | fields))
