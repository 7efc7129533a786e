"""Faults with real processes: every scan ends in a final state and its outcome reaches the
platform (signed, one event_id per outcome), nothing lost.

Two local stacks of their own (tests/support/stack.py), their cases run at the same time:

``faults`` (the results store on moto's S3; pool of 8, every case at once):
- S3 answering 500 / 503 SlowDown / 503 ServiceUnavailable to the first attempt of every
  request, then down altogether for 10 s: the run completes, the manifest written last;
- S3 down for good once the frames are stored: ``storage_error`` after the client's retries,
  no manifest (the frames already written stay unpublished);
- the results disk full (a small tmpfs): ``storage_error``, no manifest;
- the platform down for DOWN_S (503 to every event about two scans): nothing dropped,
  delivery resumes after it comes back;
- then a plain scan on the same worker: it still serves.
Each S3 case runs with ``AWS_ENDPOINT_URL_S3`` pointing at its own fault-injecting proxy in
front of moto (s3_proxy.py); boto3 itself is not touched.

``crash`` (``crash_retries=1``), one fault after the other; its scans read their uploads from
S3 through a proxy that holds them (a slow store) until the test has done its damage, so they
are in flight when it strikes, however fast the machine:
- the scan worker and the flow processes of the two scans it runs SIGKILLed, a new worker
  started at once: the missed-heartbeats automation marks both Crashed, the platform is
  told, the crashed runs are rescheduled (same runs) and complete on the new worker, and a
  new scan runs there too;
- then the Prefect server SIGKILLed while two more scans run (the retried ones may still
  be running too) and one waits, started again: all complete and are reported.

The figures (time to the final state, then to the platform) print at the end of the run.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import jsonschema
import pytest

from cv.synthetic import SyntheticScan
from scanflow.contracts.events import event_id_for
from scanflow.local.loopback import Received, Receiver
from scanflow.settings import REPO_ROOT
from tests.support.s3_proxy import FirstAttemptFails, Hold, Outage, S3FaultProxy
from tests.support.stack import for_scan
from tests.system.faults.harness import FAULT_FIGURES, FaultFigure, FaultStack, small_disk

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCHEMA = json.loads((REPO_ROOT / "schemas" / "webhook-event.schema.json").read_text())
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
WAIT = 420  # generous: two cores shared with other work
DOWN_S = 120.0  # the platform's outage, from its first refused event
S3_OUTAGE_S = 10.0
RESTART_DOWN_S = 5.0


@dataclass
class Case:
    name: str
    stack: FaultStack
    scan_id: str
    patient_id: str
    run_id: uuid.UUID | None = None
    marks: dict[str, float] = field(default_factory=dict)


@dataclass
class World:
    faults: FaultStack
    crash: FaultStack
    platform: Receiver
    slack: Receiver
    s3: Any  # a boto3 client straight to moto
    results_bucket: str
    cases: dict[str, Case]
    proxies: dict[str, S3FaultProxy]
    disk: Path | None
    disk_skip: str | None
    refused_from: dict[str, float] = field(default_factory=dict)  # scan id: platform down
    errors: dict[str, list[str]] = field(default_factory=dict)  # per scenario
    done: dict[str, threading.Event] = field(default_factory=dict)

    def scenario_ok(self, name: str) -> None:
        assert self.done[name].wait(WAIT * 2), f"scenario {name} did not finish"
        assert not self.errors.get(name), self.errors[name]


def _background(world: World, name: str, action: Callable[[], None]) -> None:
    world.done[name] = threading.Event()

    def run() -> None:
        try:
            action()
        except BaseException as exc:  # noqa: BLE001 - reported by the scenario's tests
            world.errors.setdefault(name, []).append(f"{type(exc).__name__}: {exc}")
        finally:
            world.done[name].set()

    threading.Thread(target=run, name=name, daemon=True).start()


@pytest.fixture(scope="module")
def world(
    platform: Receiver,
    slack: Receiver,
    s3_endpoint: str,
    good_scan: SyntheticScan,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[World]:
    tag = uuid.uuid4().hex[:6]
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    uploads, results = f"faults-uploads-{tag}", f"faults-results-{tag}"
    s3.create_bucket(Bucket=uploads)
    s3.create_bucket(Bucket=results)
    folder = tmp_path_factory.mktemp("fault-scans")
    inputs = [folder, good_scan.path.parent]
    faults = FaultStack(
        "faults",
        platform,
        slack,
        s3=s3_endpoint,
        pool_concurrency="8",
        results_uri=f"s3://{results}/results",
        input_roots=json.dumps([*(p.resolve().as_uri() for p in inputs), f"s3://{uploads}"]),
    )
    crash = FaultStack(
        "crash",
        platform,
        slack,
        s3=s3_endpoint,
        pool_concurrency="4",
        crash_retries="1",
        input_roots=json.dumps([good_scan.path.parent.resolve().as_uri(), f"s3://{uploads}"]),
    )
    names = {
        "faults": [
            "s3-flaky",
            "s3-down",
            "disk-full",
            "platform-down-completed",
            "platform-down-rejected",
            "after-faults",
        ],
        "crash": [
            "restart-running-1",
            "restart-running-2",
            "restart-waiting",
            "worker-kill-1",
            "worker-kill-2",
            "new-worker",
        ],
    }
    cases = {
        name: Case(name, faults if key == "faults" else crash, f"ft-{name}-{tag}", f"pt-{i}-{tag}")
        for key, group in names.items()
        for i, name in enumerate(group)
    }
    with contextlib.ExitStack() as exits:  # the disk unmounted, whatever happens
        disk: Path | None = None
        disk_skip: str | None = None
        try:
            disk = exits.enter_context(small_disk(size_kib=1024, free_kib=96))
        except RuntimeError as exc:
            disk_skip = str(exc)
        proxies = {
            # every first attempt fails; then S3 is down for S3_OUTAGE_S from the first write
            "s3-flaky": S3FaultProxy(
                s3_endpoint,
                Outage(lambda r: r.method == "PUT" and r.key.startswith(results), S3_OUTAGE_S),
                FirstAttemptFails(),
            ).start(),
            # down for good from the first write that is not a frame (frame_quality.json)
            "s3-down": S3FaultProxy(
                s3_endpoint,
                Outage(lambda r: r.method == "PUT" and "/frames/" not in r.path, None),
            ).start(),
        }
        # the crash stack's held scans: each read of its upload waits for the test
        holds = {
            name: Hold(lambda r, scan=cases[name].scan_id: r.method == "GET" and scan in r.path)
            for name in ("worker-kill-1", "worker-kill-2", "restart-running-1", "restart-running-2")
        }
        proxies["crash"] = S3FaultProxy(s3_endpoint, *holds.values()).start()
        for proxy in proxies.values():
            exits.callback(proxy.stop)
        world = World(faults, crash, platform, slack, s3, results, cases, proxies, disk, disk_skip)

        down = {cases["platform-down-completed"].scan_id, cases["platform-down-rejected"].scan_id}
        refused_from = world.refused_from

        def platform_down(body: dict[str, Any]) -> int:
            scan = body.get("scan_id")
            if scan not in down:
                return 0
            first = refused_from.setdefault(scan, time.time())
            return 503 if time.time() < first + DOWN_S else 0

        platform.policies.append(platform_down)
        exits.callback(platform.policies.remove, platform_down)

        failures: list[str] = []

        def up(stack: FaultStack) -> None:
            try:
                stack.up()
            except Exception as exc:  # noqa: BLE001 - reported below, in the test's thread
                failures.append(f"{stack.name}: {exc}")

        starting = [threading.Thread(target=up, args=(s,)) for s in (faults, crash)]
        for t in starting:
            t.start()
        try:
            junk = folder / "junk.mp4"
            junk.write_bytes(uuid.uuid4().bytes * 3000)
            good = good_scan.path.as_uri()

            def s3_input(case: Case) -> str:
                key = f"patients/{case.patient_id}/scans/{case.scan_id}.mp4"
                s3.upload_file(str(good_scan.path), uploads, key)
                return f"s3://{uploads}/{key}"

            def held(case: Case) -> None:
                """Submitted to read its upload (on S3) through the holding proxy."""
                start(case, s3_input(case), {"AWS_ENDPOINT_URL_S3": proxies["crash"].url})

            def in_flight(case: Case) -> None:
                """Returns once the held run is Running and waiting on its upload."""
                crash.wait_state(case.run_id, {"RUNNING"}, WAIT)  # type: ignore[arg-type]
                assert holds[case.name].held.wait(WAIT), f"{case.name} never read its upload"

            def start(case: Case, video: str, env: dict[str, str] | None = None) -> None:
                case.run_id = case.stack.submit_scan(case.scan_id, case.patient_id, video, env)
                case.marks["submitted"] = time.time()

            def faults_scenario() -> None:
                c = cases
                for name in ("s3-flaky", "s3-down"):
                    start(c[name], s3_input(c[name]), {"AWS_ENDPOINT_URL_S3": proxies[name].url})
                if disk is not None:
                    start(
                        c["disk-full"], good, {"SCANFLOW_RESULTS_URI": (disk / "results").as_uri()}
                    )
                start(c["platform-down-completed"], good)
                start(c["platform-down-rejected"], junk.as_uri())
                for name in ("s3-down", "disk-full"):
                    if c[name].run_id is not None:
                        faults.wait_state(c[name].run_id, FINAL, WAIT)
                start(c["after-faults"], good)  # the same worker, after the failures

            def crash_scenario() -> None:
                c = cases
                # 1. the worker and the processes of the runs it holds SIGKILLed; a new worker
                kill_cases = [c["worker-kill-1"], c["worker-kill-2"]]
                for case in kill_cases:
                    held(case)
                for case in kill_cases:
                    in_flight(case)
                time.sleep(2.0)  # the first heartbeat leaves as a run starts
                killed = crash.kill_worker_and_runs([case.run_id for case in kill_cases])  # type: ignore[misc]
                for case in kill_cases:
                    case.marks["killed"] = killed
                    holds[case.name].release()  # the retried run reads its upload at once
                crash.start_worker()
                start(c["new-worker"], good)
                for case in kill_cases:  # Crashed by heartbeats, reported, rescheduled
                    crashed = world.platform.wait_for(for_scan(case.scan_id, "scan.crashed"), WAIT)
                    assert crashed, _whereabouts(world, case)
                # 2. the server SIGKILLed while scans run (the retried ones among them) and one
                # waits, and started again; the running ones go on once it is back
                running = [c["restart-running-1"], c["restart-running-2"]]
                for case in running:
                    held(case)
                for case in running:
                    in_flight(case)
                start(c["restart-waiting"], good)
                killed = crash.kill_server()
                time.sleep(RESTART_DOWN_S)
                back = crash.start_server()
                for case in running:
                    holds[case.name].release()
                for name in ("restart-running-1", "restart-running-2", "restart-waiting"):
                    c[name].marks.update(killed=killed, back=back)

            for t in starting:
                t.join()
            if failures:
                pytest.fail("; ".join(failures))
            _background(world, "faults", faults_scenario)
            _background(world, "crash", crash_scenario)
            yield world
        finally:
            for t in starting:
                t.join()  # when setting up failed half-way
            stops = [threading.Thread(target=s.down) for s in (faults, crash)]
            for t in stops:
                t.start()
            for t in stops:
                t.join()


# -- checks ------------------------------------------------------------------------------


def _whereabouts(world: World, case: Case) -> str:
    """What a case's run went through and what the platform got of it, for a failure's
    message: which step of the way (heartbeats, the crash automation, notify-outcome, the
    delivery) did not happen."""
    stack = case.stack
    lines = [f"{case.name} ({case.run_id}), marks {case.marks}; its states:"]
    with contextlib.suppress(Exception):
        lines += [f"  {t:.1f} {kind} {name}" for kind, name, t in stack.state_times(case.run_id)]  # type: ignore[arg-type]
    with contextlib.suppress(Exception):
        lines += [
            f"  notify-outcome {r.name}: {r.state_name} at {r.state.timestamp}"
            for r in stack.notify_runs(case.run_id)
        ]
    got = world.platform.delivered(for_scan(case.scan_id))
    lines.append(f"the platform got: {[r.json.get('type') for r in got]}")
    return "\n".join(lines)


def _submitted(world: World, case: Case, timeout: float = WAIT) -> uuid.UUID:
    """The case's run id, once its scenario (running in the background) has created it."""
    deadline = time.monotonic() + timeout
    scenario = "faults" if case.stack is world.faults else "crash"  # its _background name
    while case.run_id is None:
        if world.done[scenario].is_set():
            world.scenario_ok(scenario)  # says why it stopped
            raise AssertionError(f"scenario {scenario} never submitted {case.name}")
        assert time.monotonic() < deadline, f"{case.name} was never submitted"
        time.sleep(0.5)
    return case.run_id


