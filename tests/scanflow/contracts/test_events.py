"""scanflow.contracts.events: how a flow run's state becomes a webhook event (type, reason,
message, guidance, links, timing), the event id both delivery paths agree on, and the
published JSON Schema. Built from Prefect's own state and flow-run objects; no server."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import jsonschema
import pytest
from prefect.client.schemas.objects import FlowRun, State, StateType
from prefect.states import Cancelled, Completed, Crashed, Failed, Pending, Running

from cv.errors import Reason
from scanflow.contracts.events import (
    MAX_MESSAGE,
    EventType,
    WebhookEvent,
    build_event,
    classify,
    event_id_for,
    outcome_of,
)
from scanflow.settings import REPO_ROOT
from tests.support.events import scan_event, scan_run

SCHEMA = REPO_ROOT / "schemas" / "webhook-event.schema.json"


def _valid(event: WebhookEvent) -> WebhookEvent:
    jsonschema.validate(json.loads(event.model_dump_json()), json.loads(SCHEMA.read_text()))
    return event


@pytest.mark.parametrize(
    ("state", "event_type", "reason"),
    [
        (Completed(), EventType.COMPLETED, None),
        (
            Failed(message="Flow run encountered an exception: RejectedScan: [too_short] 1.0 s"),
            EventType.REJECTED,
            Reason.TOO_SHORT,
        ),
        (
            Failed(message="...ProcessingError: [storage_error] s3 is down"),
            EventType.FAILED,
            Reason.STORAGE_ERROR,
        ),
        (Failed(message="RuntimeError: boom"), EventType.FAILED, Reason.INTERNAL_ERROR),
        (Failed(name="TimedOut", message="timed out"), EventType.FAILED, Reason.STALLED),
        (Crashed(message="exit code -9"), EventType.CRASHED, Reason.CRASHED),
        (Cancelled(message="by an operator"), EventType.FAILED, Reason.INTERNAL_ERROR),
    ],
)
def test_states_map_to_events_and_reasons(
    state: Any, event_type: EventType, reason: Reason | None
) -> None:
    event = scan_event(state)
    assert (event.type, event.reason) == (event_type, reason)
    jsonschema.validate(json.loads(event.model_dump_json()), json.loads(SCHEMA.read_text()))


def test_the_event_id_is_the_same_from_both_paths_and_differs_per_outcome() -> None:
    run = scan_run()
    failed = Failed(message="[too_short] 1.0 s")
    hook = build_event(run, failed, source="hook", run_url="u")
    automation = build_event(run, failed, source="automation", run_url="u")
    assert hook.event_id == automation.event_id == event_id_for(run.id, "failed")
    stalled = build_event(
        run, Running(), source="automation", run_url="u", stalled="running", stall_limit_s=60
    )
    assert stalled.type is EventType.STALLED and stalled.event_id != hook.event_id
    assert stalled.event_id == event_id_for(str(run.id), "stalled-running")
    assert event_id_for(run.id, "crashed") != event_id_for(scan_run().id, "crashed")


def test_a_rejection_carries_the_message_and_guidance() -> None:
    event = scan_event(
        Failed(message="RejectedScan: [too_few_usable_frames] 3 of 75 frames usable"),
        guidance="Hold the scope closer.",
    )
    assert event.message == "3 of 75 frames usable"
    assert event.guidance == "Hold the scope closer."
    assert event.duration_s is not None and 41 <= event.duration_s <= 60


def test_the_schema_file_matches_the_model() -> None:
    assert json.loads(SCHEMA.read_text()) == WebhookEvent.model_json_schema(), (
        "regenerate with: python -m scanflow.contracts.events > schemas/webhook-event.schema.json"
    )


# -- outcomes and reasons ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state_type", "outcome"),
    [
        ("COMPLETED", "completed"),
        ("Failed", "failed"),
        ("crashed", "crashed"),
        ("CANCELLED", "cancelled"),
        ("CANCELLING", "cancelled"),  # the worker reports a cancellation while it happens
    ],
)
def test_final_state_types_are_outcomes(state_type: str, outcome: str) -> None:
    assert outcome_of(state_type) == outcome


@pytest.mark.parametrize("state_type", ["RUNNING", "PENDING", "SCHEDULED", "PAUSED", ""])
def test_other_state_types_are_not_outcomes(state_type: str) -> None:
    with pytest.raises(ValueError, match=f"state type {state_type} is not an outcome"):
        outcome_of(state_type)


@pytest.mark.parametrize(
    ("state_type", "name", "message", "expected"),
    [
        ("FAILED", "TimedOut", "[storage_error] s3 slow", (EventType.FAILED, Reason.STORAGE_ERROR)),
        ("FAILED", "TimedOut", None, (EventType.FAILED, Reason.STALLED)),
        ("FAILED", "Failed", None, (EventType.FAILED, Reason.INTERNAL_ERROR)),
        ("FAILED", "Failed", "[not_found] gone", (EventType.FAILED, Reason.NOT_FOUND)),
        ("FAILED", "Rejected", "[too_short] 1 s", (EventType.REJECTED, Reason.TOO_SHORT)),
        ("FAILED", "Failed", "x [model_error] y", (EventType.FAILED, Reason.MODEL_ERROR)),
        ("FAILED", "Failed", "[no_such_code] x", (EventType.FAILED, Reason.INTERNAL_ERROR)),
        # a code in the message of a crash, a cancellation or a success changes nothing
        ("CRASHED", "Crashed", "[too_short] 1 s", (EventType.CRASHED, Reason.CRASHED)),
        ("CANCELLED", "Cancelled", "[too_short]", (EventType.FAILED, Reason.INTERNAL_ERROR)),
        ("COMPLETED", "Completed", "[too_short] x", (EventType.COMPLETED, None)),
    ],
)
def test_classify_reads_the_code_only_where_it_decides(
    state_type: str, name: str, message: str | None, expected: tuple[EventType, Reason | None]
) -> None:
    assert classify(state_type, name, message) == expected


# -- event ids -----------------------------------------------------------------------------


def test_event_ids_never_change_between_releases() -> None:
    """The platform deduplicates on them: the namespace and the name format are fixed."""
    run_id = "00000000-0000-0000-0000-000000000001"
    assert str(event_id_for(run_id, "completed")) == "7dbd7ba3-1a57-5272-bd9a-a20fd6f44176"
    assert event_id_for(uuid.UUID(run_id), "completed") == event_id_for(run_id.upper(), "completed")
    assert event_id_for(run_id, "completed").version == 5
    with pytest.raises(ValueError):
        event_id_for("not-a-uuid", "completed")


# -- the event -----------------------------------------------------------------------------


def test_a_pending_stall_is_dated_when_it_crossed_the_limit() -> None:
    run = scan_run()
    waiting = Pending()
    event = _valid(
        build_event(
            run,
            waiting,
            source="automation",
            run_url="u",
            manifest_uri="file:///r/pt-4417/scan-7/manifest.json",
            stalled="pending",
            stall_limit_s=900,
            guidance="never for a stall",
        )
    )
    assert (event.type, event.reason) == (EventType.STALLED, Reason.STALLED)
    assert event.event_id == event_id_for(run.id, "stalled-pending")
    assert event.occurred_at == waiting.timestamp + timedelta(seconds=900)
    assert event.message == "waiting for capacity (Pending) for more than 900 s"
    assert event.state.type == "PENDING" and event.source == "automation"
    assert event.links.manifest is None and event.guidance is None
    assert event.duration_s is not None and 941 <= event.duration_s <= 960


def test_a_running_stall_says_running() -> None:
    event = scan_event(Running(), stalled="running", stall_limit_s=1800.4)
    assert event.message == "running for more than 1800 s"


def test_a_completed_event_links_the_manifest_and_carries_no_reason() -> None:
    event = _valid(
        scan_event(Completed(), manifest_uri="s3://r/pt-4417/scan-7/manifest.json", guidance="x")
    )
    assert event.links.manifest == "s3://r/pt-4417/scan-7/manifest.json"
    assert event.reason is None and event.message is None and event.guidance is None
    assert (event.scan_id, event.patient_id) == ("scan-7", "pt-4417")


def test_a_failure_has_no_manifest_link_and_no_patient_guidance() -> None:
    event = scan_event(
        Failed(message="ProcessingError: [storage_error] S3 answered SlowDown"),
        manifest_uri="s3://r/pt-4417/scan-7/manifest.json",
        guidance="Re-scan.",
    )
    assert event.links.manifest is None and event.guidance is None
    assert event.message == "S3 answered SlowDown"
    assert event.state.message == "ProcessingError: [storage_error] S3 answered SlowDown"


@pytest.mark.parametrize(
    ("message", "said"),
    [("by an operator", "cancelled: by an operator"), (None, "cancelled: no message")],
)
def test_a_cancellation_says_so(message: str | None, said: str) -> None:
    event = _valid(scan_event(Cancelled(message=message)))
    assert event.message == said and event.state.name == "Cancelled"
    assert event.event_id == event_id_for(event.flow_run_id, "cancelled")


def test_long_messages_are_cut_and_codeless_ones_kept_whole() -> None:
    event = scan_event(Failed(message="[internal_error] " + "x" * 5000))
    assert event.message == "x" * MAX_MESSAGE
    assert scan_event(Failed(message="RuntimeError: boom")).message == "RuntimeError: boom"
    assert scan_event(Failed(message="[too_short]")).message == "[too_short]"  # nothing after it


def test_naive_times_are_utc_and_durations_never_negative() -> None:
    run = scan_run()
    run.start_time = datetime.now(UTC) + timedelta(minutes=5)  # a clock ahead of the state's
    state = State(type=StateType.COMPLETED, name="Completed", timestamp=datetime(2024, 5, 6, 7))
    event = _valid(scan_event(state, run=run))
    assert event.occurred_at == datetime(2024, 5, 6, 7, tzinfo=UTC)
    assert event.state.timestamp.tzinfo is not None
    assert event.duration_s == 0.0


def test_a_run_without_start_or_parameters_still_makes_an_event() -> None:
    run = FlowRun(id=uuid.uuid4(), flow_id=uuid.uuid4(), name="x", parameters={})
    event = _valid(scan_event(Crashed(message="exit code -9"), run=run))
    assert event.duration_s is None and event.scan_id is None and event.patient_id is None
    assert event.type is EventType.CRASHED and event.message == "exit code -9"
