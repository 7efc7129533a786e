"""download_scan: the upload is checked against the allowed input roots, its size against the
limit, and only then fetched; file:// uploads are read in place through a link named after
the scan, s3:// uploads are downloaded from moto's standalone server (real HTTP).

The task's function is called directly with its run logger disabled (it logs one line at the
end); the file:// cases need no server, the s3:// ones are integration tests.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prefect.logging import disable_run_logger

from cv.errors import ProcessingError, Reason, RejectedScan, ScanError
from scanflow.contracts.stages import DownloadedScan
from tasks.download import download_scan

PATIENT = "pt-1"
BYTES = os.urandom(3000) + b"not decoded by this stage"


def _download(uri: str, work: Path, roots: list[str], max_bytes: int = 10**6) -> DownloadedScan:
    with disable_run_logger():
        return download_scan.fn(
            uri, str(work), max_bytes, scan_id="scan-7", patient_id=PATIENT, input_roots=roots
        )


def _refusal(uri: str, work: Path, roots: list[str], max_bytes: int = 10**6) -> ScanError:
    """The refusal, of the class its reason's cause gives (a rejection only for the
    patient's: too_large; not_found and access_denied are the integration's)."""
    with pytest.raises(ScanError) as caught:
        _download(uri, work, roots, max_bytes)
    refused = caught.value
    expected = RejectedScan if refused.reason.is_patient_fixable else ProcessingError
    assert type(refused) is expected, refused
    return refused


@pytest.fixture
def uploads(tmp_path: Path) -> Path:
    """An allowed file:// root holding one patient's upload, named as a phone might."""
    root = tmp_path.resolve() / "uploads"
    scans = root / "patients" / PATIENT / "scans"
    scans.mkdir(parents=True)
    (scans / "Jane Doe 2024.MOV").write_bytes(BYTES)
    return root


def test_a_file_upload_is_read_in_place_through_a_link_named_after_the_scan(
    uploads: Path, tmp_path: Path
) -> None:
    source = uploads / "patients" / PATIENT / "scans" / "Jane Doe 2024.MOV"
    work = tmp_path / "work"
    got = _download(source.as_uri(), work, [uploads.as_uri()])
    local = Path(got.local_path)
    # the upload's name (a person's) never reaches the local name; its extension does
    assert local == work / "input" / "scan-7.mov"
    assert local.is_symlink() and Path(os.readlink(local)) == source
    assert local.read_bytes() == BYTES
    assert (got.source_uri, got.size_bytes) == (source.as_uri(), len(BYTES))


def test_a_retried_file_download_replaces_the_link_it_left(uploads: Path, tmp_path: Path) -> None:
    source = uploads / "patients" / PATIENT / "scans" / "Jane Doe 2024.MOV"
    work = tmp_path / "work"
    (work / "input").mkdir(parents=True)
    (work / "input" / "scan-7.mov").write_bytes(b"a partial copy from an earlier attempt")
    got = _download(source.as_uri(), work, [uploads.as_uri()])
    assert Path(got.local_path).is_symlink() and Path(got.local_path).read_bytes() == BYTES


@pytest.mark.parametrize(
    "where",
    [
        "elsewhere/patients/pt-1/scans/a.mp4",  # outside the allowed root
        "uploads/patients/pt-2/scans/a.mp4",  # inside it, but another patient's
        "uploads/patients/pt-1/../pt-2/scans/a.mp4",  # climbing out of the patient's folder
    ],
)
def test_a_uri_outside_the_allowed_roots_is_refused_before_anything_is_read(
    where: str, uploads: Path, tmp_path: Path
) -> None:
    target = tmp_path.resolve() / where
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(BYTES)  # it exists and is readable: only the check refuses it
    uri = f"file://{tmp_path.resolve()}/{where}"
    work = tmp_path / "work"
    refused = _refusal(uri, work, [uploads.as_uri()])
    assert refused.reason is Reason.ACCESS_DENIED
    assert uri in refused.message
    assert not work.exists()


def test_a_link_inside_a_root_that_leads_out_of_it_is_refused(
    uploads: Path, tmp_path: Path
) -> None:
    outside = tmp_path.resolve() / "private" / "other.mp4"
    outside.parent.mkdir()
    outside.write_bytes(BYTES)
    link = uploads / "patients" / PATIENT / "scans" / "innocent.mp4"
    link.symlink_to(outside)
    work = tmp_path / "work"
    refused = _refusal(link.as_uri(), work, [uploads.as_uri()])
    assert refused.reason is Reason.ACCESS_DENIED
    assert str(outside) in refused.message  # the resolved path is the one judged
    assert not work.exists()