def _final(world: World, case: Case, timeout: float = WAIT) -> Any:
    return case.stack.wait_state(_submitted(world, case), FINAL, timeout)


def delivered(
    world: World,
    case: Case,
    event_type: str,
    outcome: str,
    *,
    paths: set[str] | None = None,
    timeout: float = WAIT,
) -> list[Received]:
    """The platform got this outcome, signed and schema-valid, every copy with one event_id;
    ``paths``: the delivery paths that must have got through (default: any)."""
    assert case.run_id is not None
    match = for_scan(case.scan_id, event_type)
    deadline = time.monotonic() + timeout
    while True:
        got = world.platform.delivered(match)
        if got and (paths is None or {r.json["source"] for r in got} >= paths):
            break
        assert time.monotonic() < deadline, (
            f"{case.name}: {event_type} not delivered by {paths or 'any path'}; "
            f"refused: {[r.status for r in world.platform.all(match)]}"
        )
        time.sleep(0.3)
    copies = world.platform.all(match)
    assert {r.json["event_id"] for r in copies} == {str(event_id_for(case.run_id, outcome))}
    for copy in copies:
        assert copy.json["flow_run_id"] == str(case.run_id)
        if copy.status < 300:
            assert copy.verified == "ok", copy.verified
            jsonschema.validate(copy.json, SCHEMA)
    return got


