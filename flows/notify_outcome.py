"""notify-outcome: the guaranteed path. The server's automations (deployments/automations.py)
run this deployment with the id of a process-scan run that ended, crashed or stalled; it
reads the run from the API, builds the same event (same ``event_id``) the state hook would,
signs it and delivers it with task retries, and posts to Slack unless the hook already did.

It runs on its own small work pool (``notify``), so a full or dead scan pool does not hold
back the news of it, and every delivery is a flow run visible in the Prefect UI.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from scanflow.contracts.events import WebhookEvent, build_event
from scanflow.notify.senders import (
    DeliveryError,
    RetryPolicy,
    manifest_for,
    resolve_targets,
    run_url,
    send_platform,
    send_slack,
    tag_cause,
)
from scanflow.settings import Settings

Trigger = Literal["final", "stalled-running", "stalled-pending"]
# Each task attempt tries a few times quickly (ATTEMPT); then the task retries, soon at
# first and then once a minute for about two hours, so that delivery resumes within about
# a minute (90 s at worst, with jitter) of the platform coming back, however long it was
# down. An exponential schedule would wait longer and longer: after a 20-minute outage the
# next try could be 20 minutes away. The retries wait in this run's process, which holds
# one slot of the notify pool; outcomes beyond the pool's limit wait Scheduled, persisted,
# and deliver as slots free up.
ATTEMPT = RetryPolicy(attempts=4, base_s=1.0, cap_s=8.0, deadline_s=20.0)
PLATFORM_RETRY_DELAYS_S: list[float] = [5, 10, 20, 40, 60]  # Prefect repeats the last one
PLATFORM_RETRIES = 120
SLACK_CLAIM_WAIT_S = 120.0
_FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def _retry_unless_permanent(task: Any, task_run: Any, state: Any) -> bool:
    try:
        state.result()
    except DeliveryError as exc:
        return not exc.permanent
    except Exception:  # noqa: BLE001 - an unknown error may pass
        return True
    return False


def parse_run_id(value: str) -> uuid.UUID:
    """A flow-run id, bare or as an event resource id (``prefect.flow-run.<uuid>``)."""
    return uuid.UUID(value.removeprefix("prefect.flow-run."))


@task(name="read-outcome", retries=3, retry_delay_seconds=[1, 5, 15], cache_policy=NO_CACHE)
def read_outcome(
    flow_run_id: uuid.UUID, trigger: Trigger, state_id: str | None, settings: Settings
) -> WebhookEvent | None:
    """Build the event for the run's outcome; None when there is nothing (left) to report."""
    from prefect.client.orchestration import get_client

    log = get_run_logger()
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
        current = run.state
        state = current
        if state_id and (current is None or str(current.id) != state_id):
            states = client.read_flow_run_states(flow_run_id)
            state = next((s for s in states if str(s.id) == state_id), current)
    if state is None:
        log.warning("flow run %s has no state", flow_run_id)
        return None
    if trigger == "final":
        if state.type.value not in _FINAL:
            log.warning("flow run %s is %s, not final: nothing to report", run.id, state.name)
            return None
        event = build_event(
            run,
            state,
            source="automation",
            run_url=run_url(run.id),
            manifest_uri=manifest_for(settings, run.parameters or {}),
        )
        tag_cause(run, event)
        return event
    phase: Literal["running", "pending"] = "running" if trigger == "stalled-running" else "pending"
    if current is None or current.id != state.id or current.type.value != phase.upper():
        log.info("flow run %s moved on (%s): no longer stalled", run.id, current and current.name)
        return None
    limit = settings.stall_after_s if phase == "running" else settings.pending_after_s
    return build_event(
        run,
        state,
        source="automation",
        run_url=run_url(run.id),
        stalled=phase,
        stall_limit_s=limit,
    )


@task(
    name="deliver-to-platform",
    retries=PLATFORM_RETRIES,
    retry_delay_seconds=PLATFORM_RETRY_DELAYS_S,
    retry_jitter_factor=0.5,
    retry_condition_fn=_retry_unless_permanent,
    cache_policy=NO_CACHE,
)
def deliver_to_platform(event: WebhookEvent, settings: Settings) -> int | None:
    """POST the signed event to the platform."""
    delivery = send_platform(event, resolve_targets(settings), ATTEMPT, get_run_logger())
    return delivery.status if delivery else None


@task(
    name="post-to-slack",
    retries=5,
    retry_delay_seconds=exponential_backoff(backoff_factor=10),
    retry_jitter_factor=0.5,
    retry_condition_fn=_retry_unless_permanent,
    cache_policy=NO_CACHE,
)
def post_to_slack(event: WebhookEvent, settings: Settings) -> int | None:
    """Post the Slack message, unless the state hook has (or is about to)."""
    delivery = send_slack(
        event,
        resolve_targets(settings),
        ATTEMPT,
        get_run_logger(),
        claim_wait_s=SLACK_CLAIM_WAIT_S,
    )
    return delivery.status if delivery else None


@flow(name="notify-outcome", flow_run_name="{trigger}", persist_result=False)
def notify_outcome(
    flow_run_id: str, trigger: Trigger = "final", state_id: str | None = None
) -> str | None:
    """Report one outcome of a process-scan run; returns the event id, if any."""
    settings = Settings()
    event = read_outcome(parse_run_id(flow_run_id), trigger, state_id, settings)
    if event is None:
        return None
    platform = deliver_to_platform.submit(event, settings)
    slack = post_to_slack.submit(event, settings)
    platform.result()
    slack.result()
    return str(event.event_id)
