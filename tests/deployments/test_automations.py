"""scanflow's automations as code (deployments/automations.py): what it wants for given
settings, checked as data, and ``apply_automations`` against the session's real Prefect
server, with a notify-outcome deployment of this module's own (its own process pool, no
worker: nothing runs). Every automation this module creates is deleted when it is done, so
that none fires on another test's runs."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState, DoNothing, RunDeployment
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

from deployments.automations import (
    OWNER_TAG,
    PREFIX,
    Plan,
    apply_automations,
    desired_automations,
    normal_form,
)
from scanflow.settings import Settings

NOTIFY_ID = uuid.UUID("12345678-1234-5678-1234-567812345678")
NAMES = [
    "scanflow: scan completed",
    "scanflow: scan failed",
    "scanflow: scan crashed",
    "scanflow: scan cancelled",
    "scanflow: scan stalled",
    "scanflow: scan waiting for capacity",
    "scanflow: missed heartbeats mark crashed",
]


def _specs(value: Any) -> list[dict[str, Any]]:
    """A trigger's resource specification(s) as plain dicts."""
    return [v.model_dump() for v in (value if isinstance(value, list) else [value])]


def _by_name(settings: Settings) -> dict[str, AutomationCore]:
    return {a.name: a for a in desired_automations(settings, NOTIFY_ID)}


def test_the_automations_for_default_settings() -> None:
    wanted = desired_automations(Settings(crash_retries=0), NOTIFY_ID)
    assert [a.name for a in wanted] == NAMES
    assert all(a.tags == [OWNER_TAG] and a.name.startswith(PREFIX) for a in wanted)
    for automation in wanted:
        trigger = automation.trigger
        assert isinstance(trigger, EventTrigger)
        # only runs of process-scan: notify-outcome's own runs must not notify again
        flow = {"prefect.resource.role": "flow", "prefect.resource.name": "process-scan"}
        assert flow in _specs(trigger.match_related)
        assert _specs(trigger.match) == [{"prefect.resource.id": "prefect.flow-run.*"}]


def test_final_states_run_notify_outcome_at_once() -> None:
    wanted = _by_name(Settings(crash_retries=0))
    expects = {
        "scanflow: scan completed": {"prefect.flow-run.Completed"},
        "scanflow: scan failed": {
            "prefect.flow-run.Failed",
            "prefect.flow-run.Rejected",  # a rejection's Failed state has its own name
            "prefect.flow-run.TimedOut",
        },
        "scanflow: scan crashed": {"prefect.flow-run.Crashed"},
        "scanflow: scan cancelled": {"prefect.flow-run.Cancelled"},
    }
    for name, expect in expects.items():
        trigger = wanted[name].trigger
        assert isinstance(trigger, EventTrigger)
        assert trigger.expect == expect
        assert trigger.posture == Posture.Reactive and trigger.threshold == 1
        (action,) = wanted[name].actions
        assert isinstance(action, RunDeployment)
        assert action.source == "selected" and action.deployment_id == NOTIFY_ID
        assert action.parameters is not None
        assert action.parameters["trigger"] == "final"
        assert action.parameters["flow_run_id"] == {
            "__prefect_kind": "jinja",
            "template": "{{ event.resource.id }}",
        }
        assert action.parameters["state_id"]["template"] == "{{ event.id }}"


def test_silences_follow_the_settings() -> None:
    settings = Settings(
        stall_after_s=600, pending_after_s=120, heartbeat_grace_s=90, crash_retries=0
    )
    wanted = _by_name(settings)
    stalled = wanted["scanflow: scan stalled"]
    trigger = stalled.trigger
    assert isinstance(trigger, EventTrigger)
    assert trigger.posture == Posture.Proactive and trigger.within == timedelta(seconds=600)
    assert trigger.after == {"prefect.flow-run.Running", "prefect.flow-run.Retrying"}
    assert "prefect.flow-run.Completed" in trigger.expect
    assert "prefect.flow-run.Running" not in trigger.expect  # it is what opens the watch
    assert trigger.for_each == {"prefect.resource.id"}
    assert "600 s" in (stalled.description or "")
    assert stalled.actions[0].parameters["trigger"] == "stalled-running"  # type: ignore[union-attr]

    pending = wanted["scanflow: scan waiting for capacity"]
    assert isinstance(pending.trigger, EventTrigger)
    assert pending.trigger.after == {"prefect.flow-run.Pending"}
    assert pending.trigger.expect == {"prefect.flow-run.*"}
    assert pending.trigger.within == timedelta(seconds=120)
    assert pending.actions[0].parameters["trigger"] == "stalled-pending"  # type: ignore[union-attr]

    heartbeats = wanted["scanflow: missed heartbeats mark crashed"]
    trigger = heartbeats.trigger
    assert isinstance(trigger, EventTrigger)
    assert trigger.within == timedelta(seconds=90)
    assert "prefect.flow-run.heartbeat" in trigger.after
    # deployment runs only: a flow called in a process sends no heartbeats
    assert {"prefect.resource.role": "deployment"} in _specs(trigger.match_related)
    (action,) = heartbeats.actions
    assert isinstance(action, ChangeFlowRunState)
    assert action.state == StateType.CRASHED
    assert action.message is not None and action.message.startswith(
        "[crashed] no heartbeat for 90 s"
    )


