"""Fixtures of the trigger's tests, all real and on loopback (helpers in
tests/support/loopback.py):

- ``auth_server``: a second Prefect server, started like LocalStack starts one
  (``prefect server start`` in a subprocess) on its own free port and PREFECT_HOME, with
  basic auth on (PREFECT_SERVER_API_AUTH_STRING), holding a ``process-scan/ecs-cpu``
  deployment whose pool has an ``uploads`` queue;
- ``s3_event``: an S3 notification as Lambda receives it (events/s3-object-created.json).

The trigger is imported as ``deployments.trigger.scanflow_trigger``; its modules import one
another relatively, so the same code runs as the top-level package of the Lambda's zip.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from deployments.trigger.scanflow_trigger import handler as trigger
from tests.support.loopback import AuthServer, free_port

EVENTS_DIR = Path(__file__).parent / "events"
BUCKET = "scanflow-uploads"


@pytest.fixture(scope="session")
def auth_server() -> Iterator[AuthServer]:
    """A real Prefect server (SQLite) with basic auth on, and a deployment to trigger."""
    home = Path(tempfile.mkdtemp(prefix="scanflow-auth-server-"))
    port = free_port()
    auth = "scanflow:" + base64.urlsafe_b64encode(os.urandom(12)).decode()
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_API_KEY")}
    env.update(
        PREFECT_HOME=str(home / "prefect"),
        PREFECT_SERVER_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        PREFECT_SERVER_API_AUTH_STRING=auth,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_UI_ENABLED="false",
    )
    log = open(home / "server.log", "wb")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--no-services"]
        + ["--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    api_url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"auth server did not start: {(home / 'server.log').read_text()[-2000:]}"
                )
            time.sleep(0.3)
        with httpx.Client(base_url=api_url, auth=tuple(auth.split(":", 1))) as c:  # type: ignore[arg-type]
            pool = {"name": "trigger-test", "type": "process"}
            c.post("/work_pools/", json=pool).raise_for_status()
            c.post(
                "/work_pools/trigger-test/queues", json={"name": "uploads", "priority": 1}
            ).raise_for_status()
            flow = c.post("/flows/", json={"name": "process-scan"}).raise_for_status().json()
            deployment = (
                c.post(
                    "/deployments/",
                    json={
                        "name": "ecs-cpu",
                        "flow_id": flow["id"],
                        "entrypoint": "flows.process_scan.process_scan",
                        "work_pool_name": "trigger-test",
                        "work_queue_name": "default",
                    },
                )
                .raise_for_status()
                .json()
            )
        yield AuthServer(api_url, auth, "process-scan/ecs-cpu", deployment["id"], "uploads")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def s3_event() -> dict[str, object]:
    """An S3 notification as Lambda receives it, several records with URL-encoded keys."""
    return json.loads((EVENTS_DIR / "s3-object-created.json").read_text())  # type: ignore[no-any-return]


@pytest.fixture
def trigger_env(monkeypatch: pytest.MonkeyPatch, auth_server: AuthServer) -> AuthServer:
    """The function's environment as the template sets it, pointed at the auth server."""
    for name in (
        "PREFECT_API_KEY",
        "PREFECT_API_KEY_SECRET_ARN",
        "PREFECT_API_AUTH_STRING_SECRET_ARN",
        "SCANFLOW_TIME_RESERVE_S",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PREFECT_API_URL", auth_server.api_url)
    monkeypatch.setenv("PREFECT_API_AUTH_STRING", auth_server.auth_string)
    monkeypatch.setenv("SCANFLOW_DEPLOYMENT", auth_server.deployment)
    monkeypatch.setenv("SCANFLOW_ALLOWED_BUCKETS", BUCKET)
    monkeypatch.setenv("SCANFLOW_ALLOWED_PREFIXES", "patients/,region=eu/patients/")
    monkeypatch.setenv("SCANFLOW_WORK_QUEUE", auth_server.work_queue)
    monkeypatch.setattr(trigger, "_APIS", {})  # a fresh execution environment
    return auth_server