def first_arrival(received: list[Received]) -> float:
    return min(r.at for r in received)


def _figure_of_run(
    case: Case, final: str, got: list[Received], fault: str, outcome: str, note: str = ""
) -> None:
    """A row of the closing table: the run's span to ``final`` and on to the platform."""
    assert case.run_id is not None
    started = case.stack.first_state_at(case.run_id, "RUNNING")
    done = case.stack.last_state_at(case.run_id, final)
    FAULT_FIGURES.append(
        FaultFigure(fault, outcome, done - started, first_arrival(got) - done, note)
    )


def _prefix(world: World, case: Case) -> str:
    return f"results/{case.patient_id}/{case.scan_id}/"


def _keys(world: World, case: Case) -> list[str]:
    listed = world.s3.list_objects_v2(Bucket=world.results_bucket, Prefix=_prefix(world, case))
    return [o["Key"].removeprefix(_prefix(world, case)) for o in listed.get("Contents", [])]


# -- the faults stack --------------------------------------------------------------------


def test_s3_errors_and_throttling_for_a_while_are_ridden_out(world: World) -> None:
    case, proxy = world.cases["s3-flaky"], world.proxies["s3-flaky"]
    run = _final(world, case)
    assert run.state.type.value == "COMPLETED", run.state.message
    log = proxy.exchanges()
    scan_key = f"patients/{case.patient_id}/scans/{case.scan_id}.mp4"
    reads = [e for e in log if e.request.key.endswith(scan_key)]
    assert {e.request.method for e in reads} >= {"HEAD", "GET"}
    writes = [e for e in log if e.request.method == "PUT"]
    for exchanges in (reads, writes):  # downloads and uploads: refused, retried, served
        assert any(e.injected for e in exchanges) and any(e.status == 200 for e in exchanges)
    injected = {e.injected for e in log if e.injected}
    assert {"InternalError", "SlowDown", "ServiceUnavailable"} <= injected
    outage = next(r for r in proxy.rules if isinstance(r, Outage))
    assert outage.began is not None
    during = [e for e in log if outage.began <= e.request.at < outage.began + S3_OUTAGE_S]
    assert during and all(e.injected for e in during)
    # the manifest is the last object written, and it is there
    stored = [e.request.key for e in writes if e.status == 200]
    assert stored[-1].endswith(f"{case.scan_id}/manifest.json"), stored[-3:]
    assert "manifest.json" in _keys(world, case)
    got = delivered(world, case, "scan.completed", "completed", paths={"hook", "automation"})
    _figure_of_run(
        case,
        "COMPLETED",
        got,
        "S3 500/503/SlowDown, then 10 s down",
        "Completed, manifest written last",
        f"{len([e for e in log if e.injected])} of {len(log)} S3 requests refused, "
        "all retried by boto3",
    )


