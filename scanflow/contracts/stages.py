"""What each stage of process-scan returns: small typed results (URIs and figures, never
pixels) that the next stage and the manifest are built from. One definition of each: the
tasks return them, the manifest (scanflow.contracts.manifest) embeds them, and the quality
verdict is cv's own ``ScanQuality``."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from cv.quality.analysis import ScanQuality

MIN_VIEW_CONFIDENCE = 0.5  # a frame's view is named (and counted) at this confidence


class DownloadedScan(BaseModel):
    source_uri: str
    local_path: str
    size_bytes: int


class VideoSummary(BaseModel):
    codec: str
    width: int
    height: int
    fps: float | None
    declared_duration_s: float | None
    duration_s: float
    size_bytes: int


class KeptFrame(BaseModel):
    uri: str
    local_path: str
    index: int
    time_s: float
    sharpness: float
    usable: bool


class InferenceWhileDecoding(BaseModel):
    """The model's predictions for the kept frames, made while the video decoded."""

    path: str  # a local .npz in the run's work folder (scanflow.models.cache.save_predictions)
    model_sha256: str
    seconds: float  # time spent in the model
    threads: int | None


class FramesResult(BaseModel):
    video: VideoSummary
    quality: ScanQuality
    kept: list[KeptFrame]
    frame_quality_uri: str
    warnings: list[str] = []
    inference: InferenceWhileDecoding | None = None


class ModelInfo(BaseModel):
    """The model that produced a scan's results, as the manifest records it."""

    name: str
    version: str
    sha256: str = Field(description="sha256 of the model package archive.")
    device: str
    uri: str | None = Field(None, description="Where the package was read from.")
    source: str | None = Field(None, description="Why this model: pinned, production, default.")
    labels: list[str] = Field(default_factory=list, description="The view classes it predicts.")
    backbone_sha256: str | None = Field(None, description="sha256 of the backbone weights.")


class ViewCoverage(BaseModel):
    """Views seen among the usable kept frames (per-frame predictions: artifacts.views)."""

    frames: dict[str, int] = Field(description="Usable frames confidently showing each view.")
    uncertain: int = Field(description="Usable frames with no view above min_confidence.")
    usable: int
    missing: list[str] = Field(description="Standard views with fewer than min_frames frames.")
    min_confidence: float
    min_frames: int


class InferenceResult(BaseModel):
    embeddings_uri: str
    views_uri: str
    model: ModelInfo
    views: ViewCoverage
    frames: int
    frames_per_second: float
    threads: int | None = None


class Keyframe(BaseModel):
    uri: str
    kept_index: int
    time_s: float
    sharpness: float


class SummaryResult(BaseModel):
    video_uri: str
    video_frames: int
    video_seconds: float
    contact_sheet_uri: str
    keyframes: list[Keyframe]


class ViewFrame(BaseModel):
    """The frame that shows a view best in one scan (what the next scan is compared with)."""

    view: str
    uri: str
    kept_index: int
    time_s: float
    sharpness: float


class ViewChange(BaseModel):
    """One view compared with the previous scan."""

    view: str
    status: str = Field(description="compared | untrustworthy | missing_now | missing_before")
    current_frame: str | None = None
    previous_frame: str | None = None
    inliers: int | None = None
    inlier_ratio: float | None = None
    reprojection_px: float | None = None
    refined_by_ecc: bool | None = None
    overlap: float | None = None
    change_score: float | None = Field(
        None,
        description="Share of the aligned overlap that changed, 0..1; null when not trustworthy.",
    )
    changed: bool | None = None
    displacement_px: float | None = Field(
        None, description="How far the changed parts moved, in pixels of the current frame."
    )
    change_map: str | None = None
    reason: str | None = Field(None, description="Why the comparison is not trustworthy.")


class TrackingSummary(BaseModel):
    previous_scan_id: str
    views: list[ViewChange]
    changed_views: list[str]
    quality_delta: dict[str, float] = Field(
        description="This scan's figure minus the previous scan's (usable_fraction, ...)."
    )
    views_gained: list[str]
    views_lost: list[str]


class TrendPoint(BaseModel):
    scan_id: str
    completed_at: datetime
    scanned_at: datetime | None = Field(None, description="The scan's place in the history.")
    usable_fraction: float
    time_coverage: float
    views: int = Field(description="Standard views seen with a usable frame.")
    changed_views: int | None = Field(description="Views changed since the scan before.")


class Trend(BaseModel):
    """The patient's completed scans up to this one, oldest first."""

    scans: list[TrendPoint]
    json_uri: str
    plot_uri: str


class TrackingResult(BaseModel):
    view_frames: list[ViewFrame]
    summary: TrackingSummary | None
    trend: Trend
    uri: str | None
