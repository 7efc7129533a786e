"""The platform webhook's events: the contract (``schemas/webhook-event.schema.json``), how a
flow run's state maps to one, and the event id both delivery paths agree on.

    state of the run          event              reason                          cause
    Completed                 scan.completed     -                               -
    Rejected [patient's code] scan.rejected      unreadable_video, too_short...  patient
    Failed, [our code]        scan.failed        not_found, model_error, ...     its code's
    Failed, no code           scan.failed        internal_error                  internal
    TimedOut                  scan.failed        the code in the message, else   its code's
                                                 stalled
    Cancelling / Cancelled    scan.failed        internal_error (state.name      internal
                                                 says Cancelled)
    Crashed                   scan.crashed       crashed                         infrastructure
    Running / Pending too long  scan.stalled     stalled                         infrastructure

Schema version 2 (was 1): ``cause`` and ``attempt`` added; ``not_found`` and
``access_denied`` are ``scan.failed`` with cause ``integration`` (they were ``scan.rejected``:
a missing or forbidden upload is not the patient's to fix).

``event_id`` is a UUIDv5 of the flow-run id and the outcome (``completed``, ``failed``,
``crashed``, ``cancelled``, ``stalled-running``, ``stalled-pending``), so the state hook,
the automation and every retry of either send the same id for one outcome.

Regenerate the schema: ``python -m scanflow.contracts.events > schemas/webhook-event.schema.json``.
"""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from cv.errors import Cause, Reason, reason_from_message

SCHEMA_VERSION: Literal["2"] = "2"
# The name of the Failed state a rejected scan ends in: the UI and automations tell it apart
# (its event is prefect.flow-run.Rejected, not prefect.flow-run.Failed).
REJECTED_STATE = "Rejected"
# Fixed namespace of scanflow's event ids (never change it: ids would change with it).
EVENT_ID_NAMESPACE = uuid.UUID("6d0b5a3e-8f0c-5c1e-9a57-2f2d6f0c7a11")
MAX_MESSAGE = 2000

StallPhase = Literal["running", "pending"]
Source = Literal["hook", "automation", "reconciler"]


class EventType(enum.StrEnum):
    COMPLETED = "scan.completed"
    REJECTED = "scan.rejected"
    FAILED = "scan.failed"
    CRASHED = "scan.crashed"
    STALLED = "scan.stalled"


class RunState(BaseModel):
    """The flow-run state the event reports (the last one seen, for a stall)."""

    model_config = ConfigDict(extra="forbid")

    type: str = Field(description="Prefect state type, e.g. COMPLETED, FAILED, CRASHED.")
    name: str = Field(description="Prefect state name, e.g. Completed, TimedOut, Cancelled.")
    message: str | None = None
    timestamp: datetime


class Links(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run: str = Field(description="The flow run in the Prefect UI.")
    manifest: str | None = Field(None, description="The results' manifest (scan.completed).")
    report: str | None = Field(
        None, description="The scan's report.html beside the manifest (scan.completed)."
    )


class WebhookEvent(BaseModel):
    """One outcome of one scan, as POSTed to the platform (signed: scanflow/notify/signing.py)."""

    model_config = ConfigDict(extra="forbid", title="ScanflowWebhookEvent")

    schema_version: Literal["2"] = SCHEMA_VERSION
    event_id: uuid.UUID = Field(
        description="The same for every copy of one outcome (retries, both paths): "
        "deduplicate on it."
    )
    type: EventType
    occurred_at: datetime = Field(description="When the outcome happened.")
    scan_id: str | None
    patient_id: str | None = Field(description="Pseudonymous patient id.")
    flow_run_id: uuid.UUID
    reason: Reason | None = Field(description="Reason code (docs/design.md); null when completed.")
    cause: Cause | None = Field(
        description="Whose the failure is (patient, infrastructure, integration, model, "
        "internal: docs/design.md); null when completed."
    )
    attempt: int | None = Field(
        None,
        ge=1,
        description="Which attempt of the run this outcome ends: above 1 when a crashed run "
        "was retried.",
    )
    message: str | None = Field(description="What happened, for people.")
    guidance: str | None = Field(None, description="What the patient should do (rejected).")
    duration_s: float | None = Field(description="From the run's start to the outcome.")
    state: RunState
    links: Links
    source: Source = Field(
        description="Which path sent this copy: the flow's state hook, the server's "
        "automation (notify-outcome), or the reconciler (an outcome never acknowledged)."
    )


def event_id_for(flow_run_id: uuid.UUID | str, outcome: str) -> uuid.UUID:
    """The id of one outcome of one flow run, the same wherever it is computed."""
    return uuid.uuid5(EVENT_ID_NAMESPACE, f"{uuid.UUID(str(flow_run_id))}:{outcome}")


def outcome_of(state_type: str) -> str:
    """The outcome key of a final (or cancelling) state type."""
    key = state_type.upper()
    if key == "CANCELLING":
        return "cancelled"
    if key not in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}:
        raise ValueError(f"state type {state_type} is not an outcome")
    return key.lower()


