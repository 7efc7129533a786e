"""Every outcome reaches the platform (signed, one event_id per outcome) and Slack (once),
through real stacks: a Prefect server, the process and notify workers, the deployments from
prefect.yaml and the automations applied by ``scanflow automations apply``.

The cases run at the same time (the slowest, the heartbeat, needs ~80 s); each test waits
for its own case. Two stacks of their own, never the session's shared one. The cases that
strike a running scan (SIGKILL, SIGSTOP, cancel, heartbeat) read their upload from S3 (moto)
through a proxy that holds it until the test has struck, so the scan is in flight then,
however fast the machine:

- ``main``: completed, rejected, failed, SIGKILL of the flow process, a stall (the process
  is SIGSTOPped past the limit, then resumed), a run Pending too long, a cancelled run, and
  the platform answering 503 for a while. Its limits are short (stall 30 s, pending 20 s).
- ``heartbeat``: the flow process and its worker are both SIGKILLed; only the missed-
  heartbeats automation can tell (default limits: 30 s heartbeats, 75 s grace).
"""

from __future__ import annotations

import json
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3
import jsonschema
import pytest

from cv.synthetic import SyntheticScan
from scanflow.contracts.events import event_id_for
from scanflow.local.loopback import Received, Receiver
from scanflow.settings import REPO_ROOT
from tests.support.s3_proxy import Hold, S3FaultProxy
from tests.support.stack import FIGURES, SIGNING_SECRET, SLACK_TOKEN, NotifyStack, for_scan, kill

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCHEMA = json.loads((REPO_ROOT / "schemas" / "webhook-event.schema.json").read_text())
STALL_S, PENDING_S, OUTAGE_S = 30, 20, 6
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
WAIT = 300  # generous: two cores shared with other work


@dataclass
class Case:
    name: str
    stack: NotifyStack
    scan_id: str
    run_id: uuid.UUID | None = None
    marks: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    hold: Hold | None = None  # its upload's reads wait for the test (the struck cases)


@dataclass
class World:
    main: NotifyStack
    beat: NotifyStack
    platform: Receiver
    slack: Receiver
    cases: dict[str, Case]


def _in_background(case: Case, action: Callable[[Case], None]) -> None:
    def run() -> None:
        try:
            action(case)
        except Exception as exc:  # noqa: BLE001 - reported by the case's test
            case.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            case.done.set()

    threading.Thread(target=run, name=case.name, daemon=True).start()


def _running_pid(case: Case) -> int:
    """The process of the case's run, Running and waiting on its held upload."""
    assert case.run_id is not None and case.hold is not None
    case.stack.wait_state(case.run_id, {"RUNNING"}, WAIT)
    assert case.hold.held.wait(WAIT), f"{case.name} never read its upload"
    return case.stack.flow_process(case.run_id)


