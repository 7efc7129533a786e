"""scanflow.notify.hooks.send_outcome: the fast path. Small flows with the hooks run on the
session's Prefect server and report to Receivers on loopback (the platform, verifying
signatures, and Slack); send_outcome is also called as the worker calls it for a crash, with
a flow run read back from the server. It delivers the run's final outcome, and never raises
nor changes the run's state, whatever goes wrong."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.states import Crashed, Running

from cv.errors import Reason, scan_error
from scanflow.contracts.events import event_id_for
from scanflow.local.loopback import Receiver
from scanflow.notify.hooks import send_outcome

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_server")]

SECRET = "whsec-hooks-" + uuid.uuid4().hex


@pytest.fixture
def platform() -> Iterator[Receiver]:
    receiver = Receiver("platform", secret=SECRET).start()
    yield receiver
    receiver.stop()


@pytest.fixture
def slack() -> Iterator[Receiver]:
    receiver = Receiver("slack").start()
    yield receiver
    receiver.stop()


@pytest.fixture
def targets(
    platform: Receiver, slack: Receiver, results_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Settings as a deployment gives them (read by the hook when it runs)."""
    monkeypatch.setenv("SCANFLOW_PLATFORM_WEBHOOK_URL", platform.url + "/scanflow/events")
    monkeypatch.setenv("SCANFLOW_PLATFORM_SIGNING_SECRET", SECRET)
    monkeypatch.setenv("SCANFLOW_SLACK_WEBHOOK_URL", slack.url + "/services/T0/B0/x")
    monkeypatch.setenv("SCANFLOW_SLACK_EVENTS", json.dumps(["scan.rejected", "scan.failed"]))
    return results_dir


@flow(
    name="hooks-test-scan",
    on_completion=[send_outcome],
    on_failure=[send_outcome],
    persist_result=False,
)
def scan(scan_id: str, patient_id: str, fail: str | None = None) -> str:
    if fail == "too_short":
        raise scan_error(Reason.TOO_SHORT, "1.2 s of video", guidance="Scan for at least 3 s.")
    if fail == "bug":
        raise RuntimeError("a bug in the flow")
    return "done"


def _run(scan_id: str, fail: str | None = None) -> tuple[Any, uuid.UUID]:
    state = scan(scan_id, "pt-hooks", fail, return_state=True)
    return state, state.state_details.flow_run_id


def _for(scan_id: str) -> Any:
    return lambda body: body.get("scan_id") == scan_id or f": {scan_id} (" in body.get("text", "")


def test_a_completed_run_is_reported_with_its_manifest(
    targets: Path, platform: Receiver, slack: Receiver
) -> None:
    state, run_id = _run("hooks-done")
    assert state.is_completed()
    [got] = platform.wait_for(_for("hooks-done"), timeout=10)
    event = got.json
    assert got.verified == "ok" and got.path == "/scanflow/events"
    assert event["type"] == "scan.completed" and event["source"] == "hook"
    assert event["event_id"] == str(event_id_for(run_id, "completed"))
    assert event["flow_run_id"] == str(run_id) and event["patient_id"] == "pt-hooks"
    assert event["links"]["manifest"] == (targets / "pt-hooks/hooks-done/manifest.json").as_uri()
    assert event["links"]["run"].endswith(f"/runs/flow-run/{run_id}")
    assert event["duration_s"] is not None and 0 <= event["duration_s"] < 60
    assert slack.all(_for("hooks-done")) == []  # completed is not a Slack event here


def test_a_rejected_scan_carries_the_code_message_and_guidance(
    targets: Path, platform: Receiver, slack: Receiver
) -> None:
    state, run_id = _run("hooks-short", fail="too_short")
    assert state.is_failed()
    [got] = platform.wait_for(_for("hooks-short"), timeout=10)
    event = got.json
    assert (event["type"], event["reason"]) == ("scan.rejected", "too_short")
    assert (event["cause"], event["attempt"], event["schema_version"]) == ("patient", 1, "2")
    assert event["message"] == "1.2 s of video"
    assert event["guidance"] == "Scan for at least 3 s."
    assert event["links"]["manifest"] is None
    [posted] = slack.wait_for(_for("hooks-short"), timeout=10)
    assert posted.json["text"] == "Scan rejected: hooks-short (too_short)"
    assert "pt-hooks" not in posted.body.decode()


def test_a_platform_refusing_the_event_changes_nothing_for_the_run_or_slack(
    targets: Path, platform: Receiver, slack: Receiver
) -> None:
    platform.policies.append(lambda event: 400)  # the platform rejects everything
    state, _ = _run("hooks-refused", fail="bug")
    assert state.is_failed() and "a bug in the flow" in (state.message or "")
    assert [r.status for r in platform.all(_for("hooks-refused"))] == [400]  # not retried
    [posted] = slack.wait_for(_for("hooks-refused"), timeout=10)
    assert posted.json["text"] == "Scan failed: hooks-refused (internal_error)"


def test_without_a_signing_secret_nothing_unsigned_is_sent_and_the_run_completes(
    targets: Path, platform: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SCANFLOW_PLATFORM_SIGNING_SECRET")
    monkeypatch.setenv("SCANFLOW_PLATFORM_SIGNING_SECRET_BLOCK", f"absent-{uuid.uuid4().hex}")
    state, _ = _run("hooks-unsigned")
    assert state.is_completed()
    assert platform.all(_for("hooks-unsigned")) == []


def test_a_crash_reported_by_the_worker_is_delivered(
    targets: Path, platform: Receiver, slack: Receiver
) -> None:
    """on_crashed runs in the worker, with the run as the server has it."""
    _, run_id = _run("hooks-crash")
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(run_id)
    crashed = Crashed(message="Flow run infrastructure exited with non-zero status code -9.")
    assert send_outcome(scan, flow_run, crashed) is None
    [got] = platform.wait_for(lambda e: e.get("type") == "scan.crashed", timeout=10)
    event = got.json
    assert event["reason"] == "crashed" and event["scan_id"] == "hooks-crash"
    assert event["event_id"] == str(event_id_for(run_id, "crashed"))
    assert event["guidance"] is None
    assert slack.all(lambda e: "crashed" in e.get("text", "")) == []  # not a Slack event here


def test_a_state_that_is_no_outcome_is_logged_not_raised(
    targets: Path, platform: Receiver, slack: Receiver
) -> None:
    _, run_id = _run("hooks-odd")
    assert len(platform.wait_for(_for("hooks-odd"), timeout=10)) == 1  # its completion
    before = len(platform.records)
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(run_id)
    assert send_outcome(scan, flow_run, Running()) is None  # build_event refuses it inside
    assert len(platform.records) == before and slack.records == []
