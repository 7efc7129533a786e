"""A local stack of its own: ``scanflow up`` in a temporary home on free ports, driven
through the command line in subprocesses whose environment points at it only, while the
calling process talks to it by explicit URL. The tests that kill workers or fill a pool
(notifications, faults, leaks, bursts) and the burst benchmark each run one, never the
test session's shared stack.

    with Sandbox("faults", settings={"crash_retries": "1"}) as box:
        box.cli("automations", "apply")
        run_id = box.submit("scan-1", video.as_uri())
        box.wait_state(run_id, {"COMPLETED"}, timeout=120)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import asyncpg  # installed with prefect
import httpx
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import FlowFilter, FlowFilterName, LogFilter, LogFilterFlowRunId
from prefect.states import Pending

from scanflow.local import prefork
from scanflow.local.loopback import free_port
from scanflow.settings import REPO_ROOT, Settings

FINAL = frozenset({"COMPLETED", "FAILED", "CRASHED", "CANCELLED"})


class Sandbox:
    """A scanflow stack (server, pools, deployments, workers) in a temporary home.

    ``settings`` are scanflow settings (``crash_retries`` for SCANFLOW_CRASH_RETRIES);
    ``env`` is anything else its processes get (AWS endpoints, credentials). On PostgreSQL
    it gets a database of its own, dropped when it goes down; with ``messaging="redis"``
    (the server at scale: ``replicas`` API processes and a services process) a Redis
    database of its own too (one of 1-15 that is empty; flushed when it goes down), since
    two stacks on one Redis database would take each other's events.
    """

    def __init__(
        self,
        name: str,
        *,
        database: str = "sqlite",
        auth: str | None = None,
        settings: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
        messaging: str = "memory",
        replicas: int = 1,
    ) -> None:
        self.name = name
        self.database = database
        self.messaging = messaging
        self.replicas = replicas
        self.redis_url: str | None = None
        self.auth = auth
        self.home = Path(tempfile.mkdtemp(prefix=f"scanflow-{name}-"))
        self.port = free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self.pg_database = f"scanflow_{name}_{os.getpid()}_{uuid.uuid4().hex[:8]}".replace("-", "_")
        ours = ("PREFECT_", "SCANFLOW_", "AWS_")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
        self.env.update(
            {
                "PREFECT_API_URL": self.api_url,
                "PREFECT_HOME": str(self.home / "prefect"),
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "DO_NOT_TRACK": "1",
                "SCANFLOW_HOME": str(self.home),
                "SCANFLOW_SERVER_PORT": str(self.port),
                "SCANFLOW_WORKER_QUERY_SECONDS": "1",
                "SCANFLOW_RESULTS_URI": (self.home / "results").as_uri(),
                "SCANFLOW_INPUT_ROOTS": Path(tempfile.gettempdir()).resolve().as_uri(),
                "SCANFLOW_DATABASE": database,
                "SCANFLOW_POSTGRES_URL": (
                    f"postgresql+asyncpg://postgres@127.0.0.1:5432/{self.pg_database}"
                ),
            }
        )
        if auth:
            self.env["SCANFLOW_SERVER_AUTH"] = auth
        if messaging == "redis":
            # the Redis the caller's settings name (SCANFLOW_REDIS_URL), another database
            self.redis_url = _free_redis_database(Settings().redis_url)
            self.env.update(
                {
                    "SCANFLOW_MESSAGING": "redis",
                    "SCANFLOW_REDIS_URL": self.redis_url,
                    "SCANFLOW_SERVER_REPLICAS": str(replicas),
                }
            )
        self.env.update({f"SCANFLOW_{k.upper()}": v for k, v in (settings or {}).items()})
        self.env.update(env or {})
        self.keep_home = bool(os.environ.get("SCANFLOW_KEEP_TEST_HOME"))

    # -- lifecycle -----------------------------------------------------------------------
    def cli(
        self, *args: str, timeout: float = 300, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``scanflow ARGS`` against this stack."""
        return subprocess.run(
            [sys.executable, "-m", "scanflow.cli.main", *args],
            cwd=REPO_ROOT,
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def up(self) -> None:
        out = self.cli("up")
        if out.returncode != 0:
            log = self.home / "logs" / "server.log"
            tail = log.read_text(errors="replace")[-3000:] if log.is_file() else ""
            raise RuntimeError(f"scanflow up failed:\n{out.stdout}\n{out.stderr}\n{tail}")

    def down(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError):
            self.cli("down", timeout=120)
        if self.database == "postgres":
            asyncio.run(_drop_database(self.pg_database))
        if self.redis_url is not None:
            _flush_redis_database(self.redis_url)
        if not self.keep_home:
            shutil.rmtree(self.home, ignore_errors=True)

    def __enter__(self) -> Sandbox:
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    # -- talking to it -------------------------------------------------------------------
    def client(self) -> SyncPrefectClient:
        """Prefect's client for this stack's API (basic auth when it has it)."""
        return SyncPrefectClient(self.api_url, auth_string=self.auth)

    def http(self) -> httpx.Client:
        """A plain HTTP client of its REST API."""
        auth = tuple(self.auth.split(":", 1)) if self.auth else None
        return httpx.Client(base_url=self.api_url, auth=auth, timeout=60)  # type: ignore[arg-type]

    def healthy(self) -> bool:
        try:
            return httpx.get(self.api_url + "/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def submit(
        self,
        scan_id: str,
        video_uri: str,
        options: Mapping[str, Any] | None = None,
        *,
        patient_id: str | None = None,
        pending: bool = False,
        tags: tuple[str, ...] = ("scanflow", "test"),
    ) -> uuid.UUID:
        """A run of process-scan/local; ``pending``: created Pending, so no worker takes it
        (what a run waiting for capacity looks like)."""
        with self.client() as client:
            deployment = client.read_deployment_by_name("process-scan/local")
            params: dict[str, Any] = {
                "scan_id": scan_id,
                "patient_id": patient_id or "patient-" + uuid.uuid4().hex[:8],
                "video_uri": video_uri,
            }
            if options:
                params["options"] = dict(options)
            run = client.create_flow_run_from_deployment(
                deployment.id,
                parameters=params,
                name=scan_id,
                tags=list(tags),
                state=Pending() if pending else None,
            )
        return run.id

    def read(self, run_id: uuid.UUID) -> Any:
        with self.client() as client:
            return client.read_flow_run(run_id)

    def states(self, run_id: uuid.UUID) -> list[Any]:
        with self.client() as client:
            return list(client.read_flow_run_states(run_id))

    def wait_state(self, run_id: uuid.UUID, types: set[str], timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            run = self.read(run_id)
            if run.state and run.state.type.value in types:
                return run
            if time.monotonic() > deadline:
                raise TimeoutError(f"{run_id} still {run.state and run.state.name}")
            time.sleep(0.3)

    def runs_of(self, flow: str) -> list[Any]:
        with self.client() as client:
            return list(
                client.read_flow_runs(
                    flow_filter=FlowFilter(name=FlowFilterName(any_=[flow])), limit=200
                )
            )

    def logs(self, run_id: uuid.UUID) -> str:
        with self.client() as client:
            logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
        return "\n".join(log.message for log in logs)

    # -- its processes -------------------------------------------------------------------
    def pid(self, service: str) -> int | None:
        """The pid of one of its services (``server``, ``worker``, ``notify-worker``, and
        ``services`` at scale)."""
        try:
            return int((self.home / "run" / f"{service}.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def launched_process(self, run_id: uuid.UUID, timeout: float = 60) -> int:
        """The pid of the process the worker started for the flow run (its environment
        names the run): the run itself, or the warm server's client (scanflow.local.prefork)."""
        needle = f"PREFECT__FLOW_RUN_ID={run_id}".encode()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc in Path("/proc").iterdir():
                if not proc.name.isdigit():
                    continue
                with contextlib.suppress(OSError):
                    if needle in (proc / "environ").read_bytes().split(b"\0"):
                        return int(proc.name)
            time.sleep(0.2)
        raise TimeoutError(f"no process runs {run_id}")

    def flow_process(self, run_id: uuid.UUID, timeout: float = 60) -> int:
        """The pid of the process running the flow run: the one the worker started or, when
        that is the warm server's client, the child forked for it."""
        deadline = time.monotonic() + timeout
        while True:
            pid = self.launched_process(run_id, max(0.0, deadline - time.monotonic()))
            with contextlib.suppress(OSError):
                if b"scanflow.local.prefork" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                    return pid
            child = prefork.child_of(prefork.socket_for(self.home), str(run_id))
            if child is not None:
                return child
            if time.monotonic() > deadline:
                raise TimeoutError(f"no forked process runs {run_id}")
            time.sleep(0.2)


def _free_redis_database(base_url: str) -> str:
    """The URL of an empty Redis database (1-15; 0 is the default stack's), claimed with a
    key of its own."""
    import redis  # installed with prefect-redis

    claim = f"scanflow-sandbox:{os.getpid()}:{uuid.uuid4().hex}"
    for db in range(1, 16):
        url = f"{base_url.rstrip('/').rsplit('/', 1)[0]}/{db}"
        client = redis.Redis.from_url(url, socket_connect_timeout=3)
        try:
            # claimed only if nothing else is in it (another sandbox's claim included)
            if client.dbsize() == 0 and client.set(claim, "1") and client.dbsize() == 1:
                return url
        finally:
            client.close()
    raise RuntimeError(f"no empty Redis database (1-15) at {base_url}")


def _flush_redis_database(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=3)
    try:
        with contextlib.suppress(redis.RedisError):
            client.flushdb()
    finally:
        client.close()


async def _drop_database(name: str) -> None:
    conn = await asyncpg.connect(host="127.0.0.1", user="postgres", database="postgres")
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()
