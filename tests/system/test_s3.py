"""process-scan with its input and its results on S3 (moto's standalone server on loopback)."""

from __future__ import annotations

import json
import uuid

import boto3
import pytest

from cv.synthetic import SyntheticScan
from flows.process_scan import process_scan

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_server")]


@pytest.fixture
def buckets(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    uploads, results = f"uploads-{uuid.uuid4().hex[:8]}", f"results-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=uploads)
    s3.create_bucket(Bucket=results)
    monkeypatch.setenv("SCANFLOW_RESULTS_URI", f"s3://{results}/scanflow")
    monkeypatch.setenv("SCANFLOW_INPUT_ROOTS", f"s3://{uploads}/patients/")
    return s3, uploads, results


def test_scan_from_s3_to_s3(buckets, good_scan: SyntheticScan) -> None:  # type: ignore[no-untyped-def]
    s3, uploads, results = buckets
    key = "patients/p-7/scans/s-1.mp4"
    s3.upload_file(str(good_scan.path), uploads, key)
    uri = process_scan("s-1", "p-7", f"s3://{uploads}/{key}")
    assert uri == f"s3://{results}/scanflow/p-7/s-1/manifest.json"
    listed = s3.list_objects_v2(Bucket=results, Prefix="scanflow/p-7/s-1/")
    keys = {o["Key"].removeprefix("scanflow/p-7/s-1/") for o in listed["Contents"]}
    assert {
        "manifest.json",
        "summary.mp4",
        "contact_sheet.jpg",
        "embeddings.npy",
        "frame_quality.json",
    } <= keys
    assert sum(k.startswith("keyframes/") for k in keys) == 12
    assert sum(k.startswith("frames/") for k in keys) == 12
    manifest = json.loads(
        s3.get_object(Bucket=results, Key="scanflow/p-7/s-1/manifest.json")["Body"].read()
    )
    assert manifest["source_uri"] == f"s3://{uploads}/{key}"
    assert manifest["artifacts"]["summary_video"] == f"s3://{results}/scanflow/p-7/s-1/summary.mp4"
    head = s3.head_object(Bucket=results, Key="scanflow/p-7/s-1/summary.mp4")
    assert head["ContentType"] == "video/mp4"
    # the patient's history is read back from S3: a second scan tracks against the first
    s3.upload_file(str(good_scan.path), uploads, "patients/p-7/scans/s-2.mp4")
    process_scan("s-2", "p-7", f"s3://{uploads}/patients/p-7/scans/s-2.mp4")
    second = json.loads(
        s3.get_object(Bucket=results, Key="scanflow/p-7/s-2/manifest.json")["Body"].read()
    )
    assert second["tracking"]["previous_scan_id"] == "s-1"


def test_missing_s3_object_is_not_found(buckets) -> None:  # type: ignore[no-untyped-def]
    _, uploads, results = buckets
    state = process_scan(
        "gone", "p-8", f"s3://{uploads}/patients/p-8/scans/gone.mp4", return_state=True
    )
    assert state.is_failed()
    assert "[not_found]" in state.message and "gone.mp4" in state.message
