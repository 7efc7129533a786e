"""scanflow.contracts.stages: what each stage of process-scan returns survives the trip
through JSON (Prefect persists task results, the manifest embeds them), and the quality verdict
is cv's own ScanQuality with its reason written as the code string. Pure pydantic."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from pydantic import BaseModel, ValidationError

from cv.errors import Reason
from cv.quality.analysis import ScanQuality
from scanflow.contracts.stages import (
    DownloadedScan,
    FramesResult,
    InferenceResult,
    InferenceWhileDecoding,
    KeptFrame,
    Keyframe,
    ModelInfo,
    SummaryResult,
    TrackingResult,
    TrackingSummary,
    Trend,
    TrendPoint,
    VideoSummary,
    ViewChange,
    ViewCoverage,
    ViewFrame,
)

SCAN = "s3://results/pt-1/scan-2"
VIDEO = VideoSummary(
    codec="h264",
    width=1920,
    height=1080,
    fps=None,  # a variable frame rate declares none
    declared_duration_s=None,
    duration_s=61.5,
    size_bytes=123_456_789,
)
REJECTED = ScanQuality(
    usable=False,
    frames_decoded=75,
    usable_frames=3,
    usable_fraction=0.04,
    duration_s=5.0,
    median_sharpness=12.5,
    sharpness_threshold=20.0,
    mean_brightness=31.0,
    blurry_fraction=0.9,
    dark_fraction=0.5,
    glare_fraction=0.0,
    fast_motion_fraction=0.1,
    time_coverage=0.2,
    longest_gap_s=4.5,
    reason=Reason.TOO_FEW_USABLE_FRAMES,
    guidance="Hold the scope steady and closer.",
)
MODEL = ModelInfo(
    name="view-classifier",
    version="1.0.0",
    sha256="3" * 64,
    device="cuda:0",
    uri="s3://models/view-classifier/1.0.0/model.zip",
    source="pinned",
    labels=["front", "left", "right"],
    backbone_sha256="b" * 64,
)
VIEW_FRAME = ViewFrame(view="front", uri=f"{SCAN}/f3.jpg", kept_index=3, time_s=1.5, sharpness=99)

RESULTS: list[BaseModel] = [
    DownloadedScan(source_uri="s3://up/p/s.mp4", local_path="/w/s.mp4", size_bytes=10),
    FramesResult(
        video=VIDEO,
        quality=REJECTED,
        kept=[
            KeptFrame(
                uri=f"{SCAN}/f{i}.jpg",
                local_path=f"/w/f{i}.jpg",
                index=i * 7,
                time_s=i * 0.5,
                sharpness=10.0 + i,
                usable=i % 2 == 0,
            )
            for i in range(3)
        ],
        frame_quality_uri=f"{SCAN}/frame_quality.json",
        warnings=["1 corrupt packet skipped"],
        inference=InferenceWhileDecoding(
            path="/w/predictions.npz", model_sha256="3" * 64, seconds=1.25, threads=None
        ),
    ),
    InferenceResult(
        embeddings_uri=f"{SCAN}/embeddings.npy",
        views_uri=f"{SCAN}/views.json",
        model=MODEL,
        views=ViewCoverage(
            frames={"front": 4, "left": 0},
            uncertain=2,
            usable=6,
            missing=["left", "right"],
            min_confidence=0.6,
            min_frames=2,
        ),
        frames=12,
        frames_per_second=88.5,
        threads=2,
    ),
    SummaryResult(
        video_uri=f"{SCAN}/summary.mp4",
        video_frames=300,
        video_seconds=20.0,
        contact_sheet_uri=f"{SCAN}/contact_sheet.jpg",
        keyframes=[Keyframe(uri=f"{SCAN}/k0.jpg", kept_index=0, time_s=0.0, sharpness=50.5)],
    ),
    TrackingResult(
        view_frames=[VIEW_FRAME],
        summary=TrackingSummary(
            previous_scan_id="scan-1",
            views=[
                ViewChange(
                    view="front",
                    status="compared",
                    inliers=58,
                    change_score=0.0117,
                    changed=True,
                    displacement_px=2.38,
                    refined_by_ecc=False,
                ),
                ViewChange(view="left", status="untrustworthy", reason="only 6 inliers"),
            ],
            changed_views=["front"],
            quality_delta={"usable_fraction": -0.25},
            views_gained=[],
            views_lost=["right"],
        ),
        trend=Trend(
            scans=[
                TrendPoint(
                    scan_id="scan-2",
                    completed_at=datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC),
                    usable_fraction=0.04,
                    time_coverage=0.2,
                    views=1,
                    changed_views=None,
                )
            ],
            json_uri=f"{SCAN}/trend.json",
            plot_uri=f"{SCAN}/trend.png",
        ),
        uri=f"{SCAN}/tracking.json",
    ),
]


@pytest.mark.parametrize("result", RESULTS, ids=lambda r: type(r).__name__)
def test_each_stage_result_comes_back_equal_from_json(result: BaseModel) -> None:
    back = type(result).model_validate_json(result.model_dump_json())
    assert back == result
    assert back.model_dump() == result.model_dump()


def test_the_quality_verdict_is_cvs_scan_quality_and_its_reason_a_code() -> None:
    frames = RESULTS[1]
    assert isinstance(frames, FramesResult)
    raw = json.loads(frames.model_dump_json())
    assert raw["quality"]["reason"] == "too_few_usable_frames"
    assert raw["quality"]["guidance"] == "Hold the scope steady and closer."
    back = FramesResult.model_validate(raw)
    assert type(back.quality) is ScanQuality
    assert back.quality.reason is Reason.TOO_FEW_USABLE_FRAMES
    assert back.quality.usable_frames == 3 and back.quality.longest_gap_s == 4.5


def test_an_unknown_reason_code_is_refused() -> None:
    raw = json.loads(RESULTS[1].model_dump_json())
    raw["quality"]["reason"] = "bad_vibes"
    with pytest.raises(ValidationError, match="reason"):
        FramesResult.model_validate(raw)


def test_a_usable_scan_has_no_reason_and_no_inference_ahead() -> None:
    raw = json.loads(RESULTS[1].model_dump_json())
    raw["quality"].update(usable=True, reason=None, guidance=None)
    del raw["warnings"], raw["inference"]
    back = FramesResult.model_validate(raw)
    assert back.quality.reason is None and back.inference is None and back.warnings == []


def test_list_defaults_are_not_shared_between_results() -> None:
    one = ModelInfo(name="m", version="1", sha256="0" * 64, device="cpu")
    one.labels.append("front")
    assert ModelInfo(name="n", version="1", sha256="0" * 64, device="cpu").labels == []
    raw = json.loads(RESULTS[1].model_dump_json())
    del raw["warnings"]
    first = FramesResult.model_validate(raw)
    first.warnings.append("changed after the fact")
    assert FramesResult.model_validate(raw).warnings == []


def test_a_tracking_result_must_say_there_was_no_previous_scan() -> None:
    raw = json.loads(RESULTS[-1].model_dump_json())
    del raw["summary"]
    with pytest.raises(ValidationError, match="summary"):
        TrackingResult.model_validate(raw)
    raw["summary"] = None
    assert TrackingResult.model_validate(raw).summary is None
