"""Per-run overhead and the local worker's throughput, on a local stack of its own
(scanflow.local.sandbox: ``scanflow up`` in a temporary home on free ports).

    .venv/bin/python bench/throughput.py [-n 12] [--seconds 20] [--overhead-runs 3]
                                         [--pool-concurrency 2 ...] [--start warm cold]
                                         [--json out.json]

Three measurements of the same synthetic scan (``scanflow sample``: 640x480, 30 fps,
``--seconds`` long), in one run, so that only their ratios are read:

- **bound**: the flow function called back to back ``-n`` times in one Python process
  against the same server (what ``scanflow process`` calls). Imports, the interpreter and
  the model load are paid once; every scan still makes its flow and task runs on the
  server. Nothing of the worker's is in it (no polling, no process per run): the fair
  ceiling of "no orchestration" for the same work on the same cores.
- **per scan, cold**: ``scanflow process`` once per scan, one after the other: the bound
  plus a fresh process (interpreter, imports, model load) per scan.
- **worker**: ``-n`` runs of ``process-scan/local`` created at once and served by the
  stack's process worker at the pool's concurrency (``--pool-concurrency``, default the
  stack's 2; give several to compare). Runs per minute from the first submission to the
  last flow-run process's exit. ``--start``: how the worker starts a flow run, ``warm``
  (the default: forked from the stack's warm parent, scanflow.local.prefork) or ``cold``
  (``SCANFLOW_PREFORK=false``: a fresh ``python -m prefect.engine``); give both to compare,
  a stack each.

Before the burst, ``--overhead-runs`` runs are submitted one at a time to an idle worker,
and each run's overhead is read from Prefect's state history (flow-run states, task runs'
start and end times) and from the flow-run process itself (seen in /proc every 50 ms, by
the ``PREFECT__FLOW_RUN_ID`` in its environment; warm, the client the worker started, which
lives as long as its forked child): Scheduled to Pending (the worker's poll),
Pending to Running (process start, imports), Running to the first task run's start, the
last task run's end to the Completed state, and Completed to the process's exit.

Timed: run it under ``flock /tmp/scanflow-bench.lock`` on a shared machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scanflow.local.sandbox import FINAL, Sandbox  # noqa: E402
from scanflow.local.stack import process_tree  # noqa: E402

GOAL = 0.80  # the worker should reach this share of the bound's runs per minute
START = {  # how the worker starts a flow run (SCANFLOW_PREFORK)
    "warm": "forked from a warm parent (scanflow.local.prefork)",
    "cold": "as a fresh python -m prefect.engine",
}


# -- the flow-run processes, seen from /proc ---------------------------------------------


class ProcessWatch(threading.Thread):
    """First and last time each flow-run process (``PREFECT__FLOW_RUN_ID=<id>`` in its
    environment) was seen, sampled every ``period`` seconds among the worker's
    descendants."""

    def __init__(self, root_pid: int, period: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.root_pid = root_pid
        self.period = period
        self.first: dict[str, float] = {}
        self.last: dict[str, float] = {}
        self._halt = threading.Event()
        self._known: dict[int, str] = {}

    def _descendants(self) -> list[int]:
        tree = process_tree()
        found, todo = [], list(tree.get(self.root_pid, []))
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo.extend(tree.get(pid, []))
        return found

    def _run_id(self, pid: int) -> str | None:
        if pid in self._known:
            return self._known[pid]
        # not cached while absent: a child forked by the worker has the worker's environment
        # until it execs the flow run's interpreter
        with contextlib.suppress(OSError):
            for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                if item.startswith(b"PREFECT__FLOW_RUN_ID="):
                    self._known[pid] = item.split(b"=", 1)[1].decode()
                    return self._known[pid]
        return None

    def run(self) -> None:
        while not self._halt.wait(self.period):
            now = time.time()
            for pid in self._descendants():
                run_id = self._run_id(pid)
                if run_id:
                    self.first.setdefault(run_id, now)
                    self.last[run_id] = now

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)


# -- one run's overhead, from the API ----------------------------------------------------


@dataclass
class RunTimes:
    """Seconds between the moments of one run (None where a moment was not seen)."""

    scheduled_to_pending: float | None
    pending_to_running: float | None
    running_to_first_task: float | None
    work: float | None  # first task run's start to the last one's end
    last_task_to_final: float | None
    final_to_exit: float | None  # the process's last sighting after the final state

    @property
    def before(self) -> float | None:
        """Pending to the first task run's start."""
        if self.pending_to_running is None or self.running_to_first_task is None:
            return None
        return self.pending_to_running + self.running_to_first_task

    @property
    def after(self) -> float | None:
        """The last task run's end to the process's exit."""
        if self.last_task_to_final is None or self.final_to_exit is None:
            return None
        return self.last_task_to_final + self.final_to_exit


