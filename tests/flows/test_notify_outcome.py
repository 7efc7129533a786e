"""notify-outcome's parts (flows/notify_outcome.py): parse_run_id; read_outcome against real
flow runs on the session's Prefect server (runs of a small scan-like flow that completed or
was rejected, and runs put in Running or Pending through the API, as a stalled run stays);
deliver_to_platform to a loopback Receiver (scanflow.local.loopback) that verifies the
signature as the platform does; and the flow itself, run in this process.

The tasks call get_run_logger: each is run inside a small flow on the session server.
Everything but parse_run_id is an integration test.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import State
from prefect.states import Completed, Pending, Running

from cv.errors import Reason, RejectedScan
from flows.notify_outcome import (
    Trigger,
    deliver_to_platform,
    notify_outcome,
    parse_run_id,
    read_outcome,
)
from scanflow.contracts.events import EventType, WebhookEvent, event_id_for
from scanflow.local.loopback import Receiver
from scanflow.notify.signing import HEADER
from scanflow.settings import Settings

SECRET = "test-signing-secret"
RESULTS = "file:///srv/results"
REJECTION = "the scan is 1.0 s long; at least 3.0 s is needed."


def test_a_run_id_is_read_bare_or_as_an_event_resource_id() -> None:
    run_id = uuid.uuid4()
    assert parse_run_id(str(run_id)) == run_id
    assert parse_run_id(f"prefect.flow-run.{run_id}") == run_id
    assert parse_run_id(str(run_id).upper()) == run_id
    for bad in ["", "prefect.flow-run.", f"prefect.task-run.{run_id}", f"{run_id}x"]:
        with pytest.raises(ValueError):
            parse_run_id(bad)


# -- real runs on the session server --------------------------------------------------------


@flow(name="scan-like", persist_result=False)
def _scan_like(scan_id: str, patient_id: str, reject: bool = False) -> str:
    if reject:
        raise RejectedScan(Reason.TOO_SHORT, REJECTION)
    return "done"


def _finished_run(scan_id: str, reject: bool = False) -> uuid.UUID:
    state = _scan_like(scan_id, "pt-n", reject, return_state=True)
    run_id = state.state_details.flow_run_id
    assert run_id is not None
    return run_id


def _run_in(state: State, scan_id: str) -> tuple[uuid.UUID, State]:
    """A run of the scan-like flow created through the API and put in ``state``."""
    with get_client(sync_client=True) as client:
        run = client.create_flow_run(
            _scan_like, name=scan_id, parameters={"scan_id": scan_id, "patient_id": "pt-n"}
        )
        client.set_flow_run_state(run.id, state, force=True)
        current = client.read_flow_run(run.id).state
    assert current is not None and current.type == state.type
    return run.id, current


def _states(run_id: uuid.UUID) -> list[State]:
    with get_client(sync_client=True) as client:
        return list(client.read_flow_run_states(run_id))


def _settings(**extra: Any) -> Settings:
    return Settings(results_uri=RESULTS, stall_after_s=600, pending_after_s=120, **extra)


@flow(name="read-outcome-test", persist_result=False)
def _read(
    run_id: uuid.UUID, trigger: Trigger, state_id: str | None, settings: Settings
) -> WebhookEvent | None:
    return read_outcome(run_id, trigger, state_id, settings)


@pytest.mark.integration
@pytest.mark.usefixtures("prefect_server")
def test_a_completed_run_is_reported_completed_with_its_manifest() -> None:
    run_id = _finished_run("scan-n1")
    event = _read(run_id, "final", None, _settings())
    assert event is not None
    assert event.type is EventType.COMPLETED and event.reason is None
    assert event.event_id == event_id_for(run_id, "completed")  # what the hook sends too
    assert (event.scan_id, event.patient_id, event.flow_run_id) == ("scan-n1", "pt-n", run_id)
    assert event.source == "automation"
    assert event.links.manifest == f"{RESULTS}/pt-n/scan-n1/manifest.json"
    assert event.links.run.endswith(f"/runs/flow-run/{run_id}")
    assert event.state.type == "COMPLETED"
    assert event.duration_s is not None and 0 <= event.duration_s < 60


@pytest.mark.integration
@pytest.mark.usefixtures("prefect_server")
def test_a_rejected_run_is_reported_with_its_reason_code_and_message() -> None:
    run_id = _finished_run("scan-n2", reject=True)
    event = _read(run_id, "final", None, _settings())
    assert event is not None
    assert (event.type, event.reason) == (EventType.REJECTED, Reason.TOO_SHORT)
    assert event.message == REJECTION  # the code's marker taken out
    assert event.event_id == event_id_for(run_id, "failed")
    assert event.links.manifest is None


@pytest.mark.integration
@pytest.mark.usefixtures("prefect_server")
def test_the_state_named_by_the_trigger_is_the_one_reported() -> None:
    run_id = _finished_run("scan-n3")
    states = {s.type.value: s for s in _states(run_id)}
    final = _read(run_id, "final", str(states["COMPLETED"].id), _settings())
    assert final is not None and final.state.type == "COMPLETED"
    # an automation that fired on the run's Running state: not an outcome, nothing sent
    assert _read(run_id, "final", str(states["RUNNING"].id), _settings()) is None


@pytest.mark.integration
@pytest.mark.usefixtures("prefect_server")
def test_a_run_still_running_is_reported_stalled_from_when_it_crossed_the_limit() -> None:
    run_id, running = _run_in(Running(), "scan-n4")
    event = _read(run_id, "stalled-running", str(running.id), _settings())
    assert event is not None
    assert (event.type, event.reason) == (EventType.STALLED, Reason.STALLED)
    assert event.event_id == event_id_for(run_id, "stalled-running")
    assert event.message == "running for more than 600 s"
    assert event.occurred_at == running.timestamp + timedelta(seconds=600)
    assert event.scan_id == "scan-n4" and event.links.manifest is None


@pytest.mark.integration
@pytest.mark.usefixtures("prefect_server")
def test_a_run_left_pending_is_reported_waiting_for_capacity() -> None:
    run_id, pending = _run_in(Pending(), "scan-n5")
    event = _read(run_id, "stalled-pending", str(pending.id), _settings())
    assert event is not None and event.type is EventType.STALLED
    assert event.event_id == event_id_for(run_id, "stalled-pending")
    assert event.message == "waiting for capacity (Pending) for more than 120 s"
    # a stall of the other phase is not this run's
    assert _read(run_id, "stalled-running", None, _settings()) is None


@pytest.mark.integration
@pytest.mark.usefixtures("prefect_server")
def test_a_run_that_moved_on_is_no_longer_reported_stalled() -> None:
    run_id, first = _run_in(Running(), "scan-n6")
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(run_id, Running(), force=True)  # a new attempt (a retry)
        again = client.read_flow_run(run_id).state
        assert again is not None and again.id != first.id
        # the stall of the first attempt is over; the second has a clock of its own
        assert _read(run_id, "stalled-running", str(first.id), _settings()) is None
        event = _read(run_id, "stalled-running", str(again.id), _settings())
        assert event is not None and event.occurred_at == again.timestamp + timedelta(seconds=600)
        client.set_flow_run_state(run_id, Completed(), force=True)
    assert _read(run_id, "stalled-running", str(again.id), _settings()) is None


# -- delivery to the platform ---------------------------------------------------------------


@pytest.fixture
def platform() -> Iterator[Receiver]:
    receiver = Receiver("platform", secret=SECRET).start()
    yield receiver
    receiver.stop()


@flow(name="deliver-test", persist_result=False)
def _deliver(event: WebhookEvent, settings: Settings) -> int | None:
    return deliver_to_platform(event, settings)


@flow(name="deliver-with-test", persist_result=False)
def _deliver_with(task: Any, event: WebhookEvent, settings: Settings) -> int | None:
    result: int | None = task(event, settings)
    return result


def _completed_event() -> WebhookEvent:
    event = _read(_finished_run("scan-d1"), "final", None, _settings())
    assert event is not None
    return event


@pytest.mark.integration
@pytest.mark.usefixtures("prefect_server")
def test_the_event_is_delivered_signed_with_the_runs_event_id(platform: Receiver) -> None:
    event = _completed_event()
    settings = _settings(
        platform_webhook_url=f"{platform.url}/hook", platform_signing_secret=SECRET
    )
    assert _deliver(event, settings) == 200
    (got,) = platform.records
    assert (got.path, got.status, got.verified) == ("/hook", 200, "ok")
    assert got.headers["X-Scanflow-Event-Id"] == str(event.event_id)
    assert got.headers["X-Scanflow-Event-Type"] == "scan.completed"
    assert got.headers[HEADER].startswith("t=")
    assert WebhookEvent.model_validate_json(got.body) == event


@pytest.mark.integration
@pytest.mark.usefixtures("prefect_server")
def test_a_platform_that_is_down_for_a_moment_gets_the_same_event_again(
    platform: Receiver,
) -> None:
    answers = [503]
    platform.policies.append(lambda _: answers.pop() if answers else None)
    event = _completed_event()
    settings = _settings(platform_webhook_url=platform.url, platform_signing_secret=SECRET)
    assert _deliver(event, settings) == 200
    assert [r.status for r in platform.records] == [503, 200]
    assert {r.headers["X-Scanflow-Event-Id"] for r in platform.records} == {str(event.event_id)}
    assert all(r.verified == "ok" for r in platform.records)  # each attempt signed anew


@pytest.mark.integration
@pytest.mark.usefixtures("prefect_server")
def test_a_refusal_by_the_platform_is_not_retried(platform: Receiver) -> None:
    event = _completed_event()
    # signed with another key than the platform's: it answers 400, as it would every time
    settings = _settings(platform_webhook_url=platform.url, platform_signing_secret="wrong")
    # the task's own retry condition, with one retry at once allowed (it would otherwise
    # wait minutes before a wrong retry, which is how the bug would show)
    quick = deliver_to_platform.with_options(retries=1, retry_delay_seconds=0)
    state = _deliver_with(quick, event, settings, return_state=True)
    assert state.is_failed()
    assert [r.status for r in platform.records] == [400]
    with get_client(sync_client=True) as client:
        (task_run,) = client.read_task_runs(
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[state.state_details.flow_run_id])
            )
        )
    assert task_run.run_count == 1 and task_run.state is not None
    assert task_run.state.is_failed()
    assert "HTTP 400" in str(task_run.state.message)


# -- the flow, in this process --------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.usefixtures("prefect_server")
def test_notify_outcome_delivers_an_outcome_once_and_ignores_a_run_still_going(
    platform: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCANFLOW_PLATFORM_WEBHOOK_URL", platform.url)
    monkeypatch.setenv("SCANFLOW_PLATFORM_SIGNING_SECRET", SECRET)
    run_id = _finished_run("scan-f1", reject=True)
    sent = notify_outcome(f"prefect.flow-run.{run_id}")
    assert sent == str(event_id_for(run_id, "failed"))
    (got,) = platform.events()
    assert (got["event_id"], got["type"], got["reason"]) == (sent, "scan.rejected", "too_short")
    running, _ = _run_in(Running(), "scan-f2")
    assert notify_outcome(str(running)) is None
    assert len(platform.records) == 1
