"""Result versions (tasks/versions.py) in a file:// results store: a scan's files archived
under versions/, the archived manifest naming its own copies, and put back after a failure."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pytest
from prefect.logging import disable_run_logger

from scanflow.contracts.manifest import Manifest, manifest_uri, read_manifest
from scanflow.storage import FileStore, S3Store, _s3_client, join
from tasks.versions import VERSIONS, archive_previous, restore_previous, version_name
from tests.support.manifests import sample_manifest


def _scan(root: Path) -> tuple[str, Manifest]:
    scan_uri = join(root.as_uri(), "pt-1", "scan-1")
    m = sample_manifest("scan-1", "pt-1", datetime.now(UTC) - timedelta(days=3))
    m = m.model_copy(
        update={
            "artifacts": m.artifacts.model_copy(
                update={"summary_video": join(scan_uri, "summary.mp4")}
            ),
            "previous_versions": [join(scan_uri, VERSIONS, "older", "manifest.json")],
        }
    )
    store = FileStore()
    store.put_bytes(join(scan_uri, "summary.mp4"), b"video v1")
    store.put_bytes(join(scan_uri, "frames", "000001.jpg"), b"frame v1")
    store.put_bytes(
        join(scan_uri, "tracking.json"), json.dumps({"map": join(scan_uri, "x.jpg")}).encode()
    )
    store.put_bytes(join(scan_uri, "shadow", "abc", "views.json"), b"{}")  # not versioned
    store.put_bytes(manifest_uri(scan_uri), m.model_dump_json().encode())
    return scan_uri, m


def test_a_new_scan_has_nothing_to_archive(tmp_path: Path) -> None:
    with disable_run_logger():
        assert archive_previous.fn(join(tmp_path.as_uri(), "pt-1", "new")) is None


def test_the_previous_result_is_archived_with_a_manifest_naming_its_copies(
    tmp_path: Path,
) -> None:
    scan_uri, m = _scan(tmp_path)
    with disable_run_logger():
        prev = archive_previous.fn(scan_uri)
    assert prev is not None
    assert prev.version_uri == join(scan_uri, VERSIONS, version_name(m))
    assert prev.scanned_at == m.started_at and prev.model_sha256 == m.model.sha256
    assert prev.previous_versions == [*m.previous_versions, prev.manifest_uri]
    folder = FileStore.path(prev.version_uri)
    names = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert names == ["frames/000001.jpg", "manifest.json", "summary.mp4", "tracking.json"]
    archived = read_manifest(prev.manifest_uri)
    assert archived.artifacts.summary_video == join(prev.version_uri, "summary.mp4")
    assert archived.previous_versions == m.previous_versions  # not moved
    assert prev.version_uri in (folder / "tracking.json").read_text()
    # a retried run finds it done and does not copy again
    (folder / "summary.mp4").write_bytes(b"marker")
    with disable_run_logger():
        assert archive_previous.fn(scan_uri) == prev
    assert (folder / "summary.mp4").read_bytes() == b"marker"


def test_two_processings_completed_in_one_second_are_archived_apart(tmp_path: Path) -> None:
    """A small scan processed twice at once: the second result (same model, same second)
    gets a folder of its own, and a failure after it puts the second back, not the first."""
    scan_uri, first = _scan(tmp_path)
    first = first.model_copy(
        update={
            "flow_run_id": str(uuid.uuid4()),
            "completed_at": datetime(2026, 12, 1, 22, 43, 31, 100_000, UTC),
        }
    )
    store = FileStore()
    store.put_bytes(manifest_uri(scan_uri), first.model_dump_json().encode())
    with disable_run_logger():
        one = archive_previous.fn(scan_uri)
        second = first.model_copy(
            update={
                "flow_run_id": str(uuid.uuid4()),
                "completed_at": first.completed_at + timedelta(milliseconds=700),
                "previous_versions": one.previous_versions if one else [],
            }
        )
        store.put_bytes(join(scan_uri, "summary.mp4"), b"video v2")
        store.put_bytes(manifest_uri(scan_uri), second.model_dump_json().encode())
        two = archive_previous.fn(scan_uri)
        assert one is not None and two is not None and two.version_uri != one.version_uri
        store.put_bytes(join(scan_uri, "summary.mp4"), b"video v3 (half-way)")
        restore_previous.fn(scan_uri, two)
    assert read_manifest(manifest_uri(scan_uri)) == second
    assert FileStore.path(join(scan_uri, "summary.mp4")).read_bytes() == b"video v2"


def test_a_failed_reprocessing_puts_the_previous_files_back(tmp_path: Path) -> None:
    scan_uri, m = _scan(tmp_path)
    with disable_run_logger():
        prev = archive_previous.fn(scan_uri)
        assert prev is not None
        store = FileStore()
        store.put_bytes(join(scan_uri, "frames", "000001.jpg"), b"frame v2 (half-way)")
        restore_previous.fn(scan_uri, prev)
    assert FileStore.path(join(scan_uri, "frames", "000001.jpg")).read_bytes() == b"frame v1"
    assert read_manifest(manifest_uri(scan_uri)) == m


@pytest.mark.integration
def test_archive_and_restore_on_s3_with_listing_only(s3_endpoint: str) -> None:
    """On S3 the scan roles may get, put and list the results bucket, nothing else (no
    versioning calls): archive and restore need no more."""
    bucket = f"versions-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    scan_uri = f"s3://{bucket}/results/pt-1/scan-1"
    store = S3Store()
    m = sample_manifest("scan-1", "pt-1", datetime.now(UTC) - timedelta(days=1))
    store.put_bytes(join(scan_uri, "summary.mp4"), b"video v1")
    for i in range(3):
        store.put_bytes(join(scan_uri, "frames", f"{i:06d}.jpg"), b"frame v1")
    store.put_bytes(manifest_uri(scan_uri), m.model_dump_json().encode())
    calls: list[str] = []

    def record(model: object, **_: object) -> None:
        calls.append(str(getattr(model, "name", model)))

    client = _s3_client()
    client.meta.events.register("before-call.s3", record)
    try:
        with disable_run_logger():
            prev = archive_previous.fn(scan_uri)
            assert prev is not None
            assert len(store.list_files(prev.version_uri)) == 5
            store.put_bytes(join(scan_uri, "frames", "000001.jpg"), b"frame v2")
            restore_previous.fn(scan_uri, prev)
    finally:
        client.meta.events.unregister("before-call.s3", record)
    # what the scan task roles may do on the results bucket (deployments/*/template.yaml)
    assert set(calls) <= {"HeadObject", "GetObject", "PutObject", "ListObjectsV2"}, set(calls)
    assert store.get_bytes(join(scan_uri, "frames", "000001.jpg")) == b"frame v1"
    assert read_manifest(manifest_uri(scan_uri)) == m