def _ts(value: Any) -> float:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return float(value.timestamp())


def run_times(box: Sandbox, run_id: uuid.UUID, watch: ProcessWatch | None) -> RunTimes:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with box.client() as client:
        states = list(client.read_flow_run_states(run_id))
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
        )
    when: dict[str, float] = {}
    for s in sorted(states, key=lambda s: _ts(s.timestamp)):
        when.setdefault(s.type.value, _ts(s.timestamp))
    starts = [_ts(t.start_time) for t in tasks if t.start_time]
    ends = [_ts(t.end_time) for t in tasks if t.end_time]
    final = next((when[k] for k in ("COMPLETED", "FAILED", "CRASHED") if k in when), None)
    exit_at = watch.last.get(str(run_id)) if watch else None

    def gap(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else b - a

    return RunTimes(
        scheduled_to_pending=gap(when.get("SCHEDULED"), when.get("PENDING")),
        pending_to_running=gap(when.get("PENDING"), when.get("RUNNING")),
        running_to_first_task=gap(when.get("RUNNING"), min(starts, default=None)),
        work=gap(min(starts, default=None), max(ends, default=None)),
        last_task_to_final=gap(max(ends, default=None), final),
        final_to_exit=gap(final, exit_at),
    )


# -- the three measurements ----------------------------------------------------------------


def bound(box: Sandbox, video: Path, n: int) -> tuple[float, list[float]]:
    """The flow called ``n`` times in one process (a child with the stack's environment):
    the process's wall time and each call's seconds."""
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, __file__, "--inline", str(video), "--inline-runs", str(n)],
        env=box.env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    wall = time.monotonic() - started
    if out.returncode != 0:
        raise RuntimeError(f"inline runs failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    return wall, json.loads(out.stdout.strip().splitlines()[-1])["seconds"]


def inline(video: Path, n: int) -> None:
    """The ``--inline`` child: the flow back to back in this process."""
    from flows.process_scan import process_scan

    seconds = []
    for i in range(n):
        start = time.perf_counter()
        state = process_scan(
            scan_id=f"inline-{i:03d}",
            patient_id=f"bench-inline-{i:03d}",
            video_uri=video.as_uri(),
            return_state=True,
        )
        if not state.is_completed():
            raise SystemExit(f"inline run {i}: {state.name} {state.message}")
        seconds.append(time.perf_counter() - start)
    print(json.dumps({"seconds": seconds}), flush=True)


def cold(box: Sandbox, video: Path, n: int) -> tuple[float, list[float]]:
    """``scanflow process`` once per scan, one after the other."""
    seconds = []
    for i in range(n):
        start = time.monotonic()
        out = box.cli("process", str(video), "--patient-id", f"bench-cold-{i:03d}",
                      "--scan-id", f"cold-{i:03d}", timeout=600)  # fmt: skip
        if out.returncode != 0:
            raise RuntimeError(f"scanflow process exited {out.returncode}:\n{out.stderr[-2000:]}")
        seconds.append(time.monotonic() - start)
    return sum(seconds), seconds


@contextlib.contextmanager
def watching(box: Sandbox) -> Iterator[ProcessWatch]:
    pid = box.pid("worker")
    if pid is None:
        raise RuntimeError("the stack's worker is not running")
    watch = ProcessWatch(pid)
    watch.start()
    try:
        yield watch
    finally:
        watch.stop()


def _wait_final(box: Sandbox, ids: list[uuid.UUID], timeout: float) -> None:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + timeout
    with box.client() as client:
        while time.monotonic() < deadline:
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)), limit=len(ids)
            )
            if len(runs) == len(ids) and all(r.state and r.state.type.value in FINAL for r in runs):
                bad = [r.name for r in runs if r.state and r.state.type.value != "COMPLETED"]
                if bad:
                    raise RuntimeError(f"runs did not complete: {bad}")
                return
            time.sleep(0.25)
    raise TimeoutError(f"runs not final after {timeout:.0f} s")


