"""scanflow.contracts.manifest: where a scan's manifest lives, how it is assembled from the
stages' results, that it reads back whole from a real file store, and that the published JSON
Schema is the model's. (Writing it from the flow, with its artifact: tests/tasks/
test_manifest.py.)"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NamedTuple

import pytest
from pydantic import ValidationError

from cv.errors import ProcessingError, Reason
from cv.quality.analysis import ScanQuality
from scanflow.contracts.manifest import (
    MANIFEST_NAME,
    SCHEMA_VERSION,
    Manifest,
    manifest_uri,
    read_manifest,
)
from scanflow.contracts.stages import (
    FramesResult,
    InferenceResult,
    KeptFrame,
    Keyframe,
    ModelInfo,
    SummaryResult,
    TrackingResult,
    Trend,
    VideoSummary,
    ViewCoverage,
    ViewFrame,
)
from scanflow.settings import REPO_ROOT
from scanflow.storage import FileStore

SCHEMAS = REPO_ROOT / "schemas"
STARTED = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)


def test_manifest_schema_file_matches_the_model() -> None:
    on_disk = json.loads((SCHEMAS / "manifest.schema.json").read_text())
    assert on_disk == Manifest.model_json_schema(), (
        "regenerate with: python -m scanflow.contracts.manifest > schemas/manifest.schema.json"
    )


@pytest.mark.parametrize(
    "scan_uri", ["s3://results/pt-1/scan-1", "s3://results/pt-1/scan-1/", "file:///r/pt-1/scan-1"]
)
def test_the_manifest_lies_in_the_scans_folder(scan_uri: str) -> None:
    assert manifest_uri(scan_uri) == scan_uri.rstrip("/") + "/" + MANIFEST_NAME
    assert manifest_uri(scan_uri).endswith("/scan-1/manifest.json")


class Stages(NamedTuple):
    frames: FramesResult
    inference: InferenceResult
    summary: SummaryResult
    tracking: TrackingResult


def _stages(scan: str) -> Stages:
    quality = ScanQuality(
        True, 90, 71, 71 / 90, 6.0, 128.1, 65.1, 148.4, 0.111, 0.044, 0.044, 0.011, 1.0, 0.73
    )
    return Stages(
        frames=FramesResult(
            video=VideoSummary(
                codec="h264",
                width=320,
                height=240,
                fps=15.0,
                declared_duration_s=6.0,
                duration_s=6.0,
                size_bytes=197113,
            ),
            quality=quality,
            kept=[
                KeptFrame(
                    uri=f"{scan}/f0.jpg",
                    local_path="/w/f0.jpg",
                    index=0,
                    time_s=0.0,
                    sharpness=120.0,
                    usable=True,
                )
            ],
            frame_quality_uri=f"{scan}/frame_quality.json",
        ),
        inference=InferenceResult(
            embeddings_uri=f"{scan}/embeddings.npy",
            views_uri=f"{scan}/views.json",
            model=ModelInfo(name="view-classifier", version="1.0.0", sha256="3" * 64, device="cpu"),
            views=ViewCoverage(
                frames={"front": 3},
                uncertain=1,
                usable=4,
                missing=["left"],
                min_confidence=0.5,
                min_frames=1,
            ),
            frames=12,
            frames_per_second=40.0,
        ),
        summary=SummaryResult(
            video_uri=f"{scan}/summary.mp4",
            video_frames=60,
            video_seconds=6.0,
            contact_sheet_uri=f"{scan}/contact_sheet.jpg",
            keyframes=[Keyframe(uri=f"{scan}/k0.jpg", kept_index=0, time_s=0.0, sharpness=120.0)],
        ),
        tracking=TrackingResult(
            view_frames=[
                ViewFrame(
                    view="front", uri=f"{scan}/f0.jpg", kept_index=0, time_s=0.0, sharpness=120.0
                )
            ],
            summary=None,
            trend=Trend(scans=[], json_uri=f"{scan}/trend.json", plot_uri=f"{scan}/trend.png"),
            uri=None,
        ),
    )


def _manifest(scan: str) -> Manifest:
    return Manifest.from_stages(
        scan_id="scan-1",
        patient_id="pt-1",
        flow_run_id="0f0c0000-0000-0000-0000-000000000000",
        code_version="0.1.0+gtest",
        started_at=STARTED,
        scanned_at=STARTED,
        previous_versions=[],
        source_uri="s3://uploads/patients/pt-1/scans/scan-1.mp4",
        timings={"extract_frames": 1.5, "run_inference": 0.25},
        **_stages(scan)._asdict(),
    )


def test_from_stages_puts_each_stages_result_in_its_place() -> None:
    before = datetime.now(UTC)
    m = _manifest("s3://r/pt-1/scan-1")
    frames, inference, _, _ = _stages("s3://r/pt-1/scan-1")
    assert m.schema_version == SCHEMA_VERSION and m.status == "completed"
    assert before <= m.completed_at <= datetime.now(UTC) and m.started_at == STARTED
    assert m.quality == frames.quality and m.video == frames.video
    assert m.model == inference.model and m.views == inference.views
    assert m.artifacts.model_dump() == {
        "summary_video": "s3://r/pt-1/scan-1/summary.mp4",
        "summary_video_frames": 60,
        "summary_video_seconds": 6.0,
        "contact_sheet": "s3://r/pt-1/scan-1/contact_sheet.jpg",
        "keyframes": [
            {"uri": "s3://r/pt-1/scan-1/k0.jpg", "kept_index": 0, "time_s": 0.0, "sharpness": 120.0}
        ],
        "embeddings": "s3://r/pt-1/scan-1/embeddings.npy",
        "views": "s3://r/pt-1/scan-1/views.json",
        "frame_quality": "s3://r/pt-1/scan-1/frame_quality.json",
        "tracking": None,
        "report": None,  # publish_manifest writes report.html and names it
    }
    assert [v.view for v in m.view_frames] == ["front"]
    assert m.tracking is None and m.trend is not None and m.trend.json_uri.endswith("trend.json")
    assert m.timings_s == {"extract_frames": 1.5, "run_inference": 0.25}


def test_a_manifest_reads_back_whole_from_a_file_store(tmp_path: Path) -> None:
    scan = (tmp_path / "results" / "pt-1" / "scan-1").as_uri()
    written = _manifest(scan)
    uri = FileStore().put_bytes(manifest_uri(scan), written.model_dump_json().encode())
    read = read_manifest(uri)
    assert read == written
    assert isinstance(read.quality, ScanQuality) and read.quality.usable_frames == 71
    assert (
        json.loads((tmp_path / "results/pt-1/scan-1/manifest.json").read_text())["schema_version"]
        == "1.2"
    )


def test_a_manifest_of_schema_1_0_still_reads(tmp_path: Path) -> None:
    """Before 1.1 there were no views, artifacts.views nor model package fields."""
    scan = (tmp_path / "pt-1" / "scan-0").as_uri()
    old = json.loads(_manifest(scan).model_dump_json())
    old["schema_version"] = "1.0"
    for key in ("views", "view_frames", "tracking", "trend"):
        del old[key]
    del old["artifacts"]["views"]
    old["model"] = {k: old["model"][k] for k in ("name", "version", "sha256", "device")}
    FileStore().put_bytes(manifest_uri(scan), json.dumps(old).encode())
    read = read_manifest(manifest_uri(scan))
    assert read.schema_version == "1.0" and read.views is None and read.view_frames == []
    assert read.model.labels == [] and read.artifacts.views is None


def test_reading_a_missing_manifest_is_not_found(tmp_path: Path) -> None:
    uri = manifest_uri((tmp_path / "pt-1" / "never-completed").as_uri())
    with pytest.raises(ProcessingError) as err:
        read_manifest(uri)
    assert err.value.reason is Reason.NOT_FOUND and uri in err.value.message


def test_a_manifest_missing_a_field_is_refused_naming_it(tmp_path: Path) -> None:
    scan = (tmp_path / "pt-1" / "scan-1").as_uri()
    broken = json.loads(_manifest(scan).model_dump_json())
    del broken["code_version"]
    broken["started_at"] = (STARTED - timedelta(days=1)).isoformat()
    FileStore().put_bytes(manifest_uri(scan), json.dumps(broken).encode())
    with pytest.raises(ValidationError, match="code_version"):
        read_manifest(manifest_uri(scan))
