"""scanflow.local.prefork on a stack of its own (``scanflow up`` in a temporary home): the
worker's flow runs are forked from the warm server, and everything the worker relies on in
a flow run's process still holds through the client between them: the run's output, its
exit status, cancellation, a SIGKILL. And a run never depends on the warm server: without
it, with a setting it read at import time changed, or with the repository's code changed
under it, runs start cold and complete.
"""

from __future__ import annotations

import os
import re
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cv.synthetic import ScanSpec, SyntheticScan, render_scan
from scanflow.local import prefork
from scanflow.local.sandbox import FINAL, Sandbox
from scanflow.settings import REPO_ROOT

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not prefork.available(), reason="fork and SCM_RIGHTS: Linux only"),
]

WAIT = 240


@pytest.fixture(scope="module")
def box() -> Iterator[Sandbox]:
    with Sandbox("prefork", settings={"pool_concurrency": "2"}) as sandbox:
        yield sandbox


@pytest.fixture(scope="module")
def long_scan(tmp_path_factory: pytest.TempPathFactory) -> SyntheticScan:
    """Long enough to be caught running (~10 s of work)."""
    folder = tmp_path_factory.mktemp("prefork-scans")
    return render_scan(folder / "long.mp4", ScanSpec(duration_s=40.0, fps=15.0, seed=7))


def _log(box: Sandbox, name: str) -> str:
    return (box.home / "logs" / f"{name}.log").read_text(errors="replace")