def _wait_exits(watch: ProcessWatch, ids: list[uuid.UUID], timeout: float = 60) -> float:
    """Until no process of these runs is seen; the last sighting's time."""
    deadline = time.monotonic() + timeout
    wanted = {str(i) for i in ids}
    while time.monotonic() < deadline:
        now = time.time()
        if wanted <= watch.last.keys() and all(now - watch.last[i] > 0.2 for i in wanted):
            return max(watch.last[i] for i in wanted)
        time.sleep(0.05)
    raise TimeoutError("flow-run processes still running")


def overhead(box: Sandbox, video: Path, runs: int) -> list[RunTimes]:
    """Runs submitted one at a time to an idle worker."""
    found = []
    with watching(box) as watch:
        for i in range(runs):
            run_id = box.submit(f"alone-{i:03d}", video.as_uri(), patient_id=f"bench-alone-{i:03d}")
            _wait_final(box, [run_id], 600)
            _wait_exits(watch, [run_id])
            found.append(run_times(box, run_id, watch))
    return found


def worker(box: Sandbox, video: Path, n: int, tag: str) -> tuple[float, list[RunTimes]]:
    """``n`` runs created at once; seconds from the first submission to the last exit."""
    with watching(box) as watch:
        started = time.time()
        ids = [
            box.submit(f"{tag}-{i:03d}", video.as_uri(), patient_id=f"bench-{tag}-{i:03d}")
            for i in range(n)
        ]
        _wait_final(box, ids, 1800)
        ended = _wait_exits(watch, ids)
        times = [run_times(box, i, watch) for i in ids]
    return ended - started, times


# -- the report ------------------------------------------------------------------------------


@dataclass
class Report:
    scans: int
    scan: str
    bound_wall_s: float
    bound_per_scan_s: list[float]
    cold_wall_s: float
    cold_per_scan_s: list[float]
    alone: dict[str, list[dict[str, float | None]]]
    worker_wall_s: dict[str, float] = field(default_factory=dict)
    worker_runs: dict[str, list[dict[str, float | None]]] = field(default_factory=dict)


def _med(values: list[float | None]) -> float:
    got = [v for v in values if v is not None]
    return statistics.median(got) if got else float("nan")


def _times(t: RunTimes) -> dict[str, float | None]:
    return {**asdict(t), "before": t.before, "after": t.after}


