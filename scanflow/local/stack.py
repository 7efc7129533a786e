"""The embedded default: a local Prefect server (SQLite, or PostgreSQL on request), the
``process`` work pool, the deployment from prefect.yaml and a worker, each started once
and reused. State lives under the settings' home folder (default ``.scanflow/``).

At scale (``messaging=redis``, PostgreSQL only) the server is two processes: the API,
as ``server_replicas`` uvicorn workers sharing one port, and Prefect's background
services (scheduler, triggers, event persister, ...) in a process of their own; the two
share events, caches and leases through Redis.

It imports Prefect, which reads its settings then: import it once PREFECT_* point at the
right API (scanflow.cli.main does).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from scanflow.local import prefork
from scanflow.settings import REPO_ROOT, Settings, prefect_client_env

PREFECT = [sys.executable, "-m", "prefect"]


@dataclass(frozen=True)
class Service:
    """A background process we started, tracked by a pid file."""

    name: str
    home: Path
    marker: bytes = b"prefect"  # in its command line: guards against a recycled pid

    @property
    def pid_file(self) -> Path:
        return self.home / "run" / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.home / "logs" / f"{self.name}.log"

    def log_tail(self, lines: int = 12) -> str:
        """The end of its log, for an error that says why it did not start."""
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.rstrip().splitlines()[-lines:]) or "(empty log)"

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            try:
                os.kill(pid, 0)  # no /proc (macOS): trust the pid file if the pid lives
            except OSError:
                return None
            return pid
        return pid if self.marker in cmdline else None

    def start(self, args: list[str], env: dict[str, str]) -> int:
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(
                args,
                cwd=REPO_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.pid_file.write_text(str(proc.pid))
        return proc.pid

    def stop(self, timeout: float = 20.0) -> bool:
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.2)
        if _alive(pid):
            _signal_group(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        return True


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a zombie child of ours counts as gone
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return True


class LocalStack:
    """Starts, finds and stops the local Prefect server and worker.

    The Prefect client calls made here use the process's PREFECT_API_URL: the command line
    sets it (from ``client_env``) before Prefect is imported.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.home = settings.home.resolve()
        self.server = Service("server", self.home)  # the API (all its replicas)
        self.services = Service("services", self.home)  # Prefect's services, at scale
        self.worker = Service("worker", self.home)
        self.notify_worker = Service("notify-worker", self.home)  # runs notify-outcome
        # the scan pool's flow runs fork from it (scanflow.local.prefork)
        self.prefork = Service("prefork", self.home, marker=b"scanflow.local.prefork")

    # -- environment -------------------------------------------------------------------
    def client_env(self) -> dict[str, str]:
        """Environment for processes that talk to this stack's server (deploy, worker)."""
        return prefect_client_env(self.settings)

    def server_env(self) -> dict[str, str]:
        env = self.client_env()
        env.pop("PREFECT_API_URL", None)
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = self.settings.database_url
        env["PREFECT_UI_API_URL"] = self.settings.api_url
        if self.settings.server_auth is not None:
            # every API route but GET /health and /ready then requires it
            env["PREFECT_SERVER_API_AUTH_STRING"] = self.settings.server_auth.get_secret_value()
        if self.settings.messaging == "redis":
            env.update(redis_messaging_env(self.settings.redis_url))
        if self.settings.database == "sqlite":
            # SQLite has one writer at a time, and a transaction that read before it writes
            # fails at once ("database is locked", a 503) when another committed meanwhile.
            # The late-runs service writes a "Late" state for every run that waits in the
            # queue, which in a burst is every run, just when the submissions and the worker
            # need the writer: off, a 200-scan burst is accepted in half the time with half
            # the 503s and none of the lock errors in the server log (docs/faults.md, "Bursts").
            env.setdefault("PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED", "false")
        return env

    # -- server ------------------------------------------------------------------------
    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.settings.api_url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    @property
    def scaled(self) -> bool:
        """The API and Prefect's services in processes of their own (messaging=redis)."""
        return self.settings.messaging == "redis"

    def check_layout(self) -> None:
        """Refuse a server Prefect cannot run: replicas and Redis need PostgreSQL."""
        s = self.settings
        if s.messaging == "redis" and s.database != "postgres":
            raise ValueError(
                f"--messaging redis needs --database postgres (it is {s.database}): the API "
                "replicas and the services process share one database, which SQLite's one "
                "writer cannot serve"
            )
        if s.server_replicas > 1 and s.messaging != "redis":
            raise ValueError(
                f"--replicas {s.server_replicas} needs --messaging redis (and PostgreSQL): "
                "replicas share events, caches and concurrency leases through it"
            )

    def start_server(self, timeout: float = 120.0) -> str:
        """Start the server unless one already answers; returns 'running' or 'started'.
        At scale, also its services process (started once the API answers: the API's
        first replica migrates the database)."""
        self.check_layout()
        if self.healthy():
            if self.scaled and self.services.pid() is None:
                self._start_services()
            return "running"
        if self.settings.database == "postgres":
            asyncio.run(_ensure_postgres_database(self.settings.postgres_url))
        (self.home / "prefect").mkdir(parents=True, exist_ok=True)
        env = self.server_env()
        if self.scaled:
            _ping_redis(self.settings.redis_url)
            # Migrated once, here: replicas that each migrate a fresh database at start
            # race to create the same tables, and all but one fail.
            subprocess.run(
                PREFECT + ["--no-prompt", "server", "database", "upgrade", "--yes"],
                cwd=REPO_ROOT,
                env=env,
                check=True,
                capture_output=True,
            )
            env["PREFECT_SERVER_DATABASE_MIGRATE_ON_START"] = "false"
        args = [
            "server",
            "start",
            "--host",
            self.settings.server_host,
            "--port",
            str(self.settings.server_port),
        ]
        if self.scaled:
            # uvicorn's workers share the one listening socket: clients keep one address
            # and the kernel spreads connections over the replicas (Prefect implies
            # --no-services above one worker; said here for one replica too)
            args += ["--no-services", "--workers", str(self.settings.server_replicas)]
        pid = self.server.start(PREFECT + args, env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # at scale: every replica up, not only the first to answer
            replicas = len(self.replica_pids())
            replicas_up = not self.scaled or replicas >= self.settings.server_replicas
            if replicas_up and self.healthy():
                if self.scaled:
                    self._start_services()
                return "started"
            if not _alive(pid):  # not pid(): until exec, the child's cmdline is ours
                why = "it exited"
                break
            time.sleep(0.5)
        else:
            why = f"it did not answer within {timeout:.0f} s"
        raise RuntimeError(
            f"the Prefect server did not come up ({why}); {self.server.log_file} ends:\n"
            + self.server.log_tail()
        )

    def _start_services(self) -> None:
        pid = self.services.start(PREFECT + ["server", "services", "start"], self.server_env())
        time.sleep(1.0)
        if not _alive(pid):
            raise RuntimeError(
                f"Prefect's services process exited at once; {self.services.log_file} ends:\n"
                + self.services.log_tail()
            )

    def stop_server(self) -> bool:
        """Stop the services process (at scale) and the API; True if something ran."""
        services = self.services.stop()
        return self.server.stop() or services

    def replica_pids(self) -> list[int]:
        """The API's replicas: uvicorn's worker processes under the server's (the server's
        own process when it runs one)."""
        pid = self.server.pid()
        if pid is None:
            return []
        if not self.scaled:
            return [pid]
        return sorted(c for c in _children_of(pid) if b"spawn_main" in _cmdline(c))

    # -- pool, deployment, worker ------------------------------------------------------
    @property
    def prefork_socket(self) -> Path:
        return prefork.socket_for(self.home)

    def uses_prefork(self) -> bool:
        # a Unix socket's path is at most 107 bytes
        return (
            self.settings.prefork
            and prefork.available()
            and len(str(self.prefork_socket).encode()) < 108
        )

    def ensure_pool(self) -> None:
        command = None
        if self.uses_prefork():
            command = shlex.join(prefork.client_command(self.prefork_socket))
        asyncio.run(
            _ensure_process_pool(
                self.settings.work_pool,
                self.settings.pool_concurrency,
                # Backfills and shadow runs: after the default queue's uploads, and never
                # in every slot, so an upload that arrives while they run starts at once.
                backfill=(self.settings.backfill_queue, max(1, self.settings.pool_concurrency - 1)),
                command=command,
            )
        )
        asyncio.run(_ensure_process_pool(self.settings.notify_pool, 4))

    def deploy(self) -> bool:
        """Apply prefect.yaml's local deployment when it changed; True if deployed."""
        spec = (REPO_ROOT / "prefect.yaml").read_bytes()
        stamp = self.home / "run" / "deployed.sha256"
        digest = hashlib.sha256(spec + self.settings.api_url.encode()).hexdigest()
        if (
            stamp.is_file()
            and stamp.read_text() == digest
            and asyncio.run(_deployment_exists(self.settings.deployment))
            and asyncio.run(_deployment_exists(self.settings.notify_deployment))
        ):
            return False
        names = [
            d.split("/", 1)[1] for d in (self.settings.deployment, self.settings.notify_deployment)
        ]
        subprocess.run(
            PREFECT + ["--no-prompt", "deploy", "--name", names[0], "--name", names[1]],
            cwd=REPO_ROOT,
            env=self.client_env(),
            check=True,
            stdout=subprocess.DEVNULL,
        )
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(digest)
        return True

    def worker_env(self) -> dict[str, str]:
        env = self.client_env()
        env["PREFECT_WORKER_QUERY_SECONDS"] = str(self.settings.worker_query_seconds)
        env["PREFECT_WORKER_PREFETCH_SECONDS"] = "5"
        # The worker and the flow runs it starts (they inherit this) retry a 503 or a
        # dropped connection 8 times, backing off 2, 4, ... 256 s (about 8 minutes in all)
        # instead of Prefect's 5 (1 minute): a burst on SQLite answers 503s for longer than
        # that, and a run whose worker gives up is reported Crashed.
        env.setdefault("PREFECT_CLIENT_MAX_RETRIES", "8")
        return env

    def start_worker(self) -> str:
        """Start the scan worker and the notify-outcome worker (its own pool: news of a
        scan does not wait behind scans)."""
        env = self.worker_env()
        started = False
        for service, pool, name in (
            (self.worker, self.settings.work_pool, "scanflow-local"),
            (self.notify_worker, self.settings.notify_pool, "scanflow-notify"),
        ):
            if service.pid() is None:
                service.start(
                    PREFECT
                    + ["worker", "start", "--pool", pool, "--type", "process", "--name", name],
                    env,
                )
                started = True
        return "started" if started else "running"

    def pool_entrypoints(self) -> list[str]:
        """The entrypoints of prefect.yaml's deployments on the local scan pool: the flows
        the warm server loads."""
        spec = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())
        return sorted(
            {
                d["entrypoint"]
                for d in spec.get("deployments", [])
                if (d.get("work_pool") or {}).get("name") == self.settings.work_pool
            }
        )

    def start_prefork(self) -> str:
        """Start the warm server the scan pool's flow runs fork from; it loads for a few
        seconds (``wait_prefork``)."""
        if not self.uses_prefork():
            return "off"
        if self.prefork.pid() is not None:
            return "running"
        self.prefork_socket.unlink(missing_ok=True)
        preload = [f"--preload={e}" for e in self.pool_entrypoints()]
        self.prefork.start(
            [sys.executable, "-m", "scanflow.local.prefork", "serve"]
            + ["--socket", str(self.prefork_socket), *preload],
            self.worker_env(),
        )
        return "started"

    def wait_prefork(self, timeout: float = 90.0) -> str:
        """Until the warm server listens (a run started before that starts cold)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.prefork.pid() is None:
                return "failed (see logs/prefork.log): runs start cold"
            if self.prefork_socket.is_socket():
                return "ready"
            time.sleep(0.1)
        return f"not ready after {timeout:.0f} s: runs start cold until it is"

    def up(self) -> dict[str, str]:
        warm = self.start_prefork()  # loads while the server starts
        server = self.start_server()
        self.ensure_pool()
        deployed = self.deploy()
        if warm != "off":
            warm = f"{warm}, {self.wait_prefork()}"
        worker = self.start_worker()
        return {
            "server": server,
            "deployment": "applied" if deployed else "unchanged",
            "warm start": warm,
            "worker": worker,
        }

    def down(self) -> dict[str, bool]:
        return {
            "worker": self.worker.stop(),
            "notify-worker": self.notify_worker.stop(),
            "prefork": self.prefork.stop(),
            "server": self.stop_server(),
        }

    def status(self) -> dict[str, object]:
        return {
            "api_url": self.settings.api_url,
            "healthy": self.healthy(),
            "server_pid": self.server.pid(),
            "messaging": self.settings.messaging,
            "replica_pids": self.replica_pids(),
            "services_pid": self.services.pid(),
            "worker_pid": self.worker.pid(),
            "notify_worker_pid": self.notify_worker.pid(),
            "prefork_pid": self.prefork.pid(),
            "database": self.settings.database,
            "basic_auth": self.settings.server_auth is not None,
            "home": str(self.home),
        }


def redis_messaging_env(redis_url: str) -> dict[str, str]:
    """Prefect's settings that put its messaging broker and cache, the causal ordering of
    events and the concurrency leases on Redis (the prefect-redis package): what several
    API replicas and a services process need to share."""
    return {
        "PREFECT_MESSAGING_BROKER": "prefect_redis.messaging",
        "PREFECT_MESSAGING_CACHE": "prefect_redis.messaging",
        "PREFECT_SERVER_EVENTS_CAUSAL_ORDERING": "prefect_redis.ordering",
        "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect_redis.lease_storage",
        "PREFECT_REDIS_MESSAGING_URL": redis_url,
    }


def _ping_redis(url: str) -> None:
    import redis  # installed with prefect-redis

    client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
    try:
        client.ping()
    except redis.RedisError as exc:
        where = url.rsplit("@", 1)[-1]  # not the password, if the URL has one
        raise RuntimeError(
            f"Redis at {where} does not answer ({exc}); start it, or set SCANFLOW_REDIS_URL"
        ) from exc
    finally:
        client.close()


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def process_tree() -> dict[int, list[int]]:
    """Every process's children, by parent pid, from /proc (Linux)."""
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        tree.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry.name))
    return tree