def test_s3_down_for_too_long_fails_the_scan_with_storage_error(world: World) -> None:
    from scanflow.storage import S3_RETRIES

    case, proxy = world.cases["s3-down"], world.proxies["s3-down"]
    run = _final(world, case)
    assert run.state.type.value == "FAILED"
    message = run.state.message
    attempts = S3_RETRIES["max_attempts"] + 1  # type: ignore[operator]
    assert "[storage_error] S3 answered" in message and f"after {attempts} attempts" in message
    outage = next(r for r in proxy.rules if isinstance(r, Outage))
    assert outage.began is not None
    first_refused = next(e for e in proxy.exchanges() if e.injected)
    tries = proxy.exchanges(lambda e: e.request.key == first_refused.request.key)
    assert len(tries) == attempts and all(e.injected for e in tries)
    keys = _keys(world, case)
    assert any(k.startswith("frames/") for k in keys)  # written before S3 went down ...
    assert "manifest.json" not in keys  # ... and never published
    got = delivered(world, case, "scan.failed", "failed", paths={"hook", "automation"})
    assert {r.json["reason"] for r in got} == {"storage_error"}
    done = case.stack.last_state_at(case.run_id, "FAILED")  # type: ignore[arg-type]
    FAULT_FIGURES.append(
        FaultFigure(
            "S3 down for good (after the frames)",
            "Failed [storage_error], no manifest",
            done - outage.began,
            first_arrival(got) - done,
            f"{attempts} attempts of the refused request, then the run fails",
        )
    )


