"""scanflow's Prefect automations, as code: the guaranteed path of outcome notifications.

    prefect.flow-run.Completed                 ─┐
    prefect.flow-run.Failed / TimedOut /        │ reactive, each ─▶ run notify-outcome/notify
      Rejected (a Failed state of that name)    │
    prefect.flow-run.Crashed                    │   (flow_run_id, trigger="final", state_id)
    prefect.flow-run.Cancelled                 ─┘
    Running, no final state within stall_after_s     proactive ─▶ notify-outcome (stalled-running)
    Pending, no next state within pending_after_s    proactive ─▶ notify-outcome (stalled-pending)
    Running or heartbeat, no event within            proactive ─▶ mark the run Crashed
      heartbeat_grace_s (deployment runs)
                                                        (whose Crashed event fires the above)
    Crashed on attempt 1..crash_retries              reactive  ─▶ reschedule the same run
                                                        (only when crash_retries > 0)

All match runs of the ``process-scan`` flow only. ``scanflow automations apply`` makes the
server match this list: it creates missing ones, updates changed ones (matched by name) and
deletes the ones tagged ``scanflow-managed`` that are no longer defined; ``--dry-run``
prints that plan and changes nothing. Why a deployment and not a server-side webhook:
docs/notifications.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState, RunDeployment
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
from prefect.exceptions import ObjectNotFound

from scanflow.contracts.events import REJECTED_STATE
from scanflow.settings import Settings

OWNER_TAG = "scanflow-managed"
FLOW_NAME = "process-scan"
PREFIX = "scanflow: "

_FLOW_RUN = "prefect.flow-run."
# Every state a run of ours can leave Running for: a stall ends with any of them.
_LEAVES_RUNNING = [
    "Completed",
    "Cached",
    "Failed",
    REJECTED_STATE,
    "TimedOut",
    "Crashed",
    "Cancelling",
    "Cancelled",
    "Paused",
    "Suspended",
    "AwaitingRetry",
    "Scheduled",
]


def _match() -> dict[str, Any]:
    return {
        "match": {"prefect.resource.id": _FLOW_RUN + "*"},
        "match_related": {"prefect.resource.role": "flow", "prefect.resource.name": FLOW_NAME},
    }


def _notify(deployment_id: UUID, trigger: str) -> Any:

    return RunDeployment(
        source="selected",
        deployment_id=deployment_id,
        parameters={
            # explicit jinja kind: a bare "{{ event.id }}" is rendered through tojson,
            # which fails on a UUID (Prefect 3.9.1)
            "flow_run_id": {"__prefect_kind": "jinja", "template": "{{ event.resource.id }}"},
            "trigger": trigger,
            "state_id": {"__prefect_kind": "jinja", "template": "{{ event.id }}"},
        },
    )


def _automation(name: str, description: str, trigger: EventTrigger, action: Any) -> AutomationCore:
    return AutomationCore(
        name=PREFIX + name,
        description=description,
        tags=[OWNER_TAG],
        trigger=trigger,
        actions=[action],
    )


def _on(*events: str) -> EventTrigger:
    """As soon as a process-scan run emits one of ``events``."""
    return EventTrigger(
        expect={_FLOW_RUN + e for e in events}, posture=Posture.Reactive, threshold=1, **_match()
    )


def _silence(
    after: list[str], expect: list[str], within_s: float, *, deployments_only: bool = False
) -> EventTrigger:
    """When a run that emitted one of ``after`` emits none of ``expect`` within ``within_s``;
    ``deployments_only``: runs a worker started, not a flow called in a process."""
    match = _match()
    if deployments_only:
        match["match_related"] = [match["match_related"], {"prefect.resource.role": "deployment"}]
    return EventTrigger(
        after={_FLOW_RUN + e for e in after},
        expect={_FLOW_RUN + e for e in expect},
        for_each={"prefect.resource.id"},
        posture=Posture.Proactive,
        threshold=1,
        within=timedelta(seconds=within_s),
        **match,
    )


def desired_automations(settings: Settings, notify_deployment_id: UUID) -> list[AutomationCore]:
    """The automations scanflow wants on the server, for these settings."""

    def notify(trigger: str) -> Any:
        return _notify(notify_deployment_id, trigger)

    stall, pending, grace = (
        settings.stall_after_s,
        settings.pending_after_s,
        settings.heartbeat_grace_s,
    )
    automations = [
        _automation(
            "scan completed",
            "Tell the platform a scan's results are ready (notify-outcome).",
            _on("Completed"),
            notify("final"),
        ),
        _automation(
            "scan failed",
            "Tell the platform and on-call a scan failed or was rejected (notify-outcome).",
            _on("Failed", REJECTED_STATE, "TimedOut"),
            notify("final"),
        ),
        _automation(
            "scan crashed",
            "Tell the platform and on-call a scan's process died (notify-outcome).",
            _on("Crashed"),
            notify("final"),
        ),
        _automation(
            "scan cancelled",
            "Tell the platform and on-call a scan was cancelled (notify-outcome).",
            _on("Cancelled"),
            notify("final"),
        ),
        _automation(
            "scan stalled",
            f"A scan Running for more than {stall:.0f} s is reported stalled "
            "(notify-outcome); it is left running.",
            _silence(["Running", "Retrying"], _LEAVES_RUNNING, stall),
            notify("stalled-running"),
        ),
        _automation(
            "scan waiting for capacity",
            f"A scan Pending for more than {pending:.0f} s (no capacity) is reported stalled "
            "(notify-outcome).",
            _silence(["Pending"], ["*"], pending),
            notify("stalled-pending"),
        ),
        # Running opens the watch too: a process killed before its first heartbeat left
        # (it goes within a second of Running, but not under load) would otherwise stay
        # Running for good. Deployments only: our deployments send heartbeats
        # (prefect.yaml); a flow called in a process (scanflow process) sends none and must
        # not be taken for dead after heartbeat_grace_s.
        _automation(
            "missed heartbeats mark crashed",
            f"A running scan that sent no heartbeat nor changed state for {grace:.0f} s lost "
            "its process: mark it Crashed (the 'scan crashed' automation then reports it).",
            _silence(["heartbeat", "Running", "Retrying"], ["*"], grace, deployments_only=True),
            ChangeFlowRunState(
                state=StateType.CRASHED,
                name="Crashed",
                message=f"[crashed] no heartbeat for {grace:.0f} s: the flow run's process "
                "or its machine is gone",
            ),
        ),
    ]
    if settings.crash_retries:
        automations.append(_retry_crashed(settings.crash_retries))
    return automations


def _retry_crashed(retries: int) -> AutomationCore:
    """Reschedule a crashed run (the same flow run: its id, parameters and idempotency key
    stay) when the crash ended one of its first ``retries`` attempts.

    The bound is the event's run count (1 on the first attempt, one more at each Running),
    so a scan that kills its process every time (a decoder running out of memory) is
    tried ``retries + 1`` times and then stays Crashed. A run that crashed before it ever
    ran (run count 0: the infrastructure could not start it) is not retried: it would fail
    the same way, forever. The crash itself is still reported (scan.crashed); the retry's
    outcome follows as its own event.
    """

    match = _match()
    match["match"] = {
        **match["match"],
        "prefect.run-count": [str(n) for n in range(1, retries + 1)],
    }
    return AutomationCore(
        name=PREFIX + "crashed scan retried",
        description=f"A crashed scan is run again, {retries} time(s) at most: the same flow "
        "run is rescheduled for any worker.",
        tags=[OWNER_TAG],
        trigger=EventTrigger(
            expect={_FLOW_RUN + "Crashed"}, posture=Posture.Reactive, threshold=1, **match
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.SCHEDULED,
                name="AwaitingRetry",
                message="rescheduled by scanflow after a crash (crash_retries)",
            )
        ],
    )


# -- apply -------------------------------------------------------------------------------


def normal_form(automation: Any) -> dict[str, Any]:
    """A comparable form: what the server stores, with set-like lists sorted."""

    core = AutomationCore.model_validate(automation.model_dump(exclude={"id"}))
    return _sorted(core.model_dump(mode="json"))  # type: ignore[no-any-return]


def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sorted(v) for k, v in value.items()}
    if isinstance(value, list):
        items = [_sorted(v) for v in value]
        return sorted(items) if all(isinstance(v, str) for v in items) else items
    return value


def _changed(current: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    return sorted(k for k in wanted.keys() | current.keys() if current.get(k) != wanted.get(k))


@dataclass
class Plan:
    create: list[str] = field(default_factory=list)
    update: dict[str, list[str]] = field(default_factory=dict)
    delete: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"+ {n}" for n in self.create]
        out += [f"~ {n}  ({', '.join(f)})" for n, f in self.update.items()]
        out += [f"- {n}" for n in self.delete]
        out += [f"= {n}" for n in self.unchanged]
        return out

    @property
    def changes(self) -> int:
        return len(self.create) + len(self.update) + len(self.delete)


async def apply_automations(settings: Settings, *, dry_run: bool = False) -> Plan:
    """Make the server's scanflow-managed automations match :func:`desired_automations`."""

    plan = Plan()
    async with get_client() as client:
        try:
            deployment = await client.read_deployment_by_name(settings.notify_deployment)
        except ObjectNotFound:
            raise RuntimeError(
                f"deployment {settings.notify_deployment} does not exist: apply prefect.yaml "
                "first (scanflow up, or prefect deploy --name notify)"
            ) from None
        wanted = {a.name: a for a in desired_automations(settings, deployment.id)}
        owned = [a for a in await client.read_automations() if OWNER_TAG in (a.tags or [])]
        seen: set[str] = set()
        for current in owned:
            if current.name not in wanted or current.name in seen:
                plan.delete.append(current.name)
                if not dry_run:
                    await client.delete_automation(current.id)
                continue
            seen.add(current.name)
            changed = _changed(normal_form(current), normal_form(wanted[current.name]))
            if not changed:
                plan.unchanged.append(current.name)
                continue
            plan.update[current.name] = changed
            if not dry_run:
                await client.update_automation(current.id, wanted[current.name])
        for name, automation in wanted.items():
            if name not in seen:
                plan.create.append(name)
                if not dry_run:
                    await client.create_automation(automation)
    return plan
