"""scanflow.local.stack: the services it tracks by pid file, started and stopped as real child
processes (their process groups, a child that ignores SIGTERM, a recycled pid), the
environments it gives the server and its clients, and, against real Prefect servers, that it
reuses a running server, starts one that requires basic auth, and says where to look when one
cannot start."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from scanflow.local import prefork
from scanflow.local.loopback import free_port
from scanflow.local.stack import LocalStack, Service
from scanflow.settings import Settings

# a child whose command line names prefect, as the pid guard wants; it logs, then waits
CHILD = """
import os, signal, subprocess, sys, time
from pathlib import Path
if sys.argv[1] == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print("child started", flush=True)
Path(sys.argv[2]).write_text(str(grandchild.pid))
time.sleep(60)
"""


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"  # exited, not yet reaped by whoever adopted it


def _ends(pid: int, timeout: float = 5) -> bool:
    """Gone within ``timeout`` (a SIGKILL lands a moment after it is sent)."""
    deadline = time.monotonic() + timeout
    while not _gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _wait_for_file(path: Path, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and path.read_text():
            return path.read_text()
        time.sleep(0.02)
    raise TimeoutError(path)


def _start(service: Service, mode: str, tmp_path: Path) -> tuple[int, int]:
    ready = tmp_path / f"{service.name}.grandchild"
    args = [sys.executable, "-c", CHILD, mode, str(ready), "prefect-stand-in"]
    pid = service.start(args, dict(os.environ))
    return pid, int(_wait_for_file(ready))


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    s = Service("worker", tmp_path / "home")
    yield s
    pid = s.pid()
    if pid is not None:  # a failed test leaves nothing running
        os.killpg(pid, signal.SIGKILL)


def test_a_service_keeps_its_pid_and_log_under_the_home(service: Service, tmp_path: Path) -> None:
    assert service.pid_file == tmp_path / "home" / "run" / "worker.pid"
    assert service.log_file == tmp_path / "home" / "logs" / "worker.log"
    assert service.pid() is None and service.stop() is False  # nothing started yet
    pid, _ = _start(service, "plain", tmp_path)
    assert service.pid_file.read_text() == str(pid) and service.pid() == pid
    assert "child started" in service.log_file.read_text()


def test_stop_ends_the_whole_process_group(service: Service, tmp_path: Path) -> None:
    pid, grandchild = _start(service, "plain", tmp_path)
    assert os.getpgid(pid) == pid  # a session of its own: ^C in a terminal does not reach it
    assert service.stop(timeout=10) is True
    assert _ends(pid) and _ends(grandchild)
    assert not service.pid_file.exists() and service.pid() is None
    assert service.stop() is False


def test_a_service_that_ignores_sigterm_is_killed_after_the_timeout(
    service: Service, tmp_path: Path
) -> None:
    pid, grandchild = _start(service, "ignore-term", tmp_path)
    started = time.monotonic()
    assert service.stop(timeout=0.4) is True
    assert 0.4 <= time.monotonic() - started < 5
    assert _ends(pid) and _ends(grandchild)


def test_a_pid_file_naming_another_program_is_not_trusted(service: Service) -> None:
    other = subprocess.Popen(["sleep", "30"])
    try:
        service.pid_file.parent.mkdir(parents=True)
        service.pid_file.write_text(str(other.pid))
        assert service.pid() is None  # a recycled pid: not ours to signal
        assert service.stop() is False and other.poll() is None  # left alone
        assert not service.pid_file.exists()  # the stale file is cleared
        service.pid_file.write_text("not a pid")
        assert service.pid() is None
    finally:
        other.kill()
        other.wait()


# -- environments --------------------------------------------------------------------------


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Settings:
    monkeypatch.setenv("SCANFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SCANFLOW_SERVER_PORT", "4777")
    monkeypatch.delenv("SCANFLOW_SERVER_AUTH", raising=False)
    monkeypatch.delenv("PREFECT_API_AUTH_STRING", raising=False)
    monkeypatch.delenv("PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED", raising=False)
    return Settings()


def test_clients_talk_to_this_stacks_server(settings: Settings, tmp_path: Path) -> None:
    env = LocalStack(settings).client_env()
    assert env["PREFECT_API_URL"] == "http://127.0.0.1:4777/api"
    assert env["SCANFLOW_HOME"] == str(tmp_path / "home")
    assert "PREFECT_API_AUTH_STRING" not in env


def test_the_server_gets_its_database_its_ui_url_and_no_late_runs_on_sqlite(
    settings: Settings, tmp_path: Path
) -> None:
    env = LocalStack(settings).server_env()
    assert "PREFECT_API_URL" not in env  # the server is not a client of itself
    assert env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] == (
        f"sqlite+aiosqlite:///{tmp_path / 'home' / 'prefect' / 'prefect.db'}"
    )
    assert env["PREFECT_UI_API_URL"] == "http://127.0.0.1:4777/api"
    assert env["PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED"] == "false"
    assert "PREFECT_SERVER_API_AUTH_STRING" not in env


def test_an_operator_may_turn_late_runs_back_on_and_postgres_keeps_them(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED", "true")
    assert LocalStack(settings).server_env()["PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED"] == "true"
    monkeypatch.delenv("PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED")
    monkeypatch.setenv("SCANFLOW_DATABASE", "postgres")
    monkeypatch.setenv("SCANFLOW_POSTGRES_URL", "postgresql+asyncpg://pg@db:5432/scans")
    env = LocalStack(Settings()).server_env()
    assert "PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED" not in env
    assert env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] == "postgresql+asyncpg://pg@db:5432/scans"


def test_with_auth_the_server_requires_it_and_its_clients_send_it(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCANFLOW_SERVER_AUTH", "ops:pa55-word")
    stack = LocalStack(Settings())
    assert stack.server_env()["PREFECT_SERVER_API_AUTH_STRING"] == "ops:pa55-word"
    assert stack.client_env()["PREFECT_API_AUTH_STRING"] == "ops:pa55-word"
    assert stack.status()["basic_auth"] is True


def test_status_of_a_stack_that_is_not_running(settings: Settings, tmp_path: Path) -> None:
    assert LocalStack(settings).status() == {
        "api_url": "http://127.0.0.1:4777/api",
        "healthy": False,
        "server_pid": None,
        "messaging": "memory",
        "replica_pids": [],
        "services_pid": None,
        "worker_pid": None,
        "notify_worker_pid": None,
        "prefork_pid": None,
        "database": "sqlite",
        "basic_auth": False,
        "home": str(tmp_path / "home"),
    }


def test_the_warm_server_loads_the_flows_of_the_scan_pool_and_can_be_turned_off(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = LocalStack(settings)
    assert stack.pool_entrypoints() == ["flows/process_scan.py:process_scan"]
    assert prefork.entrypoint_module("flows/process_scan.py:process_scan") == "flows.process_scan"
    assert prefork.entrypoint_module("flows.process_scan.process_scan") == "flows.process_scan"
    assert stack.uses_prefork() is prefork.available()
    monkeypatch.setenv("SCANFLOW_PREFORK", "false")
    off = LocalStack(Settings())
    assert not off.uses_prefork() and off.start_prefork() == "off"
    # a home too deep for a Unix socket's path (107 bytes): Prefect's own command
    monkeypatch.setenv("SCANFLOW_PREFORK", "true")
    monkeypatch.setenv("SCANFLOW_HOME", str(tmp_path / ("d" * 110)))
    assert not LocalStack(Settings()).uses_prefork()


# -- real servers --------------------------------------------------------------------------


@pytest.mark.integration
def test_a_running_server_is_reused(prefect_server: str) -> None:
    stack = LocalStack(Settings())  # the session's settings: its server
    assert stack.settings.api_url == prefect_server
    assert stack.healthy() and stack.start_server() == "running"


@pytest.mark.integration
@pytest.mark.slow
def test_a_server_started_with_auth_refuses_clients_without_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    port = free_port()
    monkeypatch.setenv("SCANFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SCANFLOW_SERVER_PORT", str(port))
    monkeypatch.setenv("SCANFLOW_SERVER_AUTH", "ops:pa55-word")
    stack = LocalStack(Settings())
    try:
        assert stack.start_server() == "started"
        api = stack.settings.api_url
        assert httpx.get(f"{api}/health", timeout=10).status_code == 200  # probes stay open
        assert httpx.post(f"{api}/flows/filter", json={}, timeout=10).status_code == 401
        authed = httpx.post(f"{api}/flows/filter", json={}, auth=("ops", "pa55-word"), timeout=10)
        assert authed.status_code == 200
        assert (tmp_path / "home" / "prefect" / "prefect.db").is_file()
        assert stack.status()["server_pid"] is not None
    finally:
        stopped = stack.down()
    assert stopped == {"worker": False, "notify-worker": False, "prefork": False, "server": True}
    assert not stack.healthy() and stack.server.pid() is None


@pytest.mark.integration
@pytest.mark.slow
def test_a_server_that_cannot_start_names_its_log(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with socket.socket() as taken:  # something else holds the port, answering nothing
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        monkeypatch.setenv("SCANFLOW_HOME", str(tmp_path / "home"))
        monkeypatch.setenv("SCANFLOW_SERVER_PORT", str(taken.getsockname()[1]))
        stack = LocalStack(Settings())
        try:
            with pytest.raises(
                RuntimeError, match=r"did not come up \(it exited\); .*server.log"
            ) as e:
                stack.start_server(timeout=90)
        finally:
            stack.down()
        port = taken.getsockname()[1]
    assert f"Port {port} is already in use" in (tmp_path / "home/logs/server.log").read_text()
    assert f"Port {port} is already in use" in str(e.value)  # the error says why
