"""The result manifest (a public contract; JSON Schema in schemas/manifest.schema.json):
``<results root>/<patient>/<scan>/manifest.json``, written last (its presence means the scan
is complete)."""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel, Field

from cv.quality.analysis import ScanQuality
from scanflow.contracts.stages import (
    FramesResult,
    InferenceResult,
    Keyframe,
    ModelInfo,
    SummaryResult,
    TrackingResult,
    TrackingSummary,
    Trend,
    VideoSummary,
    ViewCoverage,
    ViewFrame,
)
from scanflow.storage import join, store_for

SCHEMA_VERSION = "1.2"  # 1.1: views, artifacts.views, model package fields; 1.2: versions, report
MANIFEST_NAME = "manifest.json"


class Artifacts(BaseModel):
    summary_video: str
    summary_video_frames: int
    summary_video_seconds: float
    contact_sheet: str
    keyframes: list[Keyframe]
    embeddings: str
    views: str | None = Field(None, description="Per kept frame: predicted view, confidence.")
    frame_quality: str
    tracking: str | None = None
    report: str | None = Field(None, description="report.html: the page a doctor opens.")


class Manifest(BaseModel):
    """Everything the doctor is shown about one completed scan, and how it was made."""

    schema_version: str = SCHEMA_VERSION
    scan_id: str
    patient_id: str = Field(description="Pseudonymous patient id.")
    flow_run_id: str | None
    status: str = "completed"
    code_version: str
    started_at: datetime
    completed_at: datetime
    scanned_at: datetime | None = Field(
        None,
        description="When the scan was first processed: kept when it is processed again, it "
        "orders the patient's scans (absent before schema 1.2: started_at).",
    )
    previous_versions: list[str] = Field(
        default_factory=list,
        description="Manifests of earlier processings of this scan (a backfill, a re-run), "
        "oldest first, each under <scan>/versions/ with the files it names.",
    )
    source_uri: str
    video: VideoSummary
    quality: ScanQuality
    model: ModelInfo
    views: ViewCoverage | None = None
    timings_s: dict[str, float] = Field(
        description="Wall time of each stage, seconds. load_model and "
        "inference_while_decoding run during extract_frames: the stages overlap, so their sum "
        "is not the run's time (completed_at - started_at is)."
    )
    artifacts: Artifacts
    view_frames: list[ViewFrame] = Field(
        default_factory=list,
        description="The best frame of each view, for comparison with later scans.",
    )
    tracking: TrackingSummary | None = None
    trend: Trend | None = None

    @property
    def scanned(self) -> datetime:
        """The scan's place in the patient's history."""
        return self.scanned_at or self.started_at

    @classmethod
    def from_stages(
        cls,
        *,
        scan_id: str,
        patient_id: str,
        flow_run_id: str | None,
        code_version: str,
        started_at: datetime,
        scanned_at: datetime,
        previous_versions: list[str],
        source_uri: str,
        timings: dict[str, float],
        frames: FramesResult,
        inference: InferenceResult,
        summary: SummaryResult,
        tracking: TrackingResult,
    ) -> Manifest:
        """The manifest of a scan whose stages all returned: completed now."""
        return cls(
            scan_id=scan_id,
            patient_id=patient_id,
            flow_run_id=flow_run_id,
            code_version=code_version,
            started_at=started_at,
            completed_at=datetime.now(UTC),
            scanned_at=scanned_at,
            previous_versions=previous_versions,
            source_uri=source_uri,
            video=frames.video,
            quality=frames.quality,
            model=inference.model,
            views=inference.views,
            timings_s=timings,
            artifacts=Artifacts(
                summary_video=summary.video_uri,
                summary_video_frames=summary.video_frames,
                summary_video_seconds=summary.video_seconds,
                contact_sheet=summary.contact_sheet_uri,
                keyframes=summary.keyframes,
                embeddings=inference.embeddings_uri,
                views=inference.views_uri,
                frame_quality=frames.frame_quality_uri,
                tracking=tracking.uri,
            ),
            view_frames=tracking.view_frames,
            tracking=tracking.summary,
            trend=tracking.trend,
        )


def manifest_uri(scan_uri: str) -> str:
    return join(scan_uri, MANIFEST_NAME)


def read_manifest(uri: str) -> Manifest:
    return Manifest.model_validate_json(store_for(uri).get_bytes(uri))


# python -m scanflow.contracts.manifest > schemas/manifest.schema.json
if __name__ == "__main__":
    import json

    print(json.dumps(Manifest.model_json_schema(), indent=2))
