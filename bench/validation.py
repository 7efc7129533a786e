"""The capacity simulator (bench/simulation.py) checked against the real thing at small scale:
a burst through the Lambda trigger into a local stack (deployments/rehearsal/burst.py, the
code behind ``python bench/burst.py``), and the same arrivals simulated on the local
process pool with service times measured on that stack just before, runs alone.

    .venv/bin/python bench/capacity.py --validate [-n 100] [--within 10] [--alone 3]

Alone: ``--alone`` uploads, one at a time, each waited for; their state history and flow
process give Pending -> first task (before), the work (first task start -> final state)
and the final state -> process exit (after), as bench/throughput.py reads them. The burst:
``-n`` uploads within ``--within`` seconds, on PostgreSQL, the trigger's 20 invocations in
flight and 5% delivered twice, as bench/burst.py's defaults. Measured per run: created ->
end (the run's final state), created -> start (Running). The simulation is given the runs'
created times as arrivals, two workers polling every second, and the alone figures; a
second simulation stretches the work by how much slower a run is when the pool runs two
at once on these 2 cores (the burst's own median Running span over the alone one: the
simulator knows nothing of CPU contention otherwise).

Timed: run it under ``flock /tmp/scanflow-bench.lock`` on a shared machine.
"""

from __future__ import annotations

import statistics
import time
import uuid
from typing import Any

from bench.capacity import local_policy, summary
from bench.simulation import percentile, simulate
from bench.throughput import ProcessWatch, _ts, run_times
from deployments.rehearsal.burst import (
    BUCKET,
    BurstStack,
    Upload,
    plan_uploads,
    put_uploads,
    read_runs,
    render_media,
    s3_client,
    submit_burst,
    wait_for_drain,
)


def _alone_uploads(stack: BurstStack, media: dict[str, bytes], k: int) -> list[Upload]:
    s3 = s3_client(stack.s3_url)
    found = []
    for j in range(k):
        i = 9000 + j  # apart from the burst's keys
        key = f"patients/p-{i:04d}/scans/burst-{i:04d}.mp4"
        etag = s3.put_object(Bucket=BUCKET, Key=key, Body=media["good"])["ETag"].strip('"')
        found.append(Upload(i, "good", key, len(media["good"]), etag))
    return found


def validate(n: int, within_s: float, alone: int) -> None:
    stack = BurstStack("postgres", name="capacity-validate")
    with stack:
        media = render_media(stack.home / "media", 3.2, 160, 120)  # burst.py's scan
        pid = stack.pid("worker")
        assert pid is not None, "the stack's worker is not running"
        watch = ProcessWatch(pid)
        watch.start()
        try:
            singles = []
            for upload in _alone_uploads(stack, media, alone):
                sub = submit_burst(stack, [upload], within_s=0, concurrency=1, redeliver=0)
                run_id = uuid.UUID(sub.invocations[0].runs[0]["flow_run_id"])
                stack.wait_state(run_id, {"COMPLETED", "FAILED", "CRASHED"}, timeout=300)
                _settle(watch, str(run_id))
                singles.append(run_times(stack, run_id, watch))
        finally:
            watch.stop()  # not during the burst: sampling /proc costs CPU
        uploads = put_uploads(stack.s3_url, plan_uploads(n, 0.0), media)
        print(f"burst: {n} uploads within {within_s:g} s ...", flush=True)
        submit_burst(stack, uploads, within_s=within_s, concurrency=20, redeliver=0.05)
        with stack.http() as client:
            if not wait_for_drain(client, stall_s=600, timeout_s=3 * 3600):
                raise RuntimeError("the burst did not drain")
            ids = {u.scan_id for u in uploads}
            runs = [r for r in read_runs(client) if r["parameters"].get("scan_id") in ids]
    _report(singles, runs)


def _settle(watch: ProcessWatch, run_id: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        last = watch.last.get(run_id)
        if last is not None and time.time() - last > 0.3:
            return
        time.sleep(0.05)


def _report(singles: list[Any], runs: list[dict[str, Any]]) -> None:
    def med(key: str) -> float:
        return statistics.median(v for s in singles if (v := getattr(s, key)) is not None)

    before = med("before")
    work = med("work") + med("last_task_to_final")
    after = med("final_to_exit")
    running_alone = med("running_to_first_task") + work
    created = [_ts(r["created"]) for r in runs]
    t0 = min(created)
    arrivals = [c - t0 for c in created]
    latency = [_ts(r["end_time"]) - _ts(r["created"]) for r in runs]
    waits = [_ts(r["start_time"]) - _ts(r["created"]) for r in runs]
    spans = [_ts(r["end_time"]) - _ts(r["start_time"]) for r in runs]
    drain = max(_ts(r["end_time"]) for r in runs) - t0
    stretch = statistics.median(spans) / running_alone
    print(f"\nalone (median of {len(singles)}): Pending -> first task {before:.2f} s, "
          f"work {work:.2f} s, final -> exit {after:.2f} s; "
          f"Running span {running_alone:.2f} s")  # fmt: skip
    print(f"burst's median Running span {statistics.median(spans):.2f} s: "
          f"{stretch:.2f}x alone (two runs at once on 2 cores)")  # fmt: skip
    pending_to_running = med("pending_to_running")
    rows = [("measured", drain, latency, waits)]
    for label, factor in (("simulated", 1.0), ("simulated, work x contention", stretch)):
        res = simulate(local_policy(before, after), arrivals, [work * factor] * len(arrivals))
        # Running is set once the process has started: the measured wait includes that
        sim_waits = [w + pending_to_running for w in res.waits]
        rows.append((label, res.drain_s, res.latencies, sim_waits))
    print(f"\n{len(runs)} runs | drain s | latency p50 | p95 | created->Running p50 | p95")
    for label, d, lat, w in rows:
        print(f"  {label:30s} {d:7.1f} | {percentile(lat, 50):7.1f} | "
              f"{percentile(lat, 95):6.1f} | {percentile(w, 50):7.1f} | "
              f"{percentile(w, 95):6.1f}")  # fmt: skip
    _, mdrain, mlat, _ = rows[0]
    for label, d, lat, _ in rows[1:]:
        print(f"  gap, {label}: drain {d / mdrain:.3f}x, p50 "
              f"{percentile(lat, 50) / percentile(mlat, 50):.3f}x, p95 "
              f"{percentile(lat, 95) / percentile(mlat, 95):.3f}x the measured")  # fmt: skip
    print(f"  measured latency: {summary(mlat)}")