def test_a_file_upload_over_the_limit_is_too_large_and_not_linked(
    uploads: Path, tmp_path: Path
) -> None:
    source = uploads / "patients" / PATIENT / "scans" / "big.mp4"
    source.write_bytes(b"\0" * 2_600_000)
    work = tmp_path / "work"
    refused = _refusal(source.as_uri(), work, [uploads.as_uri()], max_bytes=1_000_000)
    assert refused.reason is Reason.TOO_LARGE
    assert refused.message == "the upload is 3 MB; the limit is 1 MB."
    assert not (work / "input").exists()


def test_an_upload_exactly_at_the_limit_is_accepted(uploads: Path, tmp_path: Path) -> None:
    source = uploads / "patients" / PATIENT / "scans" / "Jane Doe 2024.MOV"
    got = _download(source.as_uri(), tmp_path / "work", [uploads.as_uri()], max_bytes=len(BYTES))
    assert got.size_bytes == len(BYTES)


def test_a_missing_file_upload_is_not_found_naming_it(uploads: Path, tmp_path: Path) -> None:
    uri = (uploads / "patients" / PATIENT / "scans" / "gone.mp4").as_uri()
    refused = _refusal(uri, tmp_path / "work", [uploads.as_uri()])
    assert refused.reason is Reason.NOT_FOUND
    assert uri in refused.message


# -- s3:// through moto ---------------------------------------------------------------------


@pytest.fixture
def bucket(s3_endpoint: str) -> Iterator[tuple[Any, str]]:
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    name = f"uploads-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=name)
    yield s3, name
    for obj in s3.list_objects_v2(Bucket=name).get("Contents", []):
        s3.delete_object(Bucket=name, Key=obj["Key"])
    s3.delete_bucket(Bucket=name)


@pytest.mark.integration
def test_an_s3_upload_is_downloaded_to_a_file_named_after_the_scan(
    bucket: tuple[Any, str], tmp_path: Path
) -> None:
    s3, name = bucket
    key = f"patients/{PATIENT}/scans/Jane Doe.mp4"
    s3.put_object(Bucket=name, Key=key, Body=BYTES)
    uri = f"s3://{name}/patients/{PATIENT}/scans/Jane%20Doe.mp4"  # keys are read decoded
    got = _download(uri, tmp_path / "work", [f"s3://{name}/patients"])
    local = Path(got.local_path)
    assert local == tmp_path / "work" / "input" / "scan-7.mp4"
    assert not local.is_symlink() and local.read_bytes() == BYTES
    assert (got.source_uri, got.size_bytes) == (uri, len(BYTES))


@pytest.mark.integration
def test_an_s3_upload_over_the_limit_is_refused_before_it_is_downloaded(
    bucket: tuple[Any, str], tmp_path: Path
) -> None:
    s3, name = bucket
    key = f"patients/{PATIENT}/scans/s.mp4"
    s3.put_object(Bucket=name, Key=key, Body=b"\0" * 1_500_000)
    work = tmp_path / "work"
    refused = _refusal(f"s3://{name}/{key}", work, [f"s3://{name}/patients"], max_bytes=10**6)
    assert refused.reason is Reason.TOO_LARGE
    assert "2 MB" in refused.message and "1 MB" in refused.message
    assert not (work / "input").exists()


@pytest.mark.integration
@pytest.mark.parametrize("missing", ["object", "bucket"])
def test_a_missing_s3_upload_is_not_found(
    missing: str, bucket: tuple[Any, str], tmp_path: Path
) -> None:
    _, name = bucket
    if missing == "bucket":
        name = f"gone-{uuid.uuid4().hex[:10]}"
    uri = f"s3://{name}/patients/{PATIENT}/scans/s.mp4"
    refused = _refusal(uri, tmp_path / "work", [f"s3://{name}/patients"])
    assert refused.reason is Reason.NOT_FOUND
    assert uri in refused.message


@pytest.mark.integration
def test_an_s3_upload_in_a_bucket_that_is_not_a_root_is_refused(
    bucket: tuple[Any, str], tmp_path: Path
) -> None:
    s3, name = bucket
    key = f"patients/{PATIENT}/scans/s.mp4"
    s3.put_object(Bucket=name, Key=key, Body=BYTES)
    other = f"other-{uuid.uuid4().hex[:10]}"  # the upload exists: only the check refuses it
    refused = _refusal(f"s3://{name}/{key}", tmp_path / "work", [f"s3://{other}/patients"])
    assert refused.reason is Reason.ACCESS_DENIED
    assert f"s3://{other}/patients" in refused.message  # it names the roots it allows
