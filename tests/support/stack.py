"""The notification tests' harness: real HTTP receivers on loopback standing in for the
platform and Slack, and local stacks of their own (server, pools, deployments, workers,
automations) in temporary homes on free ports, never the session's shared stack: these
tests kill workers and flow processes, and their automations would fire on other tests' runs.

Each stack is started by the project's own command line in a subprocess whose environment
points at that stack only; the test process talks to it with an explicit API URL.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from scanflow.local.loopback import Receiver, free_port
from scanflow.settings import REPO_ROOT

SIGNING_SECRET = "whsec-test-" + uuid.uuid4().hex  # lives in a Secret block on the stack
SLACK_TOKEN = "xoxb-test-" + uuid.uuid4().hex  # in the Slack URL, given by settings
ALL_EVENTS = ["scan.completed", "scan.rejected", "scan.failed", "scan.crashed", "scan.stalled"]
FIGURES: list[tuple[str, str, float]] = []  # (case, what, seconds): printed at the end


def for_scan(scan_id: str, event_type: str | None = None) -> Callable[[dict[str, Any]], bool]:
    def match(body: dict[str, Any]) -> bool:
        if body.get("scan_id") == scan_id and (event_type is None or body["type"] == event_type):
            return True
        # a Slack message names the scan in its fallback text
        text = str(body.get("text", ""))
        return ": " + scan_id + " " in text and (
            event_type is None or text.lower().startswith("scan " + event_type.split(".")[1])
        )

    return match


# -- stacks ------------------------------------------------------------------------------


class NotifyStack:
    """A LocalStack of its own, driven through the scanflow command line."""

    def __init__(self, name: str, platform: Receiver, slack: Receiver, **settings: str) -> None:
        self.name = name
        self.home = Path(tempfile.mkdtemp(prefix=f"scanflow-notify-{name}-"))
        self.port = free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("PREFECT_", "SCANFLOW_", "AWS_"))
        }
        env.update(
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
                "SCANFLOW_PLATFORM_WEBHOOK_URL": platform.url + "/scanflow/events",
                "SCANFLOW_SLACK_WEBHOOK_URL": f"{slack.url}/services/T0/B0/{SLACK_TOKEN}",
                "SCANFLOW_SLACK_EVENTS": json.dumps(ALL_EVENTS),
            }
        )
        env.update({f"SCANFLOW_{k.upper()}": v for k, v in settings.items()})
        self.env = env

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "scanflow.cli.main", *args],
            cwd=REPO_ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def up(self) -> None:
        out = self.cli("up")
        assert out.returncode == 0, out.stdout + out.stderr
        # the signing key in a Secret block, the Slack URL in settings: both ways are used
        from prefect.blocks.system import Secret
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: self.api_url}):
            # Seen once in CI with two stacks starting at once: the SQLite server answered
            # this write with a 500 (not the 503 its client retries). An operator would save
            # it again; so does the harness, a few times.
            for attempt in range(5):
                try:
                    Secret(value=SIGNING_SECRET).save(
                        "scanflow-platform-signing-secret", overwrite=True
                    )
                    break
                except httpx.HTTPStatusError as exc:
                    if exc.response.status_code < 500 or attempt == 4:
                        raise
                    time.sleep(2.0 * (attempt + 1))
        applied = self.cli("automations", "apply")
        assert applied.returncode == 0, applied.stdout + applied.stderr

    def down(self) -> None:
        self.cli("down", timeout=120)
        if not os.environ.get("SCANFLOW_KEEP_TEST_HOME"):
            shutil.rmtree(self.home, ignore_errors=True)

    def client(self) -> Any:
        from prefect.client.orchestration import SyncPrefectClient

        return SyncPrefectClient(self.api_url)

    def healthy(self) -> bool:
        import httpx

        try:
            return httpx.get(self.api_url + "/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def submit(
        self,
        scan_id: str,
        video_uri: str,
        options: dict[str, Any] | None = None,
        *,
        pending: bool = False,
    ) -> uuid.UUID:
        """A run of process-scan/local; ``pending``: created Pending, so no worker takes it
        (what a run waiting for capacity looks like)."""
        from prefect.states import Pending

        with self.client() as client:
            deployment = client.read_deployment_by_name("process-scan/local")
            params: dict[str, Any] = {
                "scan_id": scan_id,
                "patient_id": "patient-" + uuid.uuid4().hex[:8],
                "video_uri": video_uri,
            }
            if options:
                params["options"] = options
            run = client.create_flow_run_from_deployment(
                deployment.id,
                parameters=params,
                name=scan_id,
                tags=["scanflow", "test"],
                state=Pending() if pending else None,
            )
        return run.id  # type: ignore[no-any-return]

    def notify_runs(self, run_id: uuid.UUID | None) -> list[Any]:
        """The notify-outcome runs about ``run_id``."""
        from prefect.client.schemas.filters import FlowFilter, FlowFilterName

        with self.client() as client:
            runs = client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=["notify-outcome"])), limit=200
            )
        return [r for r in runs if str(run_id) in str(r.parameters.get("flow_run_id"))]

    def read(self, run_id: uuid.UUID) -> Any:
        with self.client() as client:
            return client.read_flow_run(run_id)

    def states(self, run_id: uuid.UUID) -> list[Any]:
        with self.client() as client:
            return client.read_flow_run_states(run_id)  # type: ignore[no-any-return]

    def wait_state(self, run_id: uuid.UUID, types: set[str], timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            run = self.read(run_id)
            if run.state and run.state.type.value in types:
                return run
            if time.monotonic() > deadline:
                raise TimeoutError(f"{run_id} still {run.state and run.state.name}")
            time.sleep(0.3)

    def flow_process(self, run_id: uuid.UUID, timeout: float = 60) -> int:
        """The pid of the process running the flow run (found by its environment)."""
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

    def worker_pid(self) -> int:
        pid = int((self.home / "run" / "worker.pid").read_text())
        return pid

    def logs(self, run_id: uuid.UUID) -> str:
        from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

        with self.client() as client:
            logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
        return "\n".join(log.message for log in logs)


def kill(pid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


# -- fixtures, shared by the conftests that import them (tests/system/notify, faults) ---


@pytest.fixture(scope="session")
def platform() -> Iterator[Receiver]:
    """The platform's webhook receiver, verifying signatures."""
    receiver = Receiver("platform", secret=SIGNING_SECRET).start()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="session")
def slack() -> Iterator[Receiver]:
    """Slack's incoming-webhook receiver."""
    receiver = Receiver("slack").start()
    yield receiver
    receiver.stop()
