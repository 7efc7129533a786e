"""scanflow.storage: URI helpers, the file store on a real disk (atomic writes, errors mapped
to reason codes naming the URI), the choice of store by scheme, and the S3 store against
moto's standalone server (real HTTP, boto3's own client).

Faults S3 answers only under stress (500/503/SlowDown, outages, injected 403/404 on GET and
PUT, wrapped errors of upload_file/download_file) and a full disk are in
tests/system/faults/test_store_faults.py; here are S3's own answers to ordinary requests.
"""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from cv.errors import ProcessingError, Reason
from scanflow.storage import FileStore, S3Store, _s3_error, join, store_for, to_uri

# -- URIs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("root", "parts", "joined"),
    [
        ("s3://bucket/results/", ("/pt-1/", "scan-1/"), "s3://bucket/results/pt-1/scan-1"),
        (
            "file:///srv/results",
            ("pt-1", "scan-1/frames/f-0001.jpg"),
            "file:///srv/results/pt-1/scan-1/frames/f-0001.jpg",
        ),
        ("s3://bucket", (), "s3://bucket"),
        ("s3://bucket///", ("a",), "s3://bucket/a"),
    ],
)
def test_join_puts_single_slashes_between_segments(
    root: str, parts: tuple[str, ...], joined: str
) -> None:
    assert join(root, *parts) == joined


def test_to_uri_makes_paths_absolute_file_uris_and_passes_uris_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert to_uri("scans/a b.mp4") == (tmp_path / "scans" / "a b.mp4").as_uri()
    assert "%20" in to_uri("scans/a b.mp4")
    assert to_uri("s3://bucket/k%20ey") == "s3://bucket/k%20ey"
    # the file store reads back the path it was given
    assert FileStore.path(to_uri("scans/100% a.mp4")) == tmp_path / "scans" / "100% a.mp4"


def test_the_stores_refuse_each_others_uris() -> None:
    with pytest.raises(ValueError, match="not a file:// URI: s3://b/k"):
        FileStore.path("s3://b/k")
    for uri in ("file:///tmp/k", "s3:///key-without-bucket"):
        with pytest.raises(ValueError, match="not an s3:// URI"):
            S3Store.split(uri)
    assert S3Store.split("s3://bucket/pt-1/a%20b.json") == ("bucket", "pt-1/a b.json")


def test_store_for_picks_by_scheme_and_names_an_unsupported_uri() -> None:
    assert isinstance(store_for("file:///tmp/x"), FileStore)
    assert isinstance(store_for("s3://bucket/x"), S3Store)
    for uri in ("gs://bucket/x", "/plain/path"):
        with pytest.raises(ProcessingError) as err:
            store_for(uri)
        assert err.value.reason is Reason.STORAGE_ERROR and repr(uri) in err.value.message


# -- the file store ------------------------------------------------------------------------


def test_put_then_get_creates_folders_and_replaces_whole(tmp_path: Path) -> None:
    store, uri = FileStore(), (tmp_path / "pt-1" / "scan-1" / "views.json").as_uri()
    assert store.put_bytes(uri, b'{"v": 1}', "application/json") == uri
    assert store.get_bytes(uri) == b'{"v": 1}'
    store.put_bytes(uri, b"{}")
    assert store.get_bytes(uri) == b"{}" and store.size(uri) == 2 and store.exists(uri)
    assert [p.name for p in (tmp_path / "pt-1" / "scan-1").iterdir()] == ["views.json"]


def test_a_failed_write_leaves_the_old_file_and_no_partial_one(tmp_path: Path) -> None:
    store, uri = FileStore(), (tmp_path / "scan" / "manifest.json").as_uri()
    store.put_bytes(uri, b"old")
    with pytest.raises(TypeError):
        store.put_bytes(uri, "not bytes")  # type: ignore[arg-type]  # fails mid-write
    assert store.get_bytes(uri) == b"old"
    assert [p.name for p in (tmp_path / "scan").iterdir()] == ["manifest.json"]