def print_report(r: Report) -> None:
    per_min = 60.0 * r.scans
    bound_rate = per_min / r.bound_wall_s
    warm = statistics.median(r.bound_per_scan_s[1:] or r.bound_per_scan_s)
    print(f"scan: {r.scan}; {r.scans} scans; {os.cpu_count()} cores")
    print()
    for start, alone in r.alone.items():
        print(
            f"per-run overhead, flow runs started {START[start]}, submitted one at a time to an "
            f"idle worker (median of {len(alone)}; baseline: a warm scan in-process, {warm:.2f} s)"
        )
        rows = [
            ("Scheduled -> Pending (worker poll)", "scheduled_to_pending"),
            ("Pending -> Running (process start, imports)", "pending_to_running"),
            ("Running -> first task run starts", "running_to_first_task"),
            ("first task start -> last task end (the work)", "work"),
            ("last task end -> final state", "last_task_to_final"),
            ("final state -> flow-run process exit (/proc)", "final_to_exit"),
            ("Pending -> first task (before)", "before"),
            ("last task end -> process exit (after)", "after"),
        ]
        for label, key in rows:
            v = _med([a[key] for a in alone])
            print(f"  {label:46s} {v:6.2f} s   {v / warm:5.2f}x a warm scan")
        parts = ("scheduled_to_pending", "before", "after")
        total = sum(_med([a[k] for a in alone]) for k in parts)
        print(f"  {'overhead in all (Scheduled -> first task, + after)':46s} {total:6.2f} s   "
              f"{total / warm:5.2f}x a warm scan")  # fmt: skip
    print()
    print("throughput (runs per minute; from the first scan's start to the last one's end)")
    first = r.bound_per_scan_s[0]
    print(f"  bound: flow called back to back in one process  {bound_rate:6.2f}/min  "
          f"({r.bound_wall_s:.1f} s; per scan {warm:.2f} s warm, first {first:.2f} s)")  # fmt: skip
    cold_rate = per_min / r.cold_wall_s
    print(f"  scanflow process per scan, one after another   {cold_rate:6.2f}/min  "
          f"({r.cold_wall_s:.1f} s; {cold_rate / bound_rate:.3f} of the bound)")  # fmt: skip
    for key, wall in r.worker_wall_s.items():
        rate = per_min / wall
        runs = r.worker_runs[key]
        before, after = _med([x["before"] for x in runs]), _med([x["after"] for x in runs])
        conc, start = key.split()
        print(f"  worker, pool concurrency {conc:2s}, {start} start        {rate:6.2f}/min  "
              f"({wall:.1f} s; {rate / bound_rate:.3f} of the bound, goal {GOAL:.2f}; "
              f"median run: before {before:.2f} s, work "
              f"{_med([x['work'] for x in runs]):.2f} s, after {after:.2f} s)")  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", "--scans", type=int, default=12)
    ap.add_argument("--seconds", type=float, default=20.0, help="each scan's length")
    ap.add_argument("--overhead-runs", type=int, default=3)
    ap.add_argument("--pool-concurrency", type=int, nargs="+", default=[2],
                    help="the worker's pool concurrency; several: one stack each")  # fmt: skip
    ap.add_argument("--start", choices=sorted(START), nargs="+", default=["warm"],
                    help="how the worker starts flow runs; several: one stack each")  # fmt: skip
    ap.add_argument("--query-seconds", type=float, default=None,
                    help="the worker poll, s (the stack: 1)")  # fmt: skip
    ap.add_argument("--video", type=Path, help="this scan instead of a rendered one")
    ap.add_argument("--skip-cold", action="store_true", help="no scanflow process per scan")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--inline", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--inline-runs", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inline:
        inline(args.inline, args.inline_runs)
        return 0
    work = Path(tempfile.mkdtemp(prefix="bench-throughput-"))
    video = work / "scan.mp4"
    report: Report | None = None
    for start in args.start:
        for conc in args.pool_concurrency:
            settings = {"pool_concurrency": str(conc), "prefork": str(start == "warm").lower()}
            if args.query_seconds is not None:
                settings["worker_query_seconds"] = str(args.query_seconds)
            with Sandbox(f"bench-tp{conc}", settings=settings) as box:
                if report is None:
                    if args.video:  # copied under the temporary folder: the sandbox reads there
                        shutil.copyfile(args.video, video)
                    else:
                        out = box.cli("sample", str(video), "--seconds", str(args.seconds))
                        if out.returncode != 0:
                            raise RuntimeError(out.stderr)
                    print(f"stack up; measuring the bound ({args.scans} scans) ...", flush=True)
                    bwall, bper = bound(box, video, args.scans)
                    cwall, cper = (0.0, []) if args.skip_cold else cold(box, video, args.scans)
                    print(f"bound {bwall:.1f} s {bper}; cold {cwall:.1f} s {cper}", flush=True)
                    scan = str(args.video or f"{args.seconds:g} s synthetic 640x480 at 30 fps")
                    report = Report(args.scans, scan, bwall, bper, cwall or float("nan"), cper, {})
                if start not in report.alone:
                    alone = overhead(box, video, args.overhead_runs)
                    print(f"alone, {start} start: {alone}", flush=True)
                    report.alone[start] = [_times(a) for a in alone]
                print(f"worker at pool concurrency {conc}, {start} start ...", flush=True)
                wall, runs = worker(box, video, args.scans, f"burst{conc}{start}")
                report.worker_wall_s[f"{conc} {start}"] = wall
                report.worker_runs[f"{conc} {start}"] = [_times(t) for t in runs]
    assert report is not None
    print()
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(asdict(report), indent=2))
    return 0


if __name__ == "__main__":
    started = time.monotonic()
    code = main()
    if "--inline" not in sys.argv:
        print(f"(bench ran {time.monotonic() - started:.0f} s)")
    sys.exit(code)
