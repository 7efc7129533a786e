"""Burst: N scans uploaded within a few seconds, each submitted by the Lambda trigger to a
self-hosted Prefect server with a process-pool worker; every one must end exactly once.

    python bench/burst.py [-n 500] [--within 10] [--database postgres|sqlite]
                          [--messaging redis --replicas N [--compare]]
                          [--mix-bad 0.1] [--redeliver 0.05] [--lambda-concurrency 20]
                          [--pool-concurrency 2] [--cancel-after S] [--auth] [--json out.json]

All of it real and on loopback, in a temporary home on free ports:

- moto's S3 server holding the uploads (a short synthetic scan per key);
- a stack brought up by ``scanflow up`` (Prefect server on SQLite, or on a PostgreSQL database
  of its own that is dropped at the end; the ``process`` pool, the ``local`` deployment and a
  worker), optionally with basic auth on;
- the Lambda handler (``deployments/trigger/scanflow_trigger``) called in-process with S3
  ``ObjectCreated`` events, from as many threads as the function's reserved concurrency, the
  uploads spread evenly over ``--within`` seconds. Some events are delivered twice (S3
  delivers at least once); an invocation that raises is invoked again twice, as Lambda
  retries an asynchronous event, and then counts as dead-lettered.

``--mix-bad F`` makes a fraction F of the uploads bad, in turn: random bytes named .mp4 and
a 2 s scan (both end as Failed runs with a patient reason code: ``rejected``), a key with no
object behind it (``[not_found]``, rejected), and an empty upload that the trigger itself
refuses (``refused``: no run).

The report: accepted (runs created), refused, dead-lettered, completed, rejected, failed,
crashed, cancelled, lost (accepted but never final), duplicates (a scan with more than one run,
a run that went Running more than once, or a manifest that names another run), 503-style
retries the trigger made, time to submit and to drain, and the peak resident memory of the
server and of the worker (its flow-run processes included) sampled every 0.5 s.

And the API's answer times under the burst: each create-run call the trigger made (retries
included, as the function waits for them), and a probe that reads the deployment (a
database read, on a new connection as a Lambda's) every 0.2 s while the uploads arrive and
while the runs drain, as p50/p95/max.

``--messaging redis --replicas N`` runs the server at scale (``scanflow server start
--messaging redis --replicas N``: N API replicas on one port, Prefect's services in a
process of their own, Redis between them); ``--compare`` first runs the same burst on the
single-process server on the same database, and prints both. ``--cancel-after S`` bounds
the drain: S seconds after the last upload is answered, the pool's queues are paused and the
runs still waiting in them are cancelled; the drain covers the runs started by then (each
must still end once; the runs per minute count those).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import random
import re
import signal
import statistics
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import httpx

from scanflow.local.loopback import MotoServer
from scanflow.local.sandbox import Sandbox
from scanflow.local.stack import process_tree

ROOT = Path(__file__).resolve().parents[2]
TRIGGER_DIR = ROOT / "deployments" / "trigger"
BUCKET = "scanflow-burst"
DEPLOYMENT = "process-scan/local"
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
OPEN = ["SCHEDULED", "PENDING", "RUNNING", "PAUSED", "CANCELLING"]
BAD_KINDS = ("unreadable", "too_short", "missing", "empty")
# Invocations in flight: the trigger's concurrency for PostgreSQL (or Prefect Cloud);
# SQLite's single writer accepts a burst fastest from two (docs/faults.md, "Bursts").
DEFAULT_LAMBDA_CONCURRENCY = {"postgres": 20, "sqlite": 2}


# -- the scans ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Upload:
    """One object put into the uploads bucket, and what its scan should end as."""

    index: int
    kind: str  # "good" or one of BAD_KINDS
    key: str
    size: int
    etag: str

    @property
    def scan_id(self) -> str:
        return f"burst-{self.index:04d}"

    @property
    def patient_id(self) -> str:
        return f"p-{self.index:04d}"

    @property
    def expected(self) -> str:
        if self.kind == "good":
            return "completed"
        if self.kind == "missing":  # not_found: the integration's, not the patient's
            return "failed"
        return "refused" if self.kind == "empty" else "rejected"

    def event(self) -> dict[str, Any]:
        """The S3 notification Lambda receives for this upload (one record)."""
        return {
            "Records": [
                {
                    "eventVersion": "2.1",
                    "eventSource": "aws:s3",
                    "awsRegion": "us-east-1",
                    "eventTime": "2025-05-01T10:00:00.000Z",
                    "eventName": "ObjectCreated:Put",
                    "s3": {
                        "s3SchemaVersion": "1.0",
                        "bucket": {"name": BUCKET, "arn": f"arn:aws:s3:::{BUCKET}"},
                        "object": {
                            "key": quote_plus(self.key, safe="/"),
                            "size": self.size,
                            "eTag": self.etag,
                        },
                    },
                }
            ]
        }


def render_media(folder: Path, seconds: float, width: int, height: int) -> dict[str, bytes]:
    """The bytes of each kind of upload: a short good scan and the bad ones."""
    from cv.synthetic import ScanSpec, render_scan

    folder.mkdir(parents=True, exist_ok=True)
    good, short = folder / "good.mp4", folder / "short.mp4"
    render_scan(good, ScanSpec(width=width, height=height, fps=10, duration_s=seconds, seed=5))
    render_scan(short, ScanSpec(width=width, height=height, fps=10, duration_s=2.0, seed=6))
    return {
        "good": good.read_bytes(),
        "too_short": short.read_bytes(),
        "unreadable": random.Random(7).randbytes(40_000),
        "empty": b"",
    }


def plan_uploads(n: int, mix_bad: float) -> list[str]:
    """The kind of each upload: bad ones spread evenly through the burst."""
    kinds = ["good"] * n
    bad = round(n * mix_bad)
    for j in range(bad):
        kinds[int((j + 0.5) * n / bad)] = BAD_KINDS[j % len(BAD_KINDS)]
    return kinds


def s3_client(s3_url: str) -> Any:
    """A client of the uploads bucket on moto's server (created on first use)."""
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=s3_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
        s3.create_bucket(Bucket=BUCKET)
    return s3