@pytest.fixture(scope="module")
def world(
    platform: Receiver,
    slack: Receiver,
    good_scan: SyntheticScan,
    s3_endpoint: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[World]:
    tag = uuid.uuid4().hex[:6]
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    uploads = f"notify-uploads-{tag}"
    s3.create_bucket(Bucket=uploads)
    proxy = S3FaultProxy(s3_endpoint).start()
    folder = tmp_path_factory.mktemp("notify-scans")
    roots = json.dumps(
        [folder.resolve().as_uri(), good_scan.path.parent.resolve().as_uri(), f"s3://{uploads}"]
    )
    main = NotifyStack(
        "main",
        platform,
        slack,
        proxy.url,
        input_roots=roots,
        stall_after_s=str(STALL_S),
        pending_after_s=str(PENDING_S),
        heartbeat_grace_s="150",  # the stall case SIGSTOPs a run: no false crash here
        pool_concurrency="8",
    )
    beat = NotifyStack("heartbeat", platform, slack, proxy.url, input_roots=roots)
    cases = {
        name: Case(name, beat if name == "heartbeat" else main, f"nt-{name}-{tag}")
        for name in (
            "completed",
            "rejected",
            "failed",
            "sigkill",
            "heartbeat",
            "stall",
            "pending",
            "cancel",
            "outage",
        )
    }
    world = World(main, beat, platform, slack, cases)
    c = cases
    struck: dict[str, str] = {}  # case: its upload on S3, read through the holding proxy
    patient = f"pt-{tag}"  # the upload's path names the run's patient
    for name in ("sigkill", "stall", "cancel", "heartbeat"):
        key = f"patients/{patient}/scans/{c[name].scan_id}.mp4"
        s3.upload_file(str(good_scan.path), uploads, key)
        struck[name] = f"s3://{uploads}/{key}"
        c[name].hold = Hold(lambda r, key=key: r.method == "GET" and r.path.endswith(key))
        proxy.rules.append(c[name].hold)

    # the platform is down for the outage case's first OUTAGE_S seconds
    outage = c["outage"]

    def unavailable(body: dict[str, Any]) -> int:
        if body.get("scan_id") != outage.scan_id:
            return 0
        first = outage.marks.setdefault("first_attempt", time.time())
        outage.marks.setdefault("recovered", first + OUTAGE_S)
        return 503 if time.time() < first + OUTAGE_S else 0

    platform.policies.append(unavailable)

    def sigkill(case: Case) -> None:
        pid = _running_pid(case)
        kill(pid)
        case.marks["killed"] = time.time()
        case.hold.release()  # type: ignore[union-attr]

    def heartbeat(case: Case) -> None:
        pid = _running_pid(case)
        time.sleep(1.0)  # the first heartbeat leaves as the run starts
        kill(case.stack.worker_pid())  # the worker first: nobody sees the flow die
        kill(pid)
        case.marks["killed"] = time.time()
        case.hold.release()  # type: ignore[union-attr]

    def stall(case: Case) -> None:
        pid = _running_pid(case)
        kill(pid, signal.SIGSTOP)
        case.marks["stopped"] = time.time()
        try:
            platform.wait_for(for_scan(case.scan_id, "scan.stalled"), WAIT)
        finally:
            kill(pid, signal.SIGCONT)
            case.marks["resumed"] = time.time()
            case.hold.release()  # type: ignore[union-attr]

    def pending(case: Case) -> None:
        from prefect.states import Cancelled

        platform.wait_for(for_scan(case.scan_id, "scan.stalled"), WAIT)
        assert case.run_id is not None
        with case.stack.client() as client:
            client.set_flow_run_state(case.run_id, Cancelled(message="no capacity"), force=True)
        case.marks["cancelled"] = time.time()

    def cancel(case: Case) -> None:
        from prefect.states import Cancelling

        _running_pid(case)
        assert case.run_id is not None
        with case.stack.client() as client:
            client.set_flow_run_state(case.run_id, Cancelling(message="by the test"))
        case.marks["cancelling"] = time.time()
        try:  # released once cancelled: the scan must not complete first
            case.stack.wait_state(case.run_id, FINAL, WAIT)
        finally:
            case.hold.release()  # type: ignore[union-attr]

    junk = folder / "junk.mp4"
    junk.write_bytes(uuid.uuid4().bytes * 3000)
    good = good_scan.path.as_uri()

    def start_heartbeat_case() -> None:  # first: its ~80 s overlap everything else
        c["heartbeat"].run_id = beat.submit(
            c["heartbeat"].scan_id, struck["heartbeat"], patient_id=patient
        )
        _in_background(c["heartbeat"], heartbeat)

    def start_main_cases() -> None:
        c["completed"].run_id = main.submit(c["completed"].scan_id, good)
        c["rejected"].run_id = main.submit(c["rejected"].scan_id, junk.as_uri())
        c["failed"].run_id = main.submit(c["failed"].scan_id, good, {"device": "not-a-device"})
        c["outage"].run_id = main.submit(c["outage"].scan_id, junk.as_uri())
        c["pending"].run_id = main.submit(c["pending"].scan_id, good, pending=True)
        for name, action in (("sigkill", sigkill), ("stall", stall), ("cancel", cancel)):
            c[name].run_id = main.submit(c[name].scan_id, struck[name], patient_id=patient)
            _in_background(c[name], action)
        _in_background(c["pending"], pending)

    failures: list[str] = []

    def up(stack: NotifyStack, then: Callable[[], None]) -> None:
        try:
            stack.up()
            then()
        except Exception as exc:  # noqa: BLE001 - re-raised below, in the test's thread
            failures.append(f"{stack.name}: {exc}")

    started = [
        threading.Thread(target=up, args=(beat, start_heartbeat_case)),
        threading.Thread(target=up, args=(main, start_main_cases)),
    ]
    for t in started:
        t.start()
    for t in started:
        t.join()
    if failures:
        for s in (main, beat):
            s.down()
        proxy.stop()
        pytest.fail("; ".join(failures))
    yield world
    platform.policies.remove(unavailable)
    for case in cases.values():
        if case.hold is not None:
            case.hold.release()
    stops = [threading.Thread(target=s.down) for s in (main, beat)]
    for t in stops:
        t.start()
    for t in stops:
        t.join()
    proxy.stop()


# -- checks ------------------------------------------------------------------------------


def _state_time(case: Case, state_type: str) -> float:
    assert case.run_id is not None
    states = [s for s in case.stack.states(case.run_id) if s.type.value == state_type]
    return float(states[-1].timestamp.timestamp())


def _settle(world: World, case: Case, timeout: float = WAIT) -> None:
    """Wait until every notify-outcome run about this case's flow run has finished."""
    deadline = time.monotonic() + timeout
    while True:
        runs = case.stack.notify_runs(case.run_id)
        if runs and all(r.state and r.state.type.value in FINAL for r in runs):
            return
        assert time.monotonic() < deadline, f"notify-outcome for {case.name} did not finish"
        time.sleep(0.5)


def check_outcome(
    world: World,
    case: Case,
    event_type: str,
    outcome: str,
    *,
    paths: set[str],
    outcome_at: float,
    label: str,
) -> list[Received]:
    """The platform got the outcome, signed, schema-valid, with one id; Slack got it once."""
    assert not case.errors, case.errors
    match = for_scan(case.scan_id, event_type)
    first = world.platform.wait_for(match, WAIT)
    assert first, f"{case.name}: no {event_type} reached the platform"
    deadline = time.monotonic() + WAIT
    while {r.json["source"] for r in world.platform.delivered(match)} < paths:
        assert time.monotonic() < deadline, f"{case.name}: not every path delivered"
        time.sleep(0.3)
    _settle(world, case)
    copies = world.platform.all(match)
    assert case.run_id is not None
    assert {r.json["event_id"] for r in copies} == {str(event_id_for(case.run_id, outcome))}
    for copy in copies:
        assert copy.verified == "ok", copy.verified
        jsonschema.validate(copy.json, SCHEMA)
        assert copy.json["flow_run_id"] == str(case.run_id)
    delivered = world.platform.delivered(match)
    assert {r.json["source"] for r in delivered} == paths
    messages = world.slack.all(for_scan(case.scan_id, event_type))
    assert len(messages) == 1, f"{case.name}: {len(messages)} Slack messages"
    text = messages[0].body.decode()
    assert case.scan_id in text and f"/runs/flow-run/{case.run_id}" in text
    assert "patient-" not in text and "file://" not in text and "image" not in text
    arrival = min(r.at for r in delivered)
    FIGURES.append((case.name, label, arrival - outcome_at))
    for source in sorted(paths):
        at = min(r.at for r in delivered if r.json["source"] == source)
        FIGURES.append((case.name, f"  first copy via {source}", at - outcome_at))
    return delivered


# -- the cases ---------------------------------------------------------------------------


def test_completed_scan(world: World) -> None:
    case = world.cases["completed"]
    assert case.run_id is not None
    run = case.stack.wait_state(case.run_id, FINAL, WAIT)
    assert run.state.type.value == "COMPLETED", run.state.message
    got = check_outcome(
        world,
        case,
        "scan.completed",
        "completed",
        paths={"hook", "automation"},
        outcome_at=_state_time(case, "COMPLETED"),
        label="Completed state -> platform",
    )
    assert all(r.json["links"]["manifest"].endswith("/manifest.json") for r in got)
    assert all(r.json["reason"] is None for r in got)


def test_rejected_scan(world: World) -> None:
    case = world.cases["rejected"]
    assert case.run_id is not None
    case.stack.wait_state(case.run_id, FINAL, WAIT)
    got = check_outcome(
        world,
        case,
        "scan.rejected",
        "failed",
        paths={"hook", "automation"},
        outcome_at=_state_time(case, "FAILED"),
        label="Failed state -> platform",
    )
    assert {r.json["reason"] for r in got} == {"unreadable_video"}
    assert {r.json["cause"] for r in got} == {"patient"}  # both paths agree
    assert {r.json["state"]["name"] for r in got} == {"Rejected"}
    assert all("readable" in r.json["message"] for r in got)


def test_failed_scan(world: World) -> None:
    """An exception in a task (a device torch does not know): ours to fix, not the patient's."""
    from cv.errors import Reason, reason_from_message

    case = world.cases["failed"]
    assert case.run_id is not None
    run = case.stack.wait_state(case.run_id, FINAL, WAIT)
    assert run.state.type.value == "FAILED"
    reason = reason_from_message(run.state.message) or Reason.INTERNAL_ERROR
    assert not reason.is_patient_fixable
    got = check_outcome(
        world,
        case,
        "scan.failed",
        "failed",
        paths={"hook", "automation"},
        outcome_at=_state_time(case, "FAILED"),
        label="Failed state -> platform",
    )
    assert {r.json["reason"] for r in got} == {reason.value}


def test_sigkilled_flow_process_is_reported_crashed(world: World) -> None:
    """The worker sees its child die: Crashed within a second; on_crashed runs in the
    worker, the automation runs notify-outcome."""
    case = world.cases["sigkill"]
    assert case.done.wait(WAIT) and not case.errors, case.errors
    assert case.run_id is not None
    run = case.stack.wait_state(case.run_id, FINAL, WAIT)
    assert run.state.type.value == "CRASHED", run.state
    got = check_outcome(
        world,
        case,
        "scan.crashed",
        "crashed",
        paths={"hook", "automation"},
        outcome_at=case.marks["killed"],
        label="SIGKILL -> platform",
    )
    assert {r.json["reason"] for r in got} == {"crashed"}
    FIGURES.append(
        (
            case.name,
            "  SIGKILL -> Crashed state",
            _state_time(case, "CRASHED") - case.marks["killed"],
        )
    )


def test_killed_worker_and_process_are_reported_crashed_by_heartbeats(world: World) -> None:
    """Nobody is left to say the run died: the missed-heartbeats automation marks it
    Crashed, and the Crashed automation reports it."""
    case = world.cases["heartbeat"]
    assert case.done.wait(WAIT) and not case.errors, case.errors
    assert case.run_id is not None
    run = case.stack.wait_state(case.run_id, {"CRASHED"}, WAIT)
    assert "[crashed] no heartbeat" in run.state.message
    crashed_at = _state_time(case, "CRASHED")
    assert crashed_at - case.marks["killed"] < 75 + 60  # generous: 75 s grace + evaluation
    got = check_outcome(
        world,
        case,
        "scan.crashed",
        "crashed",
        paths={"automation"},
        outcome_at=case.marks["killed"],
        label="SIGKILL (worker too) -> platform",
    )
    FIGURES.append(
        (case.name, "  SIGKILL -> Crashed state (heartbeats)", crashed_at - case.marks["killed"])
    )
    FIGURES.append((case.name, "  Crashed state -> platform", min(r.at for r in got) - crashed_at))


def test_stalled_run_is_reported_and_left_running(world: World) -> None:
    case = world.cases["stall"]
    assert case.run_id is not None
    running_at = _state_time(case, "RUNNING")
    got = check_outcome(
        world,
        case,
        "scan.stalled",
        "stalled-running",
        paths={"automation"},
        outcome_at=running_at + STALL_S,
        label=f"Running + {STALL_S} s -> platform",
    )
    assert {r.json["reason"] for r in got} == {"stalled"}
    assert case.done.wait(WAIT) and not case.errors, case.errors
    # resumed, it ends on its own and that outcome is reported too
    run = case.stack.wait_state(case.run_id, FINAL, WAIT)
    final = world.platform.wait_for(
        lambda b: b.get("scan_id") == case.scan_id and b["type"] != "scan.stalled", WAIT
    )
    assert final and run.state.type.value in FINAL


def test_pending_too_long_is_reported_then_cancelled(world: World) -> None:
    case = world.cases["pending"]
    assert case.run_id is not None
    got = check_outcome(
        world,
        case,
        "scan.stalled",
        "stalled-pending",
        paths={"automation"},
        outcome_at=_state_time(case, "PENDING") + PENDING_S,
        label=f"Pending + {PENDING_S} s -> platform",
    )
    assert all("capacity" in r.json["message"] for r in got)
    assert case.done.wait(WAIT) and not case.errors, case.errors
    # cancelled while Pending: no process, no hook; the automation reports it
    got = check_outcome(
        world,
        case,
        "scan.failed",
        "cancelled",
        paths={"automation"},
        outcome_at=_state_time(case, "CANCELLED"),
        label="Cancelled state -> platform",
    )
    assert {r.json["state"]["name"] for r in got} == {"Cancelled"}


def test_cancelled_run_is_reported(world: World) -> None:
    case = world.cases["cancel"]
    assert case.done.wait(WAIT) and not case.errors, case.errors
    assert case.run_id is not None
    run = case.stack.wait_state(case.run_id, {"CANCELLED"}, WAIT)
    assert run.state.type.value == "CANCELLED"
    got = check_outcome(
        world,
        case,
        "scan.failed",
        "cancelled",
        paths={"hook", "automation"},
        outcome_at=case.marks["cancelling"],
        label="cancel request -> platform",
    )
    assert all(r.json["message"].startswith("cancelled") for r in got)


def test_platform_outage_is_ridden_out_with_one_event_id(world: World) -> None:
    case = world.cases["outage"]
    assert case.run_id is not None
    case.stack.wait_state(case.run_id, FINAL, WAIT)
    got = check_outcome(
        world,
        case,
        "scan.rejected",
        "failed",
        paths={"hook", "automation"},
        outcome_at=_state_time(case, "FAILED"),
        label=f"Failed state -> platform ({OUTAGE_S} s outage)",
    )
    refused = [r for r in world.platform.all(for_scan(case.scan_id)) if r.status == 503]
    assert refused, "the platform never answered 503"
    assert min(r.at for r in got) >= case.marks["recovered"]
    FIGURES.append(
        (case.name, "  recovery -> platform", min(r.at for r in got) - case.marks["recovered"])
    )
    FIGURES.append((case.name, f"  503 answers before recovery: {len(refused)}", 0.0))


# -- after the cases ---------------------------------------------------------------------


def test_automations_apply_is_idempotent_and_removes_only_its_own(world: World) -> None:
    from prefect.events.actions import DoNothing
    from prefect.events.schemas.automations import AutomationCore, EventTrigger

    stack = world.main
    plan = stack.cli("automations", "apply", "--dry-run")
    assert plan.returncode == 0 and "would change 0 automation(s), 7 unchanged" in plan.stdout
    with stack.client() as client:
        for name, tags in (("scanflow: retired rule", ["scanflow-managed"]), ("theirs", [])):
            client.create_automation(
                AutomationCore(
                    name=name,
                    tags=tags,
                    trigger=EventTrigger(expect={"never.happens"}),
                    actions=[DoNothing()],
                )
            )
    stack.env["SCANFLOW_PENDING_AFTER_S"] = "45"
    try:
        dry = stack.cli("automations", "apply", "--dry-run")
        assert "- scanflow: retired rule" in dry.stdout
        assert "~ scanflow: scan waiting for capacity  (description, trigger)" in dry.stdout
        assert "would change 2 automation(s), 6 unchanged" in dry.stdout
        applied = stack.cli("automations", "apply")
        assert "changed 2 automation(s), 6 unchanged" in applied.stdout, applied.stdout
    finally:
        stack.env["SCANFLOW_PENDING_AFTER_S"] = str(PENDING_S)
    again = stack.cli("automations", "apply")
    assert "changed 1 automation(s), 6 unchanged" in again.stdout, again.stdout
    with stack.client() as client:
        names = sorted(a.name for a in client.read_automations())
        pending = client.read_automations_by_name("scanflow: scan waiting for capacity")
    assert "theirs" in names and "scanflow: retired rule" not in names
    assert len([n for n in names if n.startswith("scanflow: ")]) == 7
    assert pending[0].trigger.within.total_seconds() == PENDING_S


def test_the_slack_claim_admits_one_path_and_outlives_a_dead_holder(world: World) -> None:
    from prefect.client.schemas.objects import FlowRun
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.states import Crashed

    from scanflow.contracts.events import build_event
    from scanflow.notify.senders import claim_slack, settle_slack_claim

    run = FlowRun(id=uuid.uuid4(), flow_id=uuid.uuid4(), name="claim", parameters={})
    hook = build_event(run, Crashed(), source="hook", run_url="u")
    automation = hook.model_copy(update={"source": "automation"})
    with temporary_settings({PREFECT_API_URL: world.main.api_url}):
        assert claim_slack(hook, wait_s=0)
        assert not claim_slack(automation, wait_s=0)  # the other path has it
        started = time.monotonic()
        assert claim_slack(automation, wait_s=2)  # still "sending" after 2 s: taken over
        assert time.monotonic() - started >= 2
        settle_slack_claim(automation, sent=True)
        assert not claim_slack(hook, wait_s=30)  # sent: nobody posts again, no waiting
        settle_slack_claim(automation, sent=False)  # released (Slack unreachable)
        assert claim_slack(hook, wait_s=0)  # the other path may try


def test_no_secret_reaches_a_log(world: World) -> None:
    texts: list[str] = []
    for case in world.cases.values():
        assert case.run_id is not None
        for run_id in [case.run_id, *(r.id for r in case.stack.notify_runs(case.run_id))]:
            texts.append(case.stack.logs(run_id))
    for stack in (world.main, world.beat):
        texts += [p.read_text(errors="replace") for p in (stack.home / "logs").glob("*.log")]
    assert any("platform 127.0.0.1" in t for t in texts)  # the logs do say what was sent
    for text in texts:
        assert SIGNING_SECRET not in text and SLACK_TOKEN not in text