def test_a_write_that_cannot_be_renamed_into_place_is_a_storage_error(tmp_path: Path) -> None:
    store = FileStore()
    (tmp_path / "scan" / "frames" / "inside").mkdir(parents=True)  # a folder where the file goes
    src = tmp_path / "summary.mp4"
    src.write_bytes(b"v" * 1000)
    uri = (tmp_path / "scan" / "frames").as_uri()
    for call in (lambda: store.put_bytes(uri, b"x"), lambda: store.upload(src, uri)):
        with pytest.raises(ProcessingError) as err:
            call()
        assert err.value.reason is Reason.STORAGE_ERROR and uri in err.value.message
    assert sorted(p.name for p in (tmp_path / "scan").iterdir()) == ["frames"]  # no temporary


def test_a_folder_in_the_way_of_the_parent_is_a_storage_error(tmp_path: Path) -> None:
    (tmp_path / "pt-1").write_bytes(b"a file, not a folder")
    uri = (tmp_path / "pt-1" / "scan-1" / "views.json").as_uri()
    with pytest.raises(ProcessingError) as err:
        FileStore().put_bytes(uri, b"{}")
    assert err.value.reason is Reason.STORAGE_ERROR and uri in err.value.message


def test_upload_copies_atomically_and_skips_a_file_onto_itself(tmp_path: Path) -> None:
    store, src = FileStore(), tmp_path / "render" / "summary.mp4"
    src.parent.mkdir()
    src.write_bytes(b"\x00\x01" * 5000)
    dest = (tmp_path / "results" / "summary.mp4").as_uri()
    assert store.upload(src, dest, "video/mp4") == dest
    assert store.get_bytes(dest) == src.read_bytes()
    assert store.upload(src, src.as_uri()) == src.as_uri()
    assert src.read_bytes() == b"\x00\x01" * 5000  # not truncated by copying onto itself


def test_a_failed_results_write_is_ours_as_on_s3(tmp_path: Path) -> None:
    with pytest.raises(ProcessingError) as err:
        FileStore().upload(tmp_path / "never-rendered.mp4", (tmp_path / "out.mp4").as_uri())
    assert err.value.reason is Reason.STORAGE_ERROR


def test_reading_what_is_not_there_is_not_found_naming_the_uri(tmp_path: Path) -> None:
    store, uri = FileStore(), (tmp_path / "pt-1" / "missing.mp4").as_uri()
    for call in (
        lambda: store.get_bytes(uri),
        lambda: store.size(uri),
        lambda: store.download(uri, tmp_path / "copy.mp4"),
    ):
        with pytest.raises(ProcessingError) as err:
            call()
        assert err.value.reason is Reason.NOT_FOUND
        assert err.value.message == f"{uri} does not exist."
    assert not store.exists(uri)
    (tmp_path / "pt-1" / "missing.mp4").mkdir(parents=True)  # a folder is not a video
    with pytest.raises(ProcessingError):
        store.download(uri, tmp_path / "copy.mp4")


def test_a_local_download_is_the_file_itself(tmp_path: Path) -> None:
    video = tmp_path / "scan.mp4"
    video.write_bytes(b"mp4")
    dest = tmp_path / "work" / "scan.mp4"
    assert FileStore().download(video.as_uri(), dest) == video
    assert not dest.exists()  # no copy made


def test_list_dirs_lists_subfolders_only_sorted(tmp_path: Path) -> None:
    for name in ("scan-2", "scan-10", "scan-1"):
        (tmp_path / "pt-1" / name).mkdir(parents=True)
    (tmp_path / "pt-1" / "notes.txt").write_text("not a scan")
    store, root = FileStore(), (tmp_path / "pt-1").as_uri()
    assert store.list_dirs(root + "/") == [f"{root}/scan-1", f"{root}/scan-10", f"{root}/scan-2"]
    assert store.list_dirs((tmp_path / "nobody").as_uri()) == []