def test_a_full_results_disk_fails_the_scan_with_storage_error(world: World) -> None:
    if world.disk is None:
        pytest.skip(f"no way to get a full disk here: {world.disk_skip}")
    case = world.cases["disk-full"]
    run = _final(world, case)
    assert run.state.type.value == "FAILED"
    assert "[storage_error] cannot write file://" in run.state.message
    assert "the results disk is full" in run.state.message
    scan_dir = world.disk / "results" / case.patient_id / case.scan_id
    assert not (scan_dir / "manifest.json").exists()
    assert not [p for p in scan_dir.rglob(".*") if p.is_file()]  # no temporary left over
    got = delivered(world, case, "scan.failed", "failed", paths={"hook", "automation"})
    assert {r.json["reason"] for r in got} == {"storage_error"}
    _figure_of_run(
        case, "FAILED", got, "results disk full (1 MiB tmpfs)", "Failed [storage_error], disk full"
    )


@pytest.mark.parametrize(
    ("name", "event_type", "outcome", "state"),
    [
        ("platform-down-completed", "scan.completed", "completed", "COMPLETED"),
        ("platform-down-rejected", "scan.rejected", "failed", "FAILED"),
    ],
)
def test_platform_down_for_minutes_loses_nothing(
    world: World, name: str, event_type: str, outcome: str, state: str
) -> None:
    case = world.cases[name]
    run = _final(world, case)
    assert run.state.type.value == state
    got = delivered(world, case, event_type, outcome, timeout=DOWN_S + WAIT)
    recovered = world.refused_from[case.scan_id] + DOWN_S
    refused = [r for r in world.platform.all(for_scan(case.scan_id, event_type)) if r.status == 503]
    assert refused and all(r.at < recovered for r in refused)
    assert first_arrival(got) >= recovered
    assert {r.json["source"] for r in got} == {"automation"}  # the hook gave up in 30 s
    messages = world.slack.all(for_scan(case.scan_id, event_type))
    assert len(messages) == 1  # Slack was up: posted once, by one path
    done = case.stack.last_state_at(case.run_id, state)  # type: ignore[arg-type]
    FAULT_FIGURES.append(
        FaultFigure(
            f"platform down {DOWN_S:.0f} s ({event_type.split('.')[1]} scan)",
            f"{state.title()}, delivered after recovery",
            done - case.stack.first_state_at(case.run_id, "RUNNING"),  # type: ignore[arg-type]
            first_arrival(got) - done,
            f"{len(refused)} refused attempts; delivered {first_arrival(got) - recovered:.1f} s "
            "after the platform came back",
        )
    )