def _children_of(pid: int) -> list[int]:
    return process_tree().get(pid, [])


async def _ensure_process_pool(
    name: str,
    concurrency: int,
    backfill: tuple[str, int] | None = None,
    command: str | None = None,
) -> None:
    """The pool, created once; its flow runs' command (None: Prefect's engine command)
    kept as asked."""
    # Imported here, as the database drivers below: `scanflow process` runs the flow in the
    # process that imports this module, and these cost it ~15 MiB of peak RSS it never uses.
    from prefect.workers.process import ProcessWorker

    template = ProcessWorker.get_default_base_job_template()
    template["variables"]["properties"]["command"]["default"] = command
    async with get_client() as client:
        try:
            await client.create_work_pool(
                WorkPoolCreate(
                    name=name,
                    type="process",
                    concurrency_limit=concurrency,
                    base_job_template=template,
                )
            )
        except ObjectAlreadyExists:
            pool = await client.read_work_pool(name)
            if pool.base_job_template != template:
                await client.update_work_pool(name, WorkPoolUpdate(base_job_template=template))
        if backfill is not None:
            queue, limit = backfill
            with contextlib.suppress(ObjectAlreadyExists):
                await client.create_work_queue(
                    name=queue, work_pool_name=name, priority=2, concurrency_limit=limit
                )


async def _deployment_exists(name: str) -> bool:
    async with get_client() as client:
        try:
            await client.read_deployment_by_name(name)
        except ObjectNotFound:
            return False
        return True


async def _ensure_postgres_database(url: str) -> None:
    import asyncpg  # installed with prefect
    from sqlalchemy.engine import make_url

    u = make_url(url)
    conn = await asyncpg.connect(
        host=u.host or "127.0.0.1",
        port=u.port or 5432,
        user=u.username or "postgres",
        password=u.password,
        database="postgres",
    )
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", u.database)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{u.database}"')
    finally:
        await conn.close()