def classify(
    state_type: str, state_name: str, message: str | None
) -> tuple[EventType, Reason | None]:
    """The event type and reason code for a final state."""
    outcome = outcome_of(state_type)
    found = reason_from_message(message)
    if outcome == "completed":
        return EventType.COMPLETED, None
    if outcome == "crashed":
        return EventType.CRASHED, Reason.CRASHED
    if outcome == "cancelled":
        return EventType.FAILED, Reason.INTERNAL_ERROR
    if found is None:
        return (
            EventType.FAILED,
            Reason.STALLED if state_name == "TimedOut" else Reason.INTERNAL_ERROR,
        )
    return (EventType.REJECTED if found.is_patient_fixable else EventType.FAILED), found


def _clean_message(message: str | None, reason: Reason | None) -> str | None:
    if not message:
        return None
    if reason is not None:
        marker = f"[{reason.value}]"
        if marker in message:
            message = message.split(marker, 1)[1].strip() or message
    return message[:MAX_MESSAGE]


def _aware(ts: datetime) -> datetime:
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def build_event(
    flow_run: Any,
    state: Any,
    *,
    source: Source,
    run_url: str,
    manifest_uri: str | None = None,
    stalled: StallPhase | None = None,
    stall_limit_s: float | None = None,
    guidance: str | None = None,
) -> WebhookEvent:
    """The event for ``state`` of ``flow_run`` (Prefect client objects).

    With ``stalled``, ``state`` is the Running or Pending state that lasted too long and the
    event is ``scan.stalled``, dated when the run crossed ``stall_limit_s``.
    """
    state_type = state.type.value if hasattr(state.type, "value") else str(state.type)
    entered = _aware(state.timestamp)
    params = flow_run.parameters or {}
    if stalled is not None:
        limit = float(stall_limit_s or 0)
        event_type: EventType = EventType.STALLED
        reason: Reason | None = Reason.STALLED
        outcome = f"stalled-{stalled}"
        occurred = entered + timedelta(seconds=limit)
        message: str | None = (
            f"{'running' if stalled == 'running' else 'waiting for capacity (Pending)'} "
            f"for more than {limit:.0f} s"
        )
    else:
        event_type, reason = classify(state_type, state.name, state.message)
        outcome = outcome_of(state_type)
        occurred = entered
        message = _clean_message(state.message, reason)
        if outcome == "cancelled":
            message = f"cancelled: {message or 'no message'}"
    start = flow_run.start_time
    duration = (occurred - _aware(start)).total_seconds() if start else None
    return WebhookEvent(
        event_id=event_id_for(flow_run.id, outcome),
        type=event_type,
        occurred_at=occurred,
        scan_id=params.get("scan_id"),
        patient_id=params.get("patient_id"),
        flow_run_id=flow_run.id,
        reason=reason,
        cause=reason.cause if reason is not None else None,
        attempt=max(int(flow_run.run_count), 1) if getattr(flow_run, "run_count", None) else None,
        message=message,
        guidance=guidance if event_type is EventType.REJECTED else None,
        duration_s=round(max(duration, 0.0), 3) if duration is not None else None,
        state=RunState(type=state_type, name=state.name, message=state.message, timestamp=entered),
        links=Links(
            run=run_url,
            manifest=manifest_uri if event_type is EventType.COMPLETED else None,
            report=(
                manifest_uri.rsplit("/", 1)[0] + "/report.html"
                if manifest_uri and event_type is EventType.COMPLETED
                else None
            ),
        ),
        source=source,
    )


# python -m scanflow.contracts.events > schemas/webhook-event.schema.json
if __name__ == "__main__":
    import json

    print(json.dumps(WebhookEvent.model_json_schema(), indent=2))
