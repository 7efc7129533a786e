"""The results store against real faults, in this process: the project's own boto3 client
(its retry configuration) through a fault-injecting proxy in front of moto's S3 server, the
file store on a disk that is full, and the notify-outcome retry schedule.

The same faults, with real worker processes and notifications: test_fault_runs.py.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import pytest

from cv.errors import ProcessingError, Reason, RejectedScan, ScanError
from scanflow import storage
from scanflow.storage import FileStore, S3Store
from tests.support.s3_proxy import (
    INTERNAL_ERROR,
    S3_FAULTS,
    SLOW_DOWN,
    UNAVAILABLE,
    Answer,
    Fault,
    FirstAttemptFails,
    Outage,
    Request,
    Rule,
    S3FaultProxy,
)
from tests.system.faults.harness import small_disk

pytestmark = [pytest.mark.integration]

StartProxy = Callable[..., S3FaultProxy]


@pytest.fixture
def bucket(s3_endpoint: str) -> str:
    name = f"faults-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture
def via_proxy(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[StartProxy]:
    """Start a proxy with some rules and point the store's client (created on first use,
    from AWS_ENDPOINT_URL_S3) at it."""
    proxies: list[S3FaultProxy] = []

    def start(*rules: Rule) -> S3FaultProxy:
        proxy = S3FaultProxy(s3_endpoint, *rules).start()
        proxies.append(proxy)
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)
        storage._s3_client.cache_clear()
        return proxy

    yield start
    storage._s3_client.cache_clear()  # the next client reads the restored environment
    for proxy in proxies:
        proxy.stop()


@pytest.mark.slow
def test_every_s3_call_is_retried_through_500_503_and_slowdown(
    via_proxy: StartProxy, bucket: str, tmp_path: Path
) -> None:
    """The first attempt of every request gets 500 InternalError, 503 SlowDown or 503
    ServiceUnavailable: each store operation still succeeds, by the client's retries."""
    proxy = via_proxy(FirstAttemptFails())
    store, root = S3Store(), f"s3://{bucket}/results/p-1/s-1"
    video = tmp_path / "scan.mp4"
    video.write_bytes(os.urandom(3_000_000))  # upload_file sends "Expect: 100-continue"

    store.put_bytes(f"{root}/views.json", b'{"ok": true}', "application/json")
    store.upload(video, f"{root}/summary.mp4", "video/mp4")
    assert store.size(f"{root}/summary.mp4") == 3_000_000
    assert store.exists(f"{root}/views.json")
    assert store.get_bytes(f"{root}/views.json") == b'{"ok": true}'
    fetched = store.download(f"{root}/summary.mp4", tmp_path / "back.mp4")
    assert fetched.read_bytes() == video.read_bytes()
    assert store.list_dirs(f"s3://{bucket}/results/p-1") == [root]

    by_request: dict[tuple[str, str, str], list[int]] = {}
    for e in proxy.exchanges():
        by_request.setdefault((e.request.method, e.request.path, e.request.query), []).append(
            e.status
        )
    assert {m for m, _, _ in by_request} == {"PUT", "HEAD", "GET"}
    for request, statuses in by_request.items():
        assert statuses[0] >= 500 and statuses[-1] < 300, (request, statuses)
    assert {e.injected for e in proxy.exchanges(lambda e: e.injected is not None)} == {
        f.code for f in S3_FAULTS
    }


@pytest.mark.slow
def test_a_short_outage_is_ridden_out(via_proxy: StartProxy, bucket: str) -> None:
    outage = Outage(starts=lambda r: True, seconds=4.0)
    proxy = via_proxy(outage)
    started = time.monotonic()
    S3Store().put_bytes(f"s3://{bucket}/outage/frame.jpg", b"\xff\xd8" * 100, "image/jpeg")
    assert time.monotonic() - started >= 4.0
    statuses = [e.status for e in proxy.exchanges()]
    assert len(statuses) >= 3 and all(s >= 500 for s in statuses[:-1]) and statuses[-1] == 200


