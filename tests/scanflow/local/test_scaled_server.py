"""The local server at scale (scanflow.local.stack, ``messaging=redis``): PostgreSQL, Redis
and two API replicas on one port beside a services process, brought up for real by
``scanflow up`` in a stack of its own (a PostgreSQL database and a Redis database of its
own, both dropped when it goes down). Both replicas answer; a deployment's run completes
through the worker; its events cross Redis to the services process, which persists them
and fires an automation on them; ``scanflow down`` leaves no process. And the layouts
Prefect cannot run are refused with a clear message, before anything starts.
"""

from __future__ import annotations

import http.client
import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cv.synthetic import SyntheticScan
from scanflow.cli.main import main
from scanflow.local.sandbox import Sandbox
from scanflow.local.stack import LocalStack, redis_messaging_env
from scanflow.settings import Settings

REPLICAS = 2


# -- refused before anything starts (no server, no Redis needed) --------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--database", "sqlite", "--messaging", "redis"],
            "--messaging redis needs --database postgres (it is sqlite)",
        ),
        (["--database", "postgres", "--replicas", "2"], "--replicas 2 needs --messaging redis"),
    ],
)
def test_a_layout_prefect_cannot_run_is_refused_with_a_clear_message(
    args: list[str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("SCANFLOW_HOME", str(tmp_path))
    for key in ("SCANFLOW_DATABASE", "SCANFLOW_MESSAGING", "SCANFLOW_SERVER_REPLICAS"):
        monkeypatch.setenv(key, "")  # restored after main() sets them from the arguments
        monkeypatch.delenv(key)
    assert main(["server", "start", *args]) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run" / "server.pid").exists()  # nothing was started


def test_at_scale_the_server_and_its_services_share_redis(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SCANFLOW_HOME", str(tmp_path))
    monkeypatch.setenv("SCANFLOW_DATABASE", "postgres")
    monkeypatch.setenv("SCANFLOW_MESSAGING", "redis")
    monkeypatch.setenv("SCANFLOW_REDIS_URL", "redis://cache.internal:6380/3")
    env = LocalStack(Settings()).server_env()
    assert {k: env[k] for k in redis_messaging_env("")} == redis_messaging_env(
        "redis://cache.internal:6380/3"
    )
    monkeypatch.setenv("SCANFLOW_MESSAGING", "memory")
    env = LocalStack(Settings()).server_env()
    assert not set(redis_messaging_env("")) & set(env)  # the default: nothing of Redis


# -- the stack, for real -------------------------------------------------------------------


@pytest.fixture(scope="module")
def scaled() -> Iterator[Sandbox]:
    with Sandbox("scaled", database="postgres", messaging="redis", replicas=REPLICAS) as box:
        yield box


def _status(box: Sandbox) -> dict[str, object]:
    out = box.cli("server", "status", timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def _serving_pid(server_port: int, client_port: int, pids: list[int]) -> int | None:
    """Which of ``pids`` holds the server's end of the connection from ``client_port``."""
    local, remote = f"0100007F:{server_port:04X}", f"0100007F:{client_port:04X}"
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local and fields[2] == remote:
            inode = fields[9]
    if inode is None:
        return None
    for pid in pids:
        fd_dir = Path(f"/proc/{pid}/fd")
        for fd in fd_dir.iterdir():
            try:
                if os.readlink(fd) == f"socket:[{inode}]":
                    return pid
            except OSError:
                continue
    return None


@pytest.mark.integration
@pytest.mark.slow
def test_every_replica_answers_on_the_one_port(scaled: Sandbox) -> None:
    status = _status(scaled)
    replicas = status["replica_pids"]
    assert isinstance(replicas, list) and len(replicas) == REPLICAS
    assert status["services_pid"] and status["messaging"] == "redis"
    assert status["healthy"] is True
    # New connections, each kept open while we look up which replica accepted it: the
    # kernel hands them to whichever replica is waiting, so some go to each.
    answered_by: set[int] = set()
    open_conns = []
    deadline = time.monotonic() + 30
    while answered_by != set(replicas) and time.monotonic() < deadline:
        conn = http.client.HTTPConnection("127.0.0.1", scaled.port, timeout=10)
        conn.request("GET", "/api/deployments/name/process-scan/local")
        response = conn.getresponse()
        response.read()
        assert response.status == 200
        open_conns.append(conn)
        assert conn.sock is not None
        pid = _serving_pid(scaled.port, conn.sock.getsockname()[1], replicas)
        if pid is not None:
            answered_by.add(pid)
        if len(open_conns) > 8:
            open_conns.pop(0).close()
    for conn in open_conns:
        conn.close()
    assert answered_by == set(replicas)


@pytest.mark.integration
@pytest.mark.slow
def test_a_run_completes_and_its_events_reach_the_services_through_redis(
    scaled: Sandbox, good_scan: SyntheticScan
) -> None:
    with scaled.http() as api:
        # An automation the services process fires when a flow run completes: it pauses a
        # work queue no worker serves. Only events that crossed Redis reach its triggers.
        queue = api.post(
            "/work_pools/process/queues",
            json={"name": "messaging-canary-" + uuid.uuid4().hex[:6]},
        ).raise_for_status()
        queue_id = queue.json()["id"]
        api.post(
            "/automations/",
            json={
                "name": "pause the canary queue when a run completes",
                "trigger": {
                    "type": "event",
                    "posture": "Reactive",
                    "expect": ["prefect.flow-run.Completed"],
                    "match": {"prefect.resource.id": "prefect.flow-run.*"},
                    "threshold": 1,
                    "within": 0,
                },
                "actions": [
                    {"type": "pause-work-queue", "source": "selected", "work_queue_id": queue_id}
                ],
            },
        ).raise_for_status()

        run_id = scaled.submit("scaled-1", good_scan.path.as_uri())
        run = scaled.wait_state(run_id, {"COMPLETED", "FAILED", "CRASHED"}, timeout=120)
        assert run.state.type.value == "COMPLETED", run.state.message

        # the event persister (services process) wrote the run's events it read from Redis
        events: list[str] = []
        deadline = time.monotonic() + 60
        while "prefect.flow-run.Completed" not in events and time.monotonic() < deadline:
            body = {
                "filter": {"any_resource": {"id": [f"prefect.flow-run.{run_id}"]}},
                "limit": 50,
            }
            found = api.post("/events/filter", json=body).raise_for_status().json()
            events = [e["event"] for e in found["events"]]
            time.sleep(1)
        assert "prefect.flow-run.Completed" in events, events

        # ... and the triggers and actions services (Redis streams too) paused the queue
        paused = False
        while not paused and time.monotonic() < deadline:
            paused = api.get(f"/work_queues/{queue_id}").raise_for_status().json()["is_paused"]
            time.sleep(1)
        assert paused, "the automation never fired: events did not reach the triggers service"


@pytest.mark.integration
@pytest.mark.slow
def test_down_leaves_no_process(scaled: Sandbox) -> None:
    status = _status(scaled)
    server = status["server_pid"]
    assert isinstance(server, int)
    children = [
        int(p.name)
        for p in Path("/proc").iterdir()
        if p.name.isdigit() and _parent(int(p.name)) == server
    ]
    pids = [server, status["services_pid"], *status["replica_pids"], *children]  # type: ignore[misc]
    assert len(set(pids)) >= 2 + REPLICAS
    out = scaled.cli("down", timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    alive = [pid for pid in set(pids) if _parent(pid) is not None]
    assert not alive, f"still running after scanflow down: {alive}"
    assert not scaled.healthy()


def _parent(pid: int) -> int | None:
    """The parent of a live process; None when it is gone (or a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    after = stat.rsplit(")", 1)[1].split()
    return None if after[0] == "Z" else int(after[1])
