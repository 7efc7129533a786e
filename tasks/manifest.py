"""The result manifest (a public contract; JSON Schema in schemas/manifest.schema.json)
and publish_manifest, which writes it last and atomically."""

from __future__ import annotations

from datetime import datetime

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel, Field

from tasks.frames import QualitySummary, VideoSummary
from tasks.inference import ModelInfo, ViewCoverage
from tasks.storage import join, store_for
from tasks.summary import Keyframe

SCHEMA_VERSION = "1.1"  # 1.1: views, artifacts.views, model package fields
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
    usable_fraction: float
    time_coverage: float
    views: int = Field(description="Standard views seen with a usable frame.")
    changed_views: int | None = Field(description="Views changed since the scan before.")


class Trend(BaseModel):
    """The patient's completed scans up to this one, oldest first."""

    scans: list[TrendPoint]
    json_uri: str
    plot_uri: str


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
    source_uri: str
    video: VideoSummary
    quality: QualitySummary
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


def manifest_uri(scan_uri: str) -> str:
    return join(scan_uri, MANIFEST_NAME)


def read_manifest(uri: str) -> Manifest:
    return Manifest.model_validate_json(store_for(uri).get_bytes(uri))


def _markdown(m: Manifest, uri: str, ui_hint: str | None) -> str:
    q = m.quality
    lines = [
        f"## Scan `{m.scan_id}`: {'usable' if q.usable else 'rejected'}",
        "",
        "| figure | value |",
        "| --- | --- |",
        f"| usable frames | {q.usable_frames} of {q.frames_decoded} ({q.usable_fraction:.0%}) |",
        f"| duration | {q.duration_s:.1f} s |",
        f"| median sharpness | {q.median_sharpness:.0f} |",
        f"| blurry / dark / glare / fast motion | {q.blurry_fraction:.0%} / "
        f"{q.dark_fraction:.0%} / {q.glare_fraction:.0%} / {q.fast_motion_fraction:.0%} |",
        f"| model | {m.model.name} {m.model.version} on {m.model.device} |",
        *_view_rows(m),
        # not the sum of timings_s: load_model and inference_while_decoding overlap decoding
        f"| total time | {(m.completed_at - m.started_at).total_seconds():.1f} s |",
    ]
    if m.tracking:
        t = m.tracking
        lines.append(
            f"| changed since `{t.previous_scan_id}` | {', '.join(t.changed_views) or 'no view'} |"
        )
        for v in t.views:
            if v.status == "compared":
                moved = f", moved {v.displacement_px:.1f} px" if v.displacement_px else ""
                lines.append(
                    f"| {v.view} | change {v.change_score:.2%}{moved} ({v.inliers} inliers) |"
                )
            else:
                lines.append(
                    f"| {v.view} | {v.status.replace('_', ' ')}"
                    f"{': ' + v.reason if v.reason else ''} |"
                )
    lines += [
        "",
        f"- manifest: `{uri}`",
        f"- summary video: `{m.artifacts.summary_video}`",
        f"- contact sheet: `{m.artifacts.contact_sheet}`",
    ]
    if m.trend:
        lines.append(f"- trend over {len(m.trend.scans)} scans: `{m.trend.plot_uri}`")
    return "\n".join(lines)


def _view_rows(m: Manifest) -> list[str]:
    if m.views is None:
        return []
    seen = ", ".join(f"{k} {v}" for k, v in m.views.frames.items() if v) or "none"
    missing = ", ".join(m.views.missing) or "none"
    return [f"| views (usable frames) | {seen}; missing: {missing} |"]


@task(name="publish-manifest")
def publish_manifest(manifest: Manifest, scan_uri: str) -> str:
    """Write manifest.json (atomically, last) and a markdown summary in the Prefect UI."""
    uri = manifest_uri(scan_uri)
    store_for(uri).put_bytes(uri, manifest.model_dump_json(indent=2).encode(), "application/json")
    create_markdown_artifact(
        key=artifact_key(manifest.scan_id),
        markdown=_markdown(manifest, uri, None),
        description=f"scan {manifest.scan_id}",
    )
    get_run_logger().info("manifest written: %s", uri)
    return uri


def artifact_key(scan_id: str) -> str:
    # Artifact keys allow lowercase letters, digits and dashes only.
    key = "".join(c if c.isalnum() else "-" for c in scan_id.lower())
    return f"scan-{key}"[:60].rstrip("-")


if __name__ == "__main__":  # python -m tasks.manifest > schemas/manifest.schema.json
    import json

    print(json.dumps(Manifest.model_json_schema(), indent=2))