@pytest.mark.parametrize(
    ("fault", "method", "reason", "words"),
    [
        (Fault(400, "InvalidArgument", "bad"), "PUT", Reason.STORAGE_ERROR, "InvalidArgument"),
        (Fault(403, "AccessDenied", "no"), "PUT", Reason.STORAGE_ERROR, "AccessDenied (HTTP 403)"),
        (Fault(404, "NoSuchBucket", "gone"), "PUT", Reason.STORAGE_ERROR, "NoSuchBucket"),
        (Fault(403, "AccessDenied", "no"), "GET", Reason.ACCESS_DENIED, "was denied"),
        (Fault(404, "NoSuchKey", "gone"), "GET", Reason.NOT_FOUND, "does not exist"),
    ],
)
def test_final_answers_map_to_reasons(
    via_proxy: StartProxy,
    bucket: str,
    tmp_path: Path,
    fault: Fault,
    method: str,
    reason: Reason,
    words: str,
) -> None:
    """S3's final answers name a reason: writing results, every failure is ours
    (storage_error), also through upload_file and download_file, which wrap the answer."""
    store, uri = S3Store(), f"s3://{bucket}/final/{method.lower()}.bin"
    video = tmp_path / "v.mp4"
    video.write_bytes(b"v" * 1000)
    if method == "GET":
        store.put_bytes(uri, b"x")  # before the proxy answers for S3
    via_proxy(Answer(fault, lambda r: r.method == method))
    calls: list[Callable[[], object]] = (
        [lambda: store.put_bytes(uri, b"x"), lambda: store.upload(video, uri)]
        if method == "PUT"
        else [lambda: store.get_bytes(uri), lambda: store.download(uri, tmp_path / "d.bin")]
    )
    for call in calls:
        with pytest.raises(ScanError) as caught:
            call()
        assert caught.value.reason is reason, caught.value
        assert words in caught.value.message and uri in caught.value.message
        kind = RejectedScan if reason.is_patient_fixable else ProcessingError
        assert isinstance(caught.value, kind)


def test_a_full_disk_is_a_storage_error_and_leaves_nothing_behind(tmp_path: Path) -> None:
    try:
        disk = small_disk(size_kib=512, free_kib=16)
        mount = disk.__enter__()
    except RuntimeError as exc:
        pytest.skip(f"no way to get a full disk here: {exc}")
    try:
        store, root = FileStore(), (mount / "results" / "p-1" / "s-1").as_uri()
        store.put_bytes(f"{root}/small.json", b"{}")  # room for a little
        big = tmp_path / "summary.mp4"
        big.write_bytes(os.urandom(256 * 1024))
        for call in (
            lambda: store.put_bytes(f"{root}/frame.jpg", os.urandom(128 * 1024)),
            lambda: store.upload(big, f"{root}/summary.mp4"),
        ):
            with pytest.raises(ProcessingError) as caught:
                call()
            assert caught.value.reason is Reason.STORAGE_ERROR
            assert "the results disk is full" in caught.value.message
        names = sorted(p.name for p in (mount / "results" / "p-1" / "s-1").iterdir())
        assert names == ["small.json"]  # no half-written file, no temporary left
        assert store.get_bytes(f"{root}/small.json") == b"{}"
    finally:
        disk.__exit__(None, None, None)
    assert not mount.exists()


def test_platform_retry_schedule_outlasts_long_outages() -> None:
    """notify-outcome keeps trying for hours, and never waits long between tries, so
    delivery resumes soon after the platform comes back."""
    from prefect.utilities.math import lower_clamp_multiple

    from flows.notify_outcome import ATTEMPT, deliver_to_platform

    task = deliver_to_platform
    delays = task.retry_delay_seconds
    assert isinstance(delays, list) and task.retries
    waits = [delays[min(n, len(delays) - 1)] for n in range(task.retries)]
    jitter = task.retry_jitter_factor or 0.0
    shortest = sum(waits) * lower_clamp_multiple(1 + jitter)  # every wait at its minimum
    longest_gap = max(waits) * (1 + jitter) + ATTEMPT.deadline_s
    assert shortest >= 60 * 60, f"gives up after {shortest / 60:.0f} min at the soonest"
    assert longest_gap <= 120, f"up to {longest_gap:.0f} s between tries"
    assert waits[:3] == sorted(waits[:3]) and waits[0] <= 10  # quick at first


def test_outage_rule_windows() -> None:
    """The proxy's own rules (the fault tests lean on them)."""
    outage = Outage(starts=lambda r: r.method == "PUT", seconds=1.0)
    at = time.time()
    assert outage(Request(at, "GET", "/b/k", "")) is None
    assert outage(Request(at, "PUT", "/b/k", "")) is not None
    assert outage(Request(at + 0.5, "GET", "/b/k", "")) is not None
    assert outage(Request(at + 1.5, "GET", "/b/k", "")) is None
    first = FirstAttemptFails(faults=(INTERNAL_ERROR, SLOW_DOWN, UNAVAILABLE))
    assert first(Request(at, "GET", "/b/k", "")) is INTERNAL_ERROR
    assert first(Request(at, "GET", "/b/k", "")) is None
    assert first(Request(at, "GET", "/b/k2", "")) is SLOW_DOWN