def test_crash_retries_add_a_bounded_reschedule() -> None:
    assert "scanflow: crashed scan retried" not in _by_name(Settings(crash_retries=0))
    wanted = _by_name(Settings(crash_retries=2))
    assert list(wanted) == [*NAMES, "scanflow: crashed scan retried"]
    retry = wanted["scanflow: crashed scan retried"]
    trigger = retry.trigger
    assert isinstance(trigger, EventTrigger)
    assert trigger.expect == {"prefect.flow-run.Crashed"}
    # attempts 1 and 2 only: not a run that never ran (0), not a third crash
    assert _specs(trigger.match)[0]["prefect.run-count"] == ["1", "2"]
    assert retry.tags == [OWNER_TAG]
    (action,) = retry.actions
    assert isinstance(action, ChangeFlowRunState)
    assert (action.state, action.name) == (StateType.SCHEDULED, "AwaitingRetry")
    assert "2 time(s)" in (retry.description or "")


def test_normal_form_is_stable_and_ignores_order_and_id() -> None:
    first = [normal_form(a) for a in desired_automations(Settings(), NOTIFY_ID)]
    again = [normal_form(a) for a in desired_automations(Settings(), NOTIFY_ID)]
    assert first == again
    core = AutomationCore(
        name="x",
        tags=["b", "a"],
        trigger=EventTrigger(expect={"e.one", "e.two", "e.three"}),
        actions=[DoNothing()],
    )
    reordered = core.model_copy(update={"tags": ["a", "b"]})
    assert normal_form(core) == normal_form(reordered)
    assert normal_form(core)["trigger"]["expect"] == ["e.one", "e.three", "e.two"]
    assert "id" not in normal_form(core)
    changed = core.model_copy(update={"description": "new"})
    assert normal_form(changed) != normal_form(core)
    # a different notify deployment is a different action
    other = desired_automations(Settings(), uuid.uuid4())
    assert normal_form(other[0])["actions"] != first[0]["actions"]
    assert normal_form(other[0])["trigger"] == first[0]["trigger"]


def test_the_plan_prints_each_change_and_counts_them() -> None:
    plan = Plan(
        create=["scanflow: a"],
        update={"scanflow: b": ["description", "trigger"]},
        delete=["scanflow: c"],
        unchanged=["scanflow: d", "scanflow: e"],
    )
    assert plan.lines() == [
        "+ scanflow: a",
        "~ scanflow: b  (description, trigger)",
        "- scanflow: c",
        "= scanflow: d",
        "= scanflow: e",
    ]
    assert plan.changes == 3 and Plan().changes == 0


# -- against the session's server ----------------------------------------------------------


async def _make_notify_deployment(tag: str) -> uuid.UUID:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    async with get_client() as client:
        await client.create_work_pool(WorkPoolCreate(name=tag, type="process"))
        flow_id = await client.create_flow_from_name("notify-outcome")
        return await client.create_deployment(
            flow_id=flow_id,
            name=tag,
            entrypoint="flows/notify_outcome.py:notify_outcome",
            work_pool_name=tag,
        )


async def _automations() -> dict[str, Any]:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return {a.name: a for a in await client.read_automations()}


async def _create(*automations: AutomationCore) -> None:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        for automation in automations:
            await client.create_automation(automation)


async def _cleanup(tag: str, names: set[str]) -> None:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        for automation in await client.read_automations():
            if OWNER_TAG in (automation.tags or []) or automation.name in names:
                await client.delete_automation(automation.id)
        deployment = await client.read_deployment_by_name(f"notify-outcome/{tag}")
        await client.delete_deployment(deployment.id)
        await client.delete_work_pool(tag)