def test_an_s3_error_without_an_answer_is_a_storage_error_naming_its_cause() -> None:
    wrapped = RuntimeError("boto3 gave up")
    wrapped.__cause__ = EndpointConnectionError(endpoint_url="http://127.0.0.1:9")
    err = _s3_error("s3://b/k", "get_object", wrapped)
    assert isinstance(err, ProcessingError) and err.reason is Reason.STORAGE_ERROR
    assert (
        err.message == "S3 get_object on s3://b/k failed after retries (EndpointConnectionError)."
    )
    answer = ClientError(
        {
            "Error": {"Code": "SlowDown"},
            "ResponseMetadata": {"HTTPStatusCode": 503, "RetryAttempts": 8},
        },
        "GetObject",
    )
    err = _s3_error("s3://b/k", "get_object", answer)
    assert err.reason is Reason.STORAGE_ERROR
    assert (
        err.message == "S3 answered SlowDown (HTTP 503) to get_object on s3://b/k after 9 attempts."
    )


# -- the S3 store against moto -------------------------------------------------------------


@pytest.fixture
def bucket(s3_endpoint: str) -> str:
    name = f"storage-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


@pytest.mark.integration
def test_s3_put_get_and_content_types(bucket: str, s3_endpoint: str, tmp_path: Path) -> None:
    store, root = S3Store(), f"s3://{bucket}/results/pt-1/scan 1"
    video = tmp_path / "summary.mp4"
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42" * 100)
    assert store.put_bytes(f"{root}/views.json", b"[]", "application/json").endswith("views.json")
    store.upload(video, f"{root}/summary.mp4", "video/mp4")
    store.put_bytes(f"{root}/raw.bin", b"raw")
    assert store.get_bytes(f"{root}/views.json") == b"[]"
    assert store.size(f"{root}/summary.mp4") == video.stat().st_size
    assert store.download(f"{root}/summary.mp4", tmp_path / "a" / "b.mp4").read_bytes() == (
        video.read_bytes()
    )
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)

    def content_type(name: str) -> str:
        return str(s3.head_object(Bucket=bucket, Key=f"results/pt-1/scan 1/{name}")["ContentType"])

    assert content_type("views.json") == "application/json"
    assert content_type("summary.mp4") == "video/mp4"
    assert content_type("raw.bin") not in ("application/json", "video/mp4")


@pytest.mark.integration
def test_s3_missing_objects_and_buckets_are_not_found_when_read(bucket: str) -> None:
    store = S3Store()
    missing_key = f"s3://{bucket}/patients/pt-1/scans/none.mp4"
    missing_bucket = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/patients/pt-1/x.mp4"
    for uri in (missing_key, missing_bucket):
        for call in (lambda u=uri: store.get_bytes(u), lambda u=uri: store.size(u)):
            with pytest.raises(ProcessingError) as err:
                call()
            assert err.value.reason is Reason.NOT_FOUND
            assert err.value.message == f"{uri} does not exist."
        assert store.exists(uri) is False


@pytest.mark.integration
def test_s3_writing_into_a_missing_bucket_is_ours(bucket: str) -> None:
    uri = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/results/x.json"
    with pytest.raises(ProcessingError) as err:
        S3Store().put_bytes(uri, b"{}")
    assert err.value.reason is Reason.STORAGE_ERROR
    assert "NoSuchBucket (HTTP 404) to put_object on " + uri in err.value.message


@pytest.mark.integration
def test_s3_list_dirs_returns_the_prefixes_one_level_down(bucket: str) -> None:
    store = S3Store()
    for key in ("pt-1/scan-2/manifest.json", "pt-1/scan-1/a/b.jpg", "pt-1/top.json", "pt-2/s/x"):
        store.put_bytes(f"s3://{bucket}/{key}", b"x")
    expected = [f"s3://{bucket}/pt-1/scan-1", f"s3://{bucket}/pt-1/scan-2"]
    assert store.list_dirs(f"s3://{bucket}/pt-1") == expected
    assert store.list_dirs(f"s3://{bucket}/pt-1/") == expected
    assert store.list_dirs(f"s3://{bucket}/pt-9") == []


@pytest.mark.integration
def test_s3_list_dirs_follows_pages_past_a_thousand(bucket: str) -> None:
    store = S3Store()
    names = [f"scan-{i:04d}" for i in range(1005)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: store.put_bytes(f"s3://{bucket}/pt-1/{n}/m.json", b"{}"), names))
    listed = store.list_dirs(f"s3://{bucket}/pt-1")
    assert listed == [f"s3://{bucket}/pt-1/{n}" for n in names]