def test_the_worker_keeps_serving_after_the_faults(world: World) -> None:
    world.scenario_ok("faults")
    case = world.cases["after-faults"]
    run = _final(world, case)
    assert run.state.type.value == "COMPLETED", run.state.message
    delivered(world, case, "scan.completed", "completed")


# -- the crash stack ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["restart-running-1", "restart-running-2", "restart-waiting"])
def test_server_restart_with_runs_in_flight(world: World, name: str) -> None:
    """Runs in flight ride out the restart (the client retries while the server is away)
    and are reported. Prefect holds the automations of events that follow one from before
    the restart for 15 minutes (its causal ordering forgets what it saw), so the report of
    these comes from the state hooks; the automation's copy is not waited for."""
    world.scenario_ok("crash")
    case = world.cases[name]
    run = _final(world, case)
    assert run.state.type.value == "COMPLETED", run.state.message
    got = delivered(world, case, "scan.completed", "completed")
    done = case.stack.last_state_at(case.run_id, "COMPLETED")  # type: ignore[arg-type]
    killed, back = case.marks["killed"], case.marks["back"]
    assert done > killed, "the run ended before the server went down: not in flight"
    FAULT_FIGURES.append(
        FaultFigure(
            f"server SIGKILLed, up {back - killed:.0f} s later ({name.split('-', 1)[1]})",
            "Completed",
            done - killed,
            first_arrival(got) - done,
            f"first copy via {sorted({r.json['source'] for r in got})}",
        )
    )


@pytest.mark.parametrize("name", ["worker-kill-1", "worker-kill-2"])
def test_killed_worker_runs_are_crashed_reported_and_retried(world: World, name: str) -> None:
    world.scenario_ok("crash")
    case = world.cases[name]
    assert case.run_id is not None
    got = delivered(world, case, "scan.crashed", "crashed", paths={"automation"})
    crash = next(s for s in case.stack.states(case.run_id) if s.type.value == "CRASHED")
    assert (crash.message or "").startswith("[crashed] no heartbeat"), crash.message
    crashed_at = crash.timestamp.timestamp()
    killed = case.marks["killed"]
    FAULT_FIGURES.append(
        FaultFigure(
            f"worker + flow processes SIGKILLed ({name[-1]})",
            "Crashed (heartbeats), reported",
            crashed_at - killed,
            first_arrival(got) - crashed_at,
        )
    )
    # rescheduled once (crash_retries=1): the same run completes on the new worker
    run = case.stack.wait_state(case.run_id, {"COMPLETED"}, WAIT)
    assert run.run_count == 2
    names = [s[1] for s in case.stack.state_times(case.run_id)]
    assert names.index("AwaitingRetry") > names.index("Crashed")
    done = case.stack.last_state_at(case.run_id, "COMPLETED")
    again = delivered(world, case, "scan.completed", "completed")
    assert {r.json["attempt"] for r in again} == {2}  # the event says it was retried
    assert {r.json["cause"] for r in got} == {"infrastructure"}
    FAULT_FIGURES.append(
        FaultFigure(
            f"  ... retried on the new worker ({name[-1]})",
            "Completed (same run, attempt 2)",
            done - killed,
            first_arrival(again) - done,
        )
    )


def test_a_new_worker_serves_new_scans(world: World) -> None:
    world.scenario_ok("crash")
    case = world.cases["new-worker"]
    run = _final(world, case)
    assert run.state.type.value == "COMPLETED", run.state.message
    got = delivered(world, case, "scan.completed", "completed")
    done = case.stack.last_state_at(case.run_id, "COMPLETED")  # type: ignore[arg-type]
    FAULT_FIGURES.append(
        FaultFigure(
            "new scan after the new worker started",
            "Completed",
            done - case.marks["submitted"],
            first_arrival(got) - done,
            "time to final state from submission",
        )
    )