def put_uploads(s3_url: str, kinds: list[str], media: dict[str, bytes]) -> list[Upload]:
    s3 = s3_client(s3_url)
    uploads = []
    for i, kind in enumerate(kinds):
        key = f"patients/p-{i:04d}/scans/burst-{i:04d}.mp4"
        if kind == "missing":  # an event for an object that is gone by the time it is read
            uploads.append(Upload(i, kind, key, 50_000, uuid.uuid4().hex))
            continue
        body = media[kind]
        etag = s3.put_object(Bucket=BUCKET, Key=key, Body=body)["ETag"].strip('"')
        uploads.append(Upload(i, kind, key, len(body), etag))
    return uploads


# -- the stack ---------------------------------------------------------------------------


class BurstStack(Sandbox):
    """moto's S3 server and a scanflow stack of their own (scanflow.local.sandbox), in a
    temporary home: the uploads are read from S3, the results written to the home."""

    def __init__(
        self,
        database: str = "sqlite",
        *,
        pool_concurrency: int = 2,
        auth: str | None = None,
        extra_env: dict[str, str] | None = None,
        name: str = "burst",
        messaging: str = "memory",
        replicas: int = 1,
    ) -> None:
        super().__init__(
            name,
            database=database,
            auth=auth,
            messaging=messaging,
            replicas=replicas,
            settings={
                "pool_concurrency": str(pool_concurrency),
                "input_roots": f"s3://{BUCKET}/patients/",
            },
        )
        self.env["PREFECT_SERVER_UI_ENABLED"] = "false"
        self.moto = MotoServer(self.home / "moto.log")
        self.s3_url = self.moto.url
        self.env.update(
            {
                "AWS_ENDPOINT_URL_S3": self.s3_url,
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1",
                **(extra_env or {}),
            }
        )

    def up(self) -> None:
        self.moto.start()
        super().up()

    def down(self, keep_home: bool = False) -> None:
        self.keep_home = self.keep_home or keep_home
        super().down()
        self.moto.stop()

    def trigger_env(self) -> dict[str, str]:
        """The Lambda function's environment, as its template sets it, pointed here."""
        env = {
            "PREFECT_API_URL": self.api_url,
            "SCANFLOW_DEPLOYMENT": DEPLOYMENT,
            "SCANFLOW_ALLOWED_BUCKETS": BUCKET,
            "SCANFLOW_ALLOWED_PREFIXES": "patients/",
            "SCANFLOW_RUN_TAGS": "scanflow,s3-upload,burst",
        }
        if self.auth:
            env["PREFECT_API_AUTH_STRING"] = self.auth
        return env


# -- the trigger, invoked as Lambda would -------------------------------------------------


class _Context:
    """The Lambda context: only its clock is read (the template's timeout is 60 s)."""

    def __init__(self, seconds: float = 60.0) -> None:
        self._end = time.monotonic() + seconds

    def get_remaining_time_in_millis(self) -> int:
        return int((self._end - time.monotonic()) * 1000)


