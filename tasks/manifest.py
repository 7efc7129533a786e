"""The result manifest (a public contract; JSON Schema in schemas/manifest.schema.json)
and publish_manifest, which writes it last and atomically."""

from __future__ import annotations

from datetime import datetime

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel, Field

from tasks.frames import QualitySummary, VideoSummary
from tasks.inference import ModelInfo
from tasks.storage import join, store_for
from tasks.summary import Keyframe

SCHEMA_VERSION = "1.0"
MANIFEST_NAME = "manifest.json"


class Artifacts(BaseModel):
    summary_video: str
    summary_video_frames: int
    summary_video_seconds: float
    contact_sheet: str
    keyframes: list[Keyframe]
    embeddings: str
    frame_quality: str
    tracking: str | None = None


class PairMetrics(BaseModel):
    current_keyframe: int
    previous_keyframe: int
    similarity: float
    inliers: int
    inlier_ratio: float
    reprojection_px: float | None
    trustworthy: bool
    change_score: float | None
    reason: str | None


class TrackingSummary(BaseModel):
    previous_scan_id: str
    mean_similarity: float = Field(description="Mean cosine similarity of paired keyframes.")
    trusted_pairs: int
    mean_change: float | None = Field(
        description="Mean aligned luma difference (0..1) over trustworthy pairs; null if none."
    )
    pairs: list[PairMetrics]


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
    timings_s: dict[str, float] = Field(description="Wall time of each stage, seconds.")
    artifacts: Artifacts
    tracking: TrackingSummary | None = None


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
        f"| total time | {sum(m.timings_s.values()):.1f} s |",
    ]
    if m.tracking:
        t = m.tracking
        change = f"{t.mean_change:.3f}" if t.mean_change is not None else "not trustworthy"
        lines.append(
            f"| vs scan `{t.previous_scan_id}` | similarity {t.mean_similarity:.2f}, "
            f"change {change} ({t.trusted_pairs} aligned pairs) |"
        )
    lines += [
        "",
        f"- manifest: `{uri}`",
        f"- summary video: `{m.artifacts.summary_video}`",
        f"- contact sheet: `{m.artifacts.contact_sheet}`",
    ]
    return "\n".join(lines)


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
