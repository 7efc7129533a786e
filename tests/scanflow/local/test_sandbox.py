"""scanflow.local.sandbox: a stack of its own in a temporary home. Its processes' environment
points at it only (nothing of the caller's Prefect, scanflow or AWS settings leaks in), and
once, for real, it comes up through the command line, runs a scan to Completed and leaves
nothing behind when it goes down."""

from __future__ import annotations

import base64
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from cv.synthetic import SyntheticScan
from scanflow.local.sandbox import FINAL, Sandbox


@pytest.fixture
def box(monkeypatch: pytest.MonkeyPatch) -> Iterator[Sandbox]:
    """A sandbox that is never brought up, made while the caller has settings of its own."""
    monkeypatch.setenv("PREFECT_API_KEY", "pnu_caller-key")
    monkeypatch.setenv("PREFECT_LOGGING_LEVEL", "DEBUG")
    monkeypatch.setenv("SCANFLOW_PLATFORM_WEBHOOK_URL", "https://platform.example/events")
    monkeypatch.setenv("SCANFLOW_CRASH_RETRIES", "3")
    monkeypatch.setenv("AWS_PROFILE", "production")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "caller-token")
    monkeypatch.setenv("SANDBOX_TEST_UNRELATED", "kept")
    monkeypatch.delenv("SCANFLOW_KEEP_TEST_HOME", raising=False)
    sandbox = Sandbox(
        "unit",
        auth="ops:pa55-word",
        settings={"crash_retries": "1", "slack_events": json.dumps(["scan.failed"])},
        env={"AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9"},
    )
    yield sandbox
    shutil.rmtree(sandbox.home, ignore_errors=True)


def test_its_processes_see_none_of_the_callers_settings(box: Sandbox) -> None:
    ours = {k: v for k, v in box.env.items() if k.startswith(("PREFECT_", "SCANFLOW_", "AWS_"))}
    assert ours == {
        "PREFECT_API_URL": f"http://127.0.0.1:{box.port}/api",
        "PREFECT_HOME": str(box.home / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "SCANFLOW_HOME": str(box.home),
        "SCANFLOW_SERVER_PORT": str(box.port),
        "SCANFLOW_WORKER_QUERY_SECONDS": "1",
        "SCANFLOW_RESULTS_URI": (box.home / "results").as_uri(),
        "SCANFLOW_INPUT_ROOTS": ours["SCANFLOW_INPUT_ROOTS"],
        "SCANFLOW_DATABASE": "sqlite",
        "SCANFLOW_POSTGRES_URL": f"postgresql+asyncpg://postgres@127.0.0.1:5432/{box.pg_database}",
        "SCANFLOW_SERVER_AUTH": "ops:pa55-word",
        "SCANFLOW_CRASH_RETRIES": "1",  # its settings, as SCANFLOW_*, over the caller's
        "SCANFLOW_SLACK_EVENTS": '["scan.failed"]',
        "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9",  # what it was given, nothing else
    }
    assert box.env["SANDBOX_TEST_UNRELATED"] == "kept"  # the rest of the environment stays
    assert box.api_url == ours["PREFECT_API_URL"]


def test_its_home_and_database_are_its_own(box: Sandbox) -> None:
    other = Sandbox("unit")
    try:
        assert box.home != other.home and box.home.is_dir() and "scanflow-unit-" in box.home.name
        assert box.port != other.port
        assert box.pg_database != other.pg_database
        assert re.fullmatch(r"scanflow_unit_\d+_[0-9a-f]{8}", box.pg_database)  # a plain name
    finally:
        shutil.rmtree(other.home, ignore_errors=True)


def test_its_clients_carry_its_auth(box: Sandbox) -> None:
    with box.http() as http:
        assert str(http.base_url).rstrip("/") == box.api_url
        assert http.auth is not None
        sent = next(http.auth.auth_flow(http.build_request("POST", "/flows/filter")))
    assert sent.url == box.api_url + "/flows/filter"
    assert sent.headers["Authorization"] == "Basic " + base64.b64encode(b"ops:pa55-word").decode()
    assert not box.healthy()  # nothing is up
    assert box.pid("server") is None
    (box.home / "run").mkdir()
    (box.home / "run" / "worker.pid").write_text("4242\n")
    assert box.pid("worker") == 4242


@pytest.mark.integration
@pytest.mark.slow
def test_a_sandbox_runs_a_scan_and_leaves_nothing_behind(good_scan: SyntheticScan) -> None:
    with Sandbox("sandbox-test") as sandbox:
        home = sandbox.home
        assert sandbox.healthy() and sandbox.pid("server") and sandbox.pid("worker")
        run_id = sandbox.submit("sandbox-scan", good_scan.path.as_uri(), patient_id="pt-sandbox")
        run = sandbox.wait_state(run_id, set(FINAL), timeout=300)
        assert run.state.type.value == "COMPLETED", sandbox.logs(run_id)
        manifest = home / "results" / "pt-sandbox" / "sandbox-scan" / "manifest.json"
        assert json.loads(manifest.read_text())["scan_id"] == "sandbox-scan"
        assert [r.id for r in sandbox.runs_of("process-scan")] == [run_id]
        assert "COMPLETED" in {s.type.value for s in sandbox.states(run_id)}
        assert Path(home / "logs" / "server.log").is_file()
    assert not home.exists()
    assert not sandbox.healthy()