@dataclass
class Invocation:
    upload: Upload
    attempts: int = 0
    runs: list[dict[str, Any]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    answered_at: float | None = None


@dataclass
class Submission:
    invocations: list[Invocation]
    retries: int  # requests the trigger sent again (503, 429, dropped connections)
    started: float
    finished: float
    create_run_s: list[float] = field(default_factory=list)  # each create-run call's time


def _timed_api(api_class: type[Any]) -> type[Any]:
    """The trigger's Prefect client, timing each create-run call (retries included)."""

    class TimedPrefectAPI(api_class):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.create_run_s: list[float] = []

        def create_flow_run(self, *args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return super().create_flow_run(*args, **kwargs)
            finally:
                self.create_run_s.append(time.perf_counter() - started)

    return TimedPrefectAPI


class Probe(threading.Thread):
    """Reads the deployment (a database read) on a new connection every ``every_s``: the
    API's answer time as a client that arrives during the burst sees it."""

    def __init__(self, stack: BurstStack, every_s: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.url = f"{stack.api_url}/deployments/name/{DEPLOYMENT}"
        self.auth = tuple(stack.auth.split(":", 1)) if stack.auth else None
        self.every_s = every_s
        self.stop_event = threading.Event()
        self.samples: list[tuple[float, float, bool]] = []  # (when, seconds, answered 200)

    def run(self) -> None:
        while not self.stop_event.is_set():
            started = time.monotonic()
            try:
                ok = httpx.get(self.url, auth=self.auth, timeout=30).status_code == 200  # type: ignore[arg-type]
            except httpx.HTTPError:
                ok = False
            self.samples.append((started, time.monotonic() - started, ok))
            self.stop_event.wait(max(0.0, self.every_s - (time.monotonic() - started)))

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=35)

    def between(self, start: float, end: float) -> list[tuple[float, bool]]:
        return [(s, ok) for when, s, ok in self.samples if start <= when < end]


@dataclass(frozen=True)
class Latency:
    """Answer times of one kind of call: how many, p50, p95 and max (seconds), errors."""

    n: int = 0
    p50: float = 0.0
    p95: float = 0.0
    max: float = 0.0
    errors: int = 0

    @classmethod
    def of(cls, seconds: list[float], errors: int = 0) -> Latency:
        if not seconds:
            return cls(errors=errors)
        ordered = sorted(seconds)
        p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
        return cls(len(ordered), statistics.median(ordered), p95, ordered[-1], errors)

    def line(self) -> str:
        if not self.n:
            return "no calls"
        errors = f", {self.errors} errors" if self.errors else ""
        return (
            f"p50 {1000 * self.p50:.0f} ms, p95 {1000 * self.p95:.0f} ms, "
            f"max {1000 * self.max:.0f} ms ({self.n} calls{errors})"
        )


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def submit_burst(
    stack: BurstStack,
    uploads: list[Upload],
    *,
    within_s: float,
    concurrency: int,
    redeliver: float,
    lambda_retries: int = 2,
    seed: int = 0,
) -> Submission:
    """Invoke the trigger once per upload (and again for redelivered ones), spread evenly
    over ``within_s`` seconds, at most ``concurrency`` invocations at once."""
    from deployments.trigger.scanflow_trigger import handler as trigger
    from deployments.trigger.scanflow_trigger.config import TriggerConfig
    from deployments.trigger.scanflow_trigger.prefect_api import PrefectAPI
    from deployments.trigger.scanflow_trigger.transport import RetryPolicy

    rng = random.Random(seed)
    deliveries = [(i * within_s / max(len(uploads), 1), u) for i, u in enumerate(uploads)]
    deliveries += [(rng.uniform(0, within_s), u) for u in uploads if rng.random() < redeliver]
    deliveries.sort(key=lambda d: d[0])
    lock = threading.Lock()
    retries = 0

    def counting_sleep(seconds: float) -> None:
        nonlocal retries
        with lock:
            retries += 1
        time.sleep(seconds)

    invocations: list[Invocation] = []

    def invoke(upload: Upload) -> None:
        record = Invocation(upload)
        with lock:
            invocations.append(record)
        for attempt in range(1 + lambda_retries):
            record.attempts = attempt + 1
            try:
                out = trigger.handler(upload.event(), _Context())
            except Exception as exc:  # noqa: BLE001 - Lambda retries the event
                record.errors.append(f"{type(exc).__name__}: {exc}")
                time.sleep(1.0 + attempt)
                continue
            record.runs = out["runs"]
            record.refused = [r["reason"] for r in out["rejected"]]
            break
        record.answered_at = time.monotonic()

    with _environment(stack.trigger_env()):
        config = TriggerConfig.from_env(os.environ)
        # a fresh execution environment whose client counts the requests it retries
        trigger._APIS.clear()
        api = _timed_api(PrefectAPI)(config, policy=RetryPolicy(sleep=counting_sleep))
        trigger._APIS[config] = api
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            for offset, upload in deliveries:
                delay = started + offset - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                pool.submit(invoke, upload)
        finished = max((r.answered_at or 0.0 for r in invocations), default=started)
        trigger._APIS.clear()
    return Submission(invocations, retries, started, finished, list(api.create_run_s))


# -- watching: memory and progress -------------------------------------------------------


def _pss_kb(pid: int) -> int:
    """The process's proportional set size (its resident pages, each shared one divided
    among its sharers): summed over processes, shared pages count once."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def descendants(pid: int | None, tree: dict[int, list[int]]) -> list[int]:
    """A process and all its descendants."""
    found, todo = [], [] if pid is None else [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(tree.get(p, []))
    return found


def _is_flow_run(pid: int) -> bool:
    """A flow run's process: Prefect's engine (cold) or the warm server's client."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"prefect.engine" in cmdline or b"scanflow.local.prefork\0run" in cmdline


class Watcher(threading.Thread):
    """Samples the server's and the worker's memory (process trees) every 0.5 s.

    The worker's includes the warm server's tree (scanflow.local.prefork), whose children
    are the flow runs; a process's proportional set size (PSS) is what it adds, its
    copy-on-write pages shared with the warm server counted once in all."""

    def __init__(self, stack: BurstStack) -> None:
        super().__init__(daemon=True)
        self.stack = stack
        self.stop_event = threading.Event()
        self.peaks: dict[str, float] = {
            "server": 0.0,
            "services": 0.0,
            "worker": 0.0,
            "worker_alone": 0.0,
        }
        self.flow_processes_peak = 0

    def run(self) -> None:
        server, worker = self.stack.pid("server"), self.stack.pid("worker")
        services = self.stack.pid("services")  # at scale only
        warm = self.stack.pid("prefork")
        while not self.stop_event.wait(0.5):
            tree = process_tree()
            under_worker = descendants(worker, tree) + descendants(warm, tree)
            sample = {
                "server": sum(map(_pss_kb, descendants(server, tree))) / 1024,
                "services": sum(map(_pss_kb, descendants(services, tree))) / 1024,
                "worker": sum(map(_pss_kb, under_worker)) / 1024,
                "worker_alone": _pss_kb(worker or 0) / 1024,
            }
            for k, v in sample.items():
                self.peaks[k] = max(self.peaks[k], v)
            flow_runs = sum(1 for p in descendants(worker, tree) if _is_flow_run(p))
            self.flow_processes_peak = max(self.flow_processes_peak, flow_runs)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=5)


def open_runs(client: httpx.Client) -> int:
    body = {"flow_runs": {"state": {"type": {"any_": OPEN}}}}
    return int(client.post("/flow_runs/count", json=body).raise_for_status().json())


def wait_for_drain(
    client: httpx.Client, stall_s: float, timeout_s: float, progress: bool = False
) -> bool:
    """Until no run is open; gives up when nothing finished for ``stall_s``."""
    deadline = time.monotonic() + timeout_s
    last, last_change = -1, time.monotonic()
    while time.monotonic() < deadline:
        try:
            left = open_runs(client)
        except httpx.HTTPError:
            left = last  # the server is busy: ask again
        if left == 0:
            return True
        if left != last:
            last, last_change = left, time.monotonic()
            if progress:
                print(f"  {left} runs open", flush=True)
        elif time.monotonic() - last_change > stall_s:
            return False
        time.sleep(2.0)
    return False


def cancel_waiting(client: httpx.Client, pool: str = "process") -> set[str]:
    """Stop the burst where it stands: pause the pool's queues, so the worker takes no
    more runs, then cancel the burst's runs still waiting (Scheduled); their ids. Cancelling
    while the worker still polls would race it: a run it took meanwhile (Pending) would be
    cancelled and still start."""
    queues = client.post(f"/work_pools/{pool}/queues/filter", json={}).raise_for_status()
    for queue in queues.json():
        path = f"/work_pools/{pool}/queues/{quote(queue['name'], safe='')}"
        client.patch(path, json={"is_paused": True}).raise_for_status()
    time.sleep(5.0)  # a poll already under way (1 s) and the worker's prefetch settle
    body = {
        "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}, "tags": {"all_": ["burst"]}},
        "limit": 200,
    }
    state = {"type": "CANCELLED", "name": "Cancelled", "message": "burst: --cancel-after"}
    asked: set[str] = set()
    cancelled: set[str] = set()
    while True:
        page = client.post("/flow_runs/filter", json=body).raise_for_status().json()
        page = [r for r in page if r["id"] not in asked]
        if not page:
            return cancelled
        for run in page:
            asked.add(run["id"])
            out = client.post(f"/flow_runs/{run['id']}/set_state", json={"state": state})
            if out.status_code < 300 and out.json().get("status") == "ACCEPT":
                cancelled.add(run["id"])


def read_runs(client: httpx.Client) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    while True:
        page = (
            client.post(
                "/flow_runs/filter",
                json={"offset": len(runs), "limit": 200, "sort": "EXPECTED_START_TIME_ASC"},
            )
            .raise_for_status()
            .json()
        )
        runs.extend(r for r in page)
        if len(page) < 200:
            return [r for r in runs if "burst" in (r.get("tags") or [])]


def last_logs(client: httpx.Client, run_id: str, n: int = 4) -> list[str]:
    """The last lines a run logged (a crashed run's flow process, before it died)."""
    body = {"logs": {"flow_run_id": {"any_": [run_id]}}, "sort": "TIMESTAMP_DESC", "limit": n}
    try:
        logs = client.post("/logs/filter", json=body).raise_for_status().json()
    except httpx.HTTPError as exc:
        return [f"(logs unavailable: {exc})"]
    return [f"{log['level']} {log['message'][:300]}" for log in reversed(logs)]


def running_count(client: httpx.Client, run_id: str) -> int:
    states = client.get("/flow_run_states/", params={"flow_run_id": run_id}).raise_for_status()
    return sum(1 for s in states.json() if s["type"] == "RUNNING")


# -- the report --------------------------------------------------------------------------


@dataclass
class BurstReport:
    database: str
    scans: int
    within_s: float
    lambda_concurrency: int
    deliveries: int
    submit_window_s: float
    accepted: int
    found_again: int  # deliveries answered with the run an earlier one created
    refused: int
    dead_lettered: int
    completed: int
    rejected: int
    failed: int
    crashed: int
    cancelled: int
    lost: int
    duplicates: int
    unexpected: int
    trigger_retries: int
    lambda_retries: int
    drain_s: float
    runs_per_minute: float
    queue_wait_p50_s: float
    queue_wait_p95_s: float
    queue_wait_max_s: float
    run_p50_s: float
    run_p95_s: float
    server_peak_mb: float
    worker_peak_mb: float
    worker_alone_peak_mb: float
    flow_processes_peak: int
    messaging: str = "memory"
    replicas: int = 1
    create_run: Latency = field(default_factory=Latency)
    probe_submit: Latency = field(default_factory=Latency)
    probe_drain: Latency = field(default_factory=Latency)
    services_peak_mb: float = 0.0
    cancelled_waiting: int = 0  # still queued when --cancel-after stopped the burst
    notes: list[str] = field(default_factory=list)

    @property
    def server(self) -> str:
        if self.messaging == "redis":
            return f"{self.database}, {self.replicas} API replica(s) + services process, Redis"
        return f"{self.database}, one process"

    def lines(self) -> list[str]:
        services = f", services {self.services_peak_mb:.0f} MB" if self.services_peak_mb else ""
        cancelled = (
            f" ({self.cancelled_waiting} of them waiting, by --cancel-after)"
            if self.cancelled_waiting
            else ""
        )
        return [
            f"burst on {self.server}: {self.scans} uploads in {self.within_s:g} s, "
            f"{self.deliveries} deliveries, {self.lambda_concurrency} invocations in flight, "
            f"all answered within {self.submit_window_s:.1f} s",
            f"  accepted {self.accepted} (redeliveries found their run: {self.found_again})  "
            f"refused {self.refused}  dead-lettered {self.dead_lettered}",
            f"  completed {self.completed}  rejected {self.rejected}  failed {self.failed}  "
            f"crashed {self.crashed}  cancelled {self.cancelled}{cancelled}  lost {self.lost}",
            f"  duplicates {self.duplicates}  unexpected outcomes {self.unexpected}",
            f"  trigger retries (503/429/dropped) {self.trigger_retries}  "
            f"Lambda re-invocations {self.lambda_retries}",
            f"  drained in {self.drain_s:.1f} s ({self.runs_per_minute:.1f} runs/min); "
            f"queue wait p50 {self.queue_wait_p50_s:.1f} s, p95 {self.queue_wait_p95_s:.1f} s, "
            f"max {self.queue_wait_max_s:.1f} s; "
            f"run p50 {self.run_p50_s:.1f} s, p95 {self.run_p95_s:.1f} s",
            f"  API answers: create-run {self.create_run.line()}",
            f"    probe (deployment read, every 0.2 s) while submitting: "
            f"{self.probe_submit.line()}",
            f"    probe while draining: {self.probe_drain.line()}",
            f"  peak memory (PSS): server {self.server_peak_mb:.0f} MB{services}, "
            f"worker with its flow runs {self.worker_peak_mb:.0f} MB "
            f"(worker alone {self.worker_alone_peak_mb:.0f} MB, "
            f"at most {self.flow_processes_peak} flow runs at once)",
            *(f"  note: {n}" for n in self.notes),
        ]


def _seconds(a: str | None, b: str | None) -> float | None:
    from datetime import datetime

    if not a or not b:
        return None
    return (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds()


def analyse(
    stack: BurstStack,
    uploads: list[Upload],
    submission: Submission,
    watcher: Watcher,
    drained_at: float,
    within_s: float,
    lambda_concurrency: int,
    probe: Probe | None = None,
    cancelled_ids: frozenset[str] = frozenset(),
) -> BurstReport:
    from cv.errors import Reason

    by_scan = {u.scan_id: u for u in uploads}
    accepted_ids = {r["flow_run_id"] for inv in submission.invocations for r in inv.runs}
    with stack.http() as client:
        # this burst's runs only (a stack may hold others, e.g. from a test before it)
        runs = [r for r in read_runs(client) if r["parameters"].get("scan_id") in by_scan]
        runs_by_scan: dict[str, list[dict[str, Any]]] = {}
        for run in runs:
            runs_by_scan.setdefault(run["parameters"].get("scan_id", "?"), []).append(run)
        reexecuted = [r["id"] for r in runs if running_count(client, r["id"]) > 1]
        crashed_logs = {
            r["parameters"].get("scan_id", "?"): last_logs(client, r["id"])
            for r in runs
            if (r.get("state") or {}).get("type") == "CRASHED"
        }
    outcome: Counter[str] = Counter()
    notes: list[str] = []
    unexpected = 0
    results = Path(stack.home / "results")
    bad_manifests = 0
    for run in runs:
        state = run.get("state") or {}
        kind = state.get("type", "?")
        if kind == "FAILED":
            # "[too_short] ..." (a Rejected state), "... ProcessingError: [not_found] ..."
            found = re.search(r"\[([a-z_]+)\]", state.get("message") or "")
            code = found.group(1) if found else ""
            is_rejected = code in {r.value for r in Reason} and Reason(code).is_patient_fixable
            verdict = "rejected" if is_rejected else "failed"
        elif kind in FINAL:
            verdict = kind.lower()
        else:
            verdict = "lost"
        outcome[verdict] += 1
        upload = by_scan.get(run["parameters"].get("scan_id", ""))
        if verdict == "cancelled" and run["id"] in cancelled_ids:
            outcome["cancelled_waiting"] += 1  # the bench's doing, before it started
            continue
        if upload is not None and verdict != upload.expected:
            unexpected += 1
            if len(notes) < 5:
                notes.append(f"{upload.scan_id} ({upload.kind}): {kind} {state.get('message')}")
        if verdict == "completed" and upload is not None:
            manifest = results / upload.patient_id / upload.scan_id / "manifest.json"
            try:
                if json.loads(manifest.read_text())["flow_run_id"] != run["id"]:
                    bad_manifests += 1
            except (OSError, ValueError, KeyError):
                bad_manifests += 1
                notes.append(f"{upload.scan_id}: completed without its manifest")
    for scan_id, lines in list(crashed_logs.items())[:3]:
        notes.extend(f"{scan_id} log: {line}" for line in lines)
    refused = [inv for inv in submission.invocations if inv.refused]
    dead = {inv.upload.scan_id for inv in submission.invocations if not inv.runs and inv.errors}
    dead -= {inv.upload.scan_id for inv in submission.invocations if inv.runs}
    for inv in submission.invocations:
        if inv.refused and inv.upload.expected != "refused":
            unexpected += 1
    duplicate_runs = sum(len(v) - 1 for v in runs_by_scan.values() if len(v) > 1)
    if missing := accepted_ids - {r["id"] for r in runs}:
        notes.append(f"{len(missing)} accepted runs are missing from the server")
    waits = [w for r in runs if (w := _seconds(r.get("created"), r.get("start_time")))]
    spans = [s for r in runs if (s := _seconds(r.get("start_time"), r.get("end_time")))]
    ends = [r.get("end_time") for r in runs if r.get("end_time")]
    drain = drained_at - submission.started
    if ends and runs:
        first = min(r["created"] for r in runs)
        drain = _seconds(first, max(ends)) or drain  # type: ignore[type-var]
    wait, span = Latency.of(waits), Latency.of(spans)
    return BurstReport(
        database=stack.database,
        scans=len(uploads),
        within_s=within_s,
        lambda_concurrency=lambda_concurrency,
        deliveries=len(submission.invocations),
        submit_window_s=submission.finished - submission.started,
        accepted=len(accepted_ids),
        found_again=sum(1 for inv in submission.invocations for r in inv.runs if not r["created"]),
        refused=len({inv.upload.scan_id for inv in refused}),
        dead_lettered=len(dead),
        completed=outcome["completed"],
        rejected=outcome["rejected"],
        failed=outcome["failed"],
        crashed=outcome["crashed"],
        cancelled=outcome["cancelled"],
        lost=outcome["lost"] + len(missing),
        duplicates=duplicate_runs + len(reexecuted) + bad_manifests,
        unexpected=unexpected,
        trigger_retries=submission.retries,
        lambda_retries=sum(max(0, inv.attempts - 1) for inv in submission.invocations),
        drain_s=drain,
        runs_per_minute=(
            60 * (len(runs) - outcome["cancelled_waiting"]) / drain if drain > 0 else 0.0
        ),
        queue_wait_p50_s=wait.p50,
        queue_wait_p95_s=wait.p95,
        queue_wait_max_s=wait.max,
        run_p50_s=span.p50,
        run_p95_s=span.p95,
        server_peak_mb=watcher.peaks["server"],
        worker_peak_mb=watcher.peaks["worker"],
        worker_alone_peak_mb=watcher.peaks["worker_alone"],
        flow_processes_peak=watcher.flow_processes_peak,
        messaging=stack.messaging,
        replicas=stack.replicas,
        create_run=Latency.of(submission.create_run_s),
        probe_submit=_probe_latency(probe, submission.started, submission.finished),
        probe_drain=_probe_latency(probe, submission.finished, drained_at),
        services_peak_mb=watcher.peaks["services"],
        cancelled_waiting=outcome["cancelled_waiting"],
        notes=notes,
    )


def _probe_latency(probe: Probe | None, start: float, end: float) -> Latency:
    if probe is None:
        return Latency()
    samples = probe.between(start, end)
    return Latency.of([s for s, ok in samples if ok], errors=sum(1 for _, ok in samples if not ok))


def run_burst(
    stack: BurstStack,
    n: int,
    *,
    within_s: float = 10.0,
    mix_bad: float = 0.0,
    redeliver: float = 0.05,
    lambda_concurrency: int = 20,
    seconds: float = 3.2,
    width: int = 160,
    height: int = 120,
    stall_s: float = 600.0,
    timeout_s: float = 6 * 3600,
    progress: bool = False,
    cancel_after_s: float | None = None,
) -> BurstReport:
    """Upload, submit, drain and judge one burst against a stack that is up."""
    media = render_media(stack.home / "media", seconds, width, height)
    uploads = put_uploads(stack.s3_url, plan_uploads(n, mix_bad), media)
    watcher = Watcher(stack)
    watcher.start()
    probe = Probe(stack)
    probe.start()
    cancelled: set[str] = set()
    try:
        submission = submit_burst(
            stack, uploads, within_s=within_s, concurrency=lambda_concurrency, redeliver=redeliver
        )
        if progress:
            print(
                f"submitted {len(submission.invocations)} deliveries in "
                f"{submission.finished - submission.started:.1f} s "
                f"({submission.retries} retried requests)",
                flush=True,
            )
        with stack.http() as client:
            if cancel_after_s is not None:
                time.sleep(max(0.0, submission.finished + cancel_after_s - time.monotonic()))
                cancelled = cancel_waiting(client)
                if progress:
                    print(f"cancelled {len(cancelled)} runs still waiting", flush=True)
            wait_for_drain(client, stall_s, timeout_s, progress)
        drained_at = time.monotonic()
    finally:
        watcher.stop()
        probe.stop()
    return analyse(
        stack,
        uploads,
        submission,
        watcher,
        drained_at,
        within_s,
        lambda_concurrency,
        probe=probe,
        cancelled_ids=frozenset(cancelled),
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("-n", "--scans", type=int, default=500)
    p.add_argument("--within", type=float, default=10.0, help="seconds the uploads span")
    p.add_argument("--database", choices=["postgres", "sqlite"], default="postgres")
    p.add_argument(
        "--messaging",
        choices=["memory", "redis"],
        default="memory",
        help="redis: the server at scale (PostgreSQL; API replicas and a services process)",
    )
    p.add_argument("--replicas", type=int, default=1, help="API replicas, with --messaging redis")
    p.add_argument(
        "--compare",
        action="store_true",
        help="first the same burst on the single-process server (same database), then this",
    )
    p.add_argument("--mix-bad", type=float, default=0.0, help="fraction of bad uploads")
    p.add_argument("--redeliver", type=float, default=0.05, help="fraction delivered twice")
    p.add_argument(
        "--lambda-concurrency",
        type=int,
        help="invocations in flight (the function's reserved concurrency); default 20 on "
        "PostgreSQL (the template's), 2 on SQLite (what its one writer sustains best)",
    )
    p.add_argument("--pool-concurrency", type=int, default=2)
    p.add_argument("--seconds", type=float, default=3.2, help="length of each scan")
    p.add_argument("--auth", action="store_true", help="basic auth on the server")
    p.add_argument("--stall", type=float, default=600, help="give up after no progress for")
    p.add_argument(
        "--cancel-after",
        type=float,
        default=None,
        metavar="S",
        help="S seconds after the uploads are answered, cancel the runs still queued "
        "(bounds the drain; the submission is measured in full)",
    )
    p.add_argument("--json", type=Path, help="also write the report(s) here")
    p.add_argument("--keep", action="store_true", help="keep the temporary home")
    args = p.parse_args(argv)
    if args.messaging == "redis" and args.database != "postgres":
        p.error("--messaging redis needs --database postgres")
    if args.replicas > 1 and args.messaging != "redis":
        p.error("--replicas above 1 needs --messaging redis")
    if args.compare and args.messaging != "redis":
        p.error("--compare compares the server at scale (--messaging redis) with one process")

    # stopped with SIGTERM (kill, timeout): unwind, so the stack and its database go too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    layouts = [("memory", 1)] if args.compare else []
    layouts.append((args.messaging, args.replicas))
    reports = []
    ok = True
    for messaging, replicas in layouts:
        report, passed = _one_burst(args, messaging, replicas)
        reports.append(report)
        ok = ok and passed
    if len(reports) > 1:
        print("\nAPI answer times under the burst (the same burst, one session):")
        for report in reports:
            print(f"  {report.server}:")
            print(f"    create-run calls        {report.create_run.line()}")
            print(f"    probe while submitting  {report.probe_submit.line()}")
            print(f"    probe while draining    {report.probe_drain.line()}")
    if args.json:
        body = [asdict(r) for r in reports]
        args.json.write_text(json.dumps(body if len(body) > 1 else body[0], indent=2))
    return 0 if ok else 1


def _one_burst(args: argparse.Namespace, messaging: str, replicas: int) -> tuple[BurstReport, bool]:
    auth = None
    if args.auth:
        auth = "burst:" + base64.urlsafe_b64encode(os.urandom(12)).decode()
    stack = BurstStack(
        args.database,
        pool_concurrency=args.pool_concurrency,
        auth=auth,
        messaging=messaging,
        replicas=replicas,
    )
    stack.keep_home = args.keep
    layout = f"{args.database}, messaging {messaging}, {replicas} replica(s)"
    print(f"starting the stack ({layout}) in {stack.home} ...", flush=True)
    started = time.monotonic()
    with stack:
        print(f"stack up in {time.monotonic() - started:.1f} s", flush=True)
        report = run_burst(
            stack,
            args.scans,
            within_s=args.within,
            mix_bad=args.mix_bad,
            redeliver=args.redeliver,
            lambda_concurrency=args.lambda_concurrency or DEFAULT_LAMBDA_CONCURRENCY[args.database],
            seconds=args.seconds,
            stall_s=args.stall,
            progress=True,
            cancel_after_s=args.cancel_after,
        )
        ok = report.lost == 0 and report.duplicates == 0 and report.crashed == 0
        if not ok:
            stack.keep_home = True  # the server's database and every log, to find out why
    print("\n".join(report.lines()))
    if not ok:
        print(f"kept for inspection: {stack.home} (logs/, prefect/prefect.db on SQLite)")
    return report, ok and report.dead_lettered == 0 and report.unexpected == 0


if __name__ == "__main__":
    sys.exit(main())
