"""publish_manifest and artifact_key (tasks/manifest.py).

publish_manifest runs inside a small flow on the session's real Prefect server (it creates a
markdown artifact on the run), writing into a file:// results store; the artifact is read
back through the API. artifact_key's rules are checked against Prefect's own validation of
artifact keys, without a server.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from prefect import flow, runtime
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import ArtifactCreate
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from cv.quality.analysis import ScanQuality
from scanflow.contracts.manifest import Manifest
from scanflow.contracts.options import ID_PATTERN
from scanflow.contracts.stages import (
    ModelInfo,
    TrackingSummary,
    Trend,
    TrendPoint,
    VideoSummary,
    ViewChange,
    ViewCoverage,
)
from scanflow.settings import REPO_ROOT
from scanflow.storage import S3Store
from tasks.manifest import artifact_key, picture, publish_manifest, ui_image_mode
from tests.support.manifests import sample_manifest

SCHEMA = json.loads((REPO_ROOT / "schemas" / "manifest.schema.json").read_text())


def _manifest(scan_id: str, scan_uri: str, *, tracked: bool) -> Manifest:
    done = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
    tracking = TrackingSummary(
        previous_scan_id="scan-0",
        views=[
            ViewChange(
                view="front",
                status="compared",
                inliers=58,
                inlier_ratio=0.59,
                reprojection_px=0.54,
                overlap=0.91,
                change_score=0.0117,
                changed=True,
                displacement_px=2.38,
            ),
            ViewChange(view="left", status="compared", inliers=40, change_score=0.0, changed=False),
            ViewChange(view="right", status="untrustworthy", reason="only 6 inliers (need 25)"),
            ViewChange(view="upper_occlusal", status="missing_now"),
        ],
        changed_views=["front"],
        quality_delta={"usable_fraction": 0.2},
        views_gained=[],
        views_lost=["upper_occlusal"],
    )
    trend = Trend(
        scans=[
            TrendPoint(
                scan_id=s,
                completed_at=done - timedelta(days=d),
                usable_fraction=0.8,
                time_coverage=1.0,
                views=5,
                changed_views=None,
            )
            for s, d in (("scan-0", 30), (scan_id, 0))
        ],
        json_uri=f"{scan_uri}/trend.json",
        plot_uri=f"{scan_uri}/trend.png",
    )
    return sample_manifest(
        scan_id,
        "pt-1",
        done,
        scan_uri=scan_uri,
        code_version="0.1.0+gtest",
        started_at=done - timedelta(seconds=12.34),
        source_uri="s3://uploads/patients/pt-1/scans/s.mp4",
        video=VideoSummary(
            codec="h264",
            width=320,
            height=240,
            fps=15.0,
            declared_duration_s=6.0,
            duration_s=6.0,
            size_bytes=197113,
        ),
        quality=ScanQuality(
            True, 90, 71, 71 / 90, 6.0, 128.08, 65.1, 148.4, 0.111, 0.044, 0.044, 0.011, 1.0, 0.73
        ),
        model=ModelInfo(name="view-classifier", version="1.0.0", sha256="3" * 64, device="cpu"),
        views=ViewCoverage(
            frames={"front": 2, "left": 2, "right": 0, "other": 0},
            uncertain=1,
            usable=5,
            missing=["right"],
            min_confidence=0.5,
            min_frames=1,
        ),
        timings_s={"extract_frames": 0.5},
        tracking=tracking if tracked else None,
        trend=trend if tracked else None,
    )


@flow(name="publish-manifest-test", persist_result=False)
def _publish(manifest: Manifest, scan_uri: str) -> tuple[str, str]:
    return publish_manifest(manifest, scan_uri), str(runtime.flow_run.id)


async def _artifacts(flow_run_id: str) -> list[Any]:
    async with get_client() as client:
        return await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )


@pytest.mark.integration
@pytest.mark.usefixtures("prefect_server")
def test_the_manifest_is_written_whole_where_the_scan_is(tmp_path: Path) -> None:
    folder = tmp_path / "results" / "pt-1" / "scan-9"
    manifest = _manifest("scan-9", folder.as_uri(), tracked=True)
    uri, _ = _publish(manifest, folder.as_uri())
    assert uri == (folder / "manifest.json").as_uri()
    raw = json.loads((folder / "manifest.json").read_text())
    jsonschema.validate(raw, SCHEMA)
    written = Manifest.model_validate(raw)
    assert written.artifacts.report == (folder / "report.html").as_uri()  # written before it
    report = {
        "artifacts": manifest.artifacts.model_copy(update={"report": written.artifacts.report})
    }
    assert written == manifest.model_copy(update=report)
    # written atomically: no temporary file is left beside it
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "report.html"]


@pytest.mark.integration
@pytest.mark.usefixtures("prefect_server")
def test_a_markdown_summary_of_the_scan_is_left_on_the_run(tmp_path: Path) -> None:
    folder = tmp_path / "pt-1" / "Scan_2024.05"
    uri, run_id = _publish(
        _manifest("Scan_2024.05", folder.as_uri(), tracked=True), folder.as_uri()
    )
    artifacts = asyncio.run(_artifacts(run_id))
    assert len(artifacts) == 1
    art = artifacts[0]
    assert (art.key, art.type, art.description) == (
        "scan-scan-2024-05",
        "markdown",
        "scan Scan_2024.05",
    )
    lines = str(art.data).splitlines()
    assert lines[0] == "## Scan `Scan_2024.05`: usable"
    for expected in [
        "| usable frames | 71 of 90 (79%) |",
        "| duration | 6.0 s |",
        "| median sharpness | 128 |",
        "| blurry / dark / glare / fast motion | 11% / 4% / 4% / 1% |",
        "| model | view-classifier 1.0.0 on cpu |",
        "| views (usable frames) | front 2, left 2; missing: right |",
        "| total time | 12.3 s |",  # completed_at - started_at, not the sum of the stages
        "| changed since `scan-0` | front |",
        "| front | change 1.17%, moved 2.4 px (58 inliers) |",
        "| left | change 0.00% (40 inliers) |",  # nothing moved: no displacement shown
        "| right | untrustworthy: only 6 inliers (need 25) |",
        "| upper_occlusal | missing now |",
        f"- manifest: `{uri}`",
        f"- summary video: `{folder.as_uri()}/summary.mp4`",
        f"- trend over 2 scans: `{folder.as_uri()}/trend.png`",
    ]:
        assert expected in lines, expected


@pytest.mark.integration
@pytest.mark.usefixtures("prefect_server")
def test_a_first_scan_summary_has_no_tracking_rows(tmp_path: Path) -> None:
    folder = tmp_path / "pt-1" / "scan-1"
    _, run_id = _publish(_manifest("scan-1", folder.as_uri(), tracked=False), folder.as_uri())
    (art,) = asyncio.run(_artifacts(run_id))
    text = str(art.data)
    assert "changed since" not in text and "trend over" not in text
    assert "| usable frames | 71 of 90 (79%) |" in text


# -- artifact_key ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scan_id", "key"),
    [
        ("scan-1", "scan-scan-1"),
        ("Scan_2024.05", "scan-scan-2024-05"),  # lowercase; other characters become dashes
        ("A" * 64, "scan-" + "a" * 55),  # at most 60 characters
        ("x" * 54 + "._tail", "scan-" + "x" * 54),  # cut at 60, no dash left at the end
    ],
)
def test_artifact_keys_are_the_scan_id_in_prefects_alphabet(scan_id: str, key: str) -> None:
    assert re.fullmatch(ID_PATTERN, scan_id)
    assert artifact_key(scan_id) == key


@pytest.mark.parametrize("scan_id", ["0", "a.b.c", "Z_9-x", "9" * 64, "a" + "." * 63, "A-" * 32])
def test_prefect_accepts_the_artifact_key_of_every_valid_scan_id(scan_id: str) -> None:
    assert re.fullmatch(ID_PATTERN, scan_id)
    key = artifact_key(scan_id)
    ArtifactCreate(key=key, type="markdown", data="x")  # raises on a key Prefect refuses
    assert len(key) <= 60 and not key.endswith("-")


# -- pictures in the UI artifact ------------------------------------------------------------


def test_pictures_are_inline_for_local_results_and_links_for_s3_unless_chosen() -> None:
    assert ui_image_mode("file:///r/pt/s", "auto") == "inline"
    assert ui_image_mode("s3://b/r/pt/s", "auto") == "links"  # patient data stays in S3
    assert ui_image_mode("s3://b/r/pt/s", "presigned") == "presigned"
    assert ui_image_mode("file:///r/pt/s", "links") == "links"


@pytest.mark.integration
def test_an_s3_picture_is_a_link_a_presigned_url_or_a_thumbnail(s3_endpoint: str) -> None:
    import boto3
    import httpx
    import numpy as np

    from cv.images import decode_jpeg, encode_jpeg

    bucket = f"pictures-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    uri = f"s3://{bucket}/results/pt-1/scan-1/contact_sheet.jpg"
    big = encode_jpeg(np.random.default_rng(1).integers(0, 255, (1080, 1920, 3), np.uint8))
    S3Store().put_bytes(uri, big, "image/jpeg")

    assert picture(uri, "contact sheet", "links", 900) == f"- contact sheet: `{uri}`"
    presigned = picture(uri, "contact sheet", "presigned", 600)
    url = re.fullmatch(r"!\[contact sheet\]\((http://127\.0\.0\.1:\d+/[^)]+)\)", presigned)
    assert url
    v4 = re.search(r"X-Amz-Expires=(\d+)", url.group(1))  # SigV4: seconds; SigV2: epoch
    expires = int(v4.group(1)) if v4 else int(re.search(r"Expires=(\d+)", url.group(1)).group(1))  # type: ignore[union-attr]
    assert expires == 600 if v4 else abs(expires - time.time() - 600) < 60
    assert httpx.get(url.group(1)).content == big  # anyone with the URL, for 10 minutes
    inline = picture(uri, "contact sheet", "inline", 0)
    data = inline.removeprefix("![contact sheet](data:image/jpeg;base64,").removesuffix(")")
    small = decode_jpeg(base64.b64decode(data))
    assert small.shape == (360, 640, 3) and len(data) < len(big) / 4
    assert picture(f"s3://{bucket}/gone.jpg", "gone", "inline", 0) == (
        f"- gone: `s3://{bucket}/gone.jpg`"
    )