def _logged(box: Sandbox, text: str, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while text not in _log(box, "prefork"):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _forked(box: Sandbox, run_id: uuid.UUID) -> list[int]:
    found = re.findall(rf"forked (\d+) for flow run {run_id}", _log(box, "prefork"))
    return [int(p) for p in found]


def _gone(pid: int, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.1)
    return False


def _running(box: Sandbox, run_id: uuid.UUID) -> tuple[int, int]:
    """(client, child) of a run once it runs."""
    box.wait_state(run_id, {"RUNNING"}, WAIT)
    client = box.launched_process(run_id)
    child = box.flow_process(run_id)
    assert child != client and child in _forked(box, run_id)
    return client, child


def test_a_run_is_forked_from_the_warm_server_and_its_output_reaches_the_worker(
    box: Sandbox, good_scan: SyntheticScan
) -> None:
    assert box.pid("prefork") is not None
    assert prefork.socket_for(box.home).is_socket()
    run_id = box.submit(f"pf-ok-{uuid.uuid4().hex[:6]}", good_scan.path.as_uri())
    run = box.wait_state(run_id, FINAL, WAIT)
    assert run.state.type.value == "COMPLETED", run.state
    (child,) = _forked(box, run_id)
    assert _logged(box, f"child {child} exited 0")  # a moment after its final state
    # the child wrote to the client's stderr, which the worker streams into its log
    worker = _log(box, "worker")
    assert f"Flow run '{run.name}' - Finished in state Completed()" in worker
    # no file is left naming the finished run's process
    assert prefork.child_of(prefork.socket_for(box.home), str(run_id)) is None


def test_cancelling_a_forked_run_stops_its_child(box: Sandbox, long_scan: SyntheticScan) -> None:
    from prefect.states import Cancelling

    run_id = box.submit(f"pf-cancel-{uuid.uuid4().hex[:6]}", long_scan.path.as_uri())
    client, child = _running(box, run_id)
    with box.client() as api:
        api.set_flow_run_state(run_id, Cancelling(message="by the test"))
    run = box.wait_state(run_id, FINAL, WAIT)
    assert run.state.type.value == "CANCELLED", run.state
    assert _gone(child) and _gone(client)


def test_a_sigkilled_client_takes_its_child_with_it_and_the_run_is_crashed(
    box: Sandbox, long_scan: SyntheticScan
) -> None:
    run_id = box.submit(f"pf-kill-{uuid.uuid4().hex[:6]}", long_scan.path.as_uri())
    client, child = _running(box, run_id)
    os.kill(client, signal.SIGKILL)
    assert _gone(child), "the warm server did not kill the child of a dead client"
    run = box.wait_state(run_id, FINAL, WAIT)
    assert run.state.type.value == "CRASHED", run.state
    assert _logged(box, f"the client of child {child} is gone")


def test_a_sigkilled_child_is_the_runs_exit_status(box: Sandbox, long_scan: SyntheticScan) -> None:
    """The client exits as its child did: killed by SIGKILL, which the worker reports."""
    run_id = box.submit(f"pf-child-{uuid.uuid4().hex[:6]}", long_scan.path.as_uri())
    client, child = _running(box, run_id)
    os.kill(child, signal.SIGKILL)
    assert _gone(client)
    run = box.wait_state(run_id, FINAL, WAIT)
    assert run.state.type.value == "CRASHED", run.state
    assert _logged(box, f"child {child} exited -9")
    assert "-9" in (run.state.message or "") or "SIGKILL" in (run.state.message or ""), run.state


def test_a_setting_read_at_import_time_sends_the_run_cold(
    box: Sandbox, good_scan: SyntheticScan
) -> None:
    with box.client() as api:
        deployment = api.read_deployment_by_name("process-scan/local")
        run = api.create_flow_run_from_deployment(
            deployment.id,
            parameters={
                "scan_id": f"pf-env-{uuid.uuid4().hex[:6]}",
                "patient_id": "patient-prefork",
                "video_uri": good_scan.path.as_uri(),
            },
            job_variables={"env": {"OMP_NUM_THREADS": "1"}},
        )
    done = box.wait_state(run.id, FINAL, WAIT)
    assert done.state.type.value == "COMPLETED", done.state
    assert _forked(box, run.id) == []
    assert "cold run: OMP_NUM_THREADS differs from the warm server's" in _log(box, "prefork")


def test_changed_code_sends_the_next_run_cold_and_the_server_restarts_with_it(
    box: Sandbox, good_scan: SyntheticScan
) -> None:
    module = REPO_ROOT / "cv" / "errors.py"  # loaded by the warm server
    before = box.pid("prefork")
    now = time.time()
    os.utime(module, (now, now))
    first = box.submit(f"pf-stale-{uuid.uuid4().hex[:6]}", good_scan.path.as_uri())
    assert box.wait_state(first, FINAL, WAIT).state.type.value == "COMPLETED"
    assert _forked(box, first) == []
    log = _log(box, "prefork")
    assert f"cold run: {module} changed since the warm server loaded it" in log
    deadline = time.monotonic() + 120
    while log.count("warm on") < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
        log = _log(box, "prefork")
    assert f"restarting with the new code ({module} changed)" in log
    assert log.count("warm on") == 2, log[-2000:]
    assert box.pid("prefork") == before  # the same process, a new image (exec)
    second = box.submit(f"pf-fresh-{uuid.uuid4().hex[:6]}", good_scan.path.as_uri())
    assert box.wait_state(second, FINAL, WAIT).state.type.value == "COMPLETED"
    assert len(_forked(box, second)) == 1


def test_a_killed_warm_server_takes_its_runs_then_runs_start_cold_until_up_restarts_it(
    box: Sandbox, good_scan: SyntheticScan, long_scan: SyntheticScan
) -> None:
    pid = box.pid("prefork")
    assert pid is not None
    running = box.submit(f"pf-orphan-{uuid.uuid4().hex[:6]}", long_scan.path.as_uri())
    client, child = _running(box, running)
    os.kill(pid, signal.SIGKILL)
    assert _gone(pid) and _gone(child) and _gone(client)
    run = box.wait_state(running, FINAL, WAIT)
    assert run.state.type.value == "CRASHED", run.state
    # its socket is left behind, refusing: the next run starts cold and completes
    assert prefork.socket_for(box.home).is_socket()
    cold = box.submit(f"pf-cold-{uuid.uuid4().hex[:6]}", good_scan.path.as_uri())
    assert box.wait_state(cold, FINAL, WAIT).state.type.value == "COMPLETED"
    assert _forked(box, cold) == []
    out = box.cli("up")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "warm start: started, ready" in out.stdout, out.stdout
    assert box.pid("prefork") not in (None, pid)
    warm = box.submit(f"pf-warm-{uuid.uuid4().hex[:6]}", good_scan.path.as_uri())
    assert box.wait_state(warm, FINAL, WAIT).state.type.value == "COMPLETED"
    assert len(_forked(box, warm)) == 1