THEIRS = "someone else's automation"


@pytest.fixture
def notify(prefect_server: str) -> Iterator[tuple[Settings, uuid.UUID]]:
    """A notify-outcome deployment of this test's own, and settings that name it; the
    server's scanflow-managed automations (and 'theirs') are removed afterwards."""
    tag = "automations-" + uuid.uuid4().hex[:8]
    deployment_id = asyncio.run(_make_notify_deployment(tag))
    assert not [a for a in asyncio.run(_automations()).values() if OWNER_TAG in a.tags]
    try:
        yield Settings(notify_deployment=f"notify-outcome/{tag}", crash_retries=0), deployment_id
    finally:
        asyncio.run(_cleanup(tag, {THEIRS}))


@pytest.mark.integration
def test_apply_creates_then_leaves_them_and_dry_run_changes_nothing(
    notify: tuple[Settings, uuid.UUID],
) -> None:
    settings, deployment_id = notify
    dry = asyncio.run(apply_automations(settings, dry_run=True))
    assert dry.create == NAMES and dry.changes == 7
    assert not set(NAMES) & set(asyncio.run(_automations()))  # nothing was created

    created = asyncio.run(apply_automations(settings))
    assert created.create == NAMES and not created.unchanged
    stored = asyncio.run(_automations())
    assert set(NAMES) <= set(stored)
    completed = stored["scanflow: scan completed"]
    assert completed.tags == [OWNER_TAG]
    assert completed.actions[0].deployment_id == deployment_id  # the settings' deployment

    again = asyncio.run(apply_automations(settings))
    assert again.changes == 0 and sorted(again.unchanged) == sorted(NAMES)
    ids = {n: stored[n].id for n in NAMES}
    assert {n: a.id for n, a in asyncio.run(_automations()).items() if n in ids} == ids


@pytest.mark.integration
def test_apply_updates_a_changed_one_and_deletes_only_its_own(
    notify: tuple[Settings, uuid.UUID],
) -> None:
    settings, deployment_id = notify
    asyncio.run(apply_automations(settings))
    retired = AutomationCore(
        name=PREFIX + "retired rule",
        tags=[OWNER_TAG],
        trigger=EventTrigger(expect={"never.happens"}),
        actions=[DoNothing()],
    )
    theirs = AutomationCore(
        name=THEIRS, trigger=EventTrigger(expect={"never.happens"}), actions=[DoNothing()]
    )
    duplicate = desired_automations(settings, deployment_id)[0]  # a second owned copy
    asyncio.run(_create(retired, theirs, duplicate))
    before = asyncio.run(_automations())

    changed = settings.model_copy(update={"pending_after_s": 45.0})
    dry = asyncio.run(apply_automations(changed, dry_run=True))
    assert dry.update == {"scanflow: scan waiting for capacity": ["description", "trigger"]}
    assert sorted(dry.delete) == sorted([PREFIX + "retired rule", "scanflow: scan completed"])
    assert asyncio.run(_automations()).keys() == before.keys()  # a dry run deletes nothing

    plan = asyncio.run(apply_automations(changed))
    assert list(plan.update) == ["scanflow: scan waiting for capacity"]
    assert len(plan.unchanged) == 6 and not plan.create
    after = asyncio.run(_automations())
    assert THEIRS in after and PREFIX + "retired rule" not in after
    assert len([n for n in after if n.startswith(PREFIX)]) == 7
    pending = after["scanflow: scan waiting for capacity"]
    assert pending.trigger.within == timedelta(seconds=45)
    assert pending.id == before["scanflow: scan waiting for capacity"].id  # updated in place

    with_retries = changed.model_copy(update={"crash_retries": 1})
    assert asyncio.run(apply_automations(with_retries)).create == ["scanflow: crashed scan retried"]
    assert asyncio.run(apply_automations(changed)).delete == ["scanflow: crashed scan retried"]


@pytest.mark.integration
def test_apply_refuses_without_the_notify_deployment(prefect_server: str) -> None:
    settings = Settings(notify_deployment="notify-outcome/nowhere-" + uuid.uuid4().hex[:6])
    with pytest.raises(RuntimeError) as err:
        asyncio.run(apply_automations(settings, dry_run=True))
    assert f"deployment {settings.notify_deployment} does not exist" in str(err.value)
    assert "prefect deploy --name notify" in str(err.value)
