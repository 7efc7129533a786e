"""Does work-queue priority decide which waiting flow run gets a freed concurrency slot?

Measured on the session's real Prefect server (SQLite) with a real process worker, for the
two places a limit of 1 can live:

(A) a *deployment* concurrency limit with collision_strategy ENQUEUE. The server admits a
    run when the worker proposes Pending (core_policy.SecureFlowConcurrencySlots); a run it
    cannot admit goes back to Scheduled, named "AwaitingConcurrencySlot", due
    server.deployments.concurrency_slot_wait_seconds (30 s) later. Nothing wakes it when
    the slot frees: it is retried when it falls due, so waiting runs are served in the
    order of their *last rejection*, whatever their queue.
(B) the *work pool's* concurrency limit. The worker's poll (models.workers.
    get_scheduled_flow_runs, the get-runs-from-worker-queues query) hands out only as many
    runs as the pool has free slots, ranked by queue priority, then scheduled time.

Scenario, per variant, on its own pool with queues ``uploads`` (priority 1) and
``backfill`` (priority 3): four backfill runs, then, once the first is Running, two upload
runs; the sleep flow (tests/support/priority_flow.py) runs 5 s. In (B) the backfills sleep
only once the uploads exist (a gate file): on a loaded machine the test may see the first
Running only after it has ended, and the slot it frees would go to a backfill before the
uploads are created. The figures print at the end.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import (
    ConcurrencyLimitStrategy,
    ConcurrencyOptions,
    FlowRun,
    WorkPoolStatus,
)
from prefect.workers.process import ProcessWorker

from scanflow.settings import REPO_ROOT
from tests.support import report

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ENTRYPOINT = "tests/support/priority_flow.py:priority_sleep"
QUEUES = {"uploads": 1, "backfill": 3}
AWAITING = "AwaitingConcurrencySlot"
SLOT_WAIT_S = 30  # the server's concurrency_slot_wait_seconds (default)
POLL_S = 1.0  # the worker's PREFECT_WORKER_QUERY_SECONDS

DEPLOYMENT_ENQUEUE = "A: deployment limit 1, ENQUEUE"
POOL_LIMIT = "B: work pool limit 1"

_FIGURES: list[dict[str, Any]] = []


def _table() -> list[str]:
    if not _FIGURES:
        return []
    header = f"{'variant':<32} {'start order':<13} {'upload pos':<10}"
    lines = [f"{header} upload waits s / backfill waits s"]
    for f in _FIGURES:
        order = "".join(q[0] for q in f["queue_order"])
        lines.append(
            f"{f['variant']:<32} {order:<13} {str(f['upload_positions']):<10} "
            f"{f['upload_waits_s']} / {f['backfill_waits_s']}"
        )
    return lines


report.register("queue priority vs a freed concurrency slot (u = uploads, b = backfill)", _table)


@pytest.fixture(scope="module")
def figures() -> list[dict[str, Any]]:
    """Collects each variant's figures (the table at the end of the run; each variant's as
    JSON in its test's folder)."""
    return _FIGURES


def _worker(pool: str, log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.update(
        PREFECT_WORKER_QUERY_SECONDS=str(int(POLL_S)),
        PREFECT_WORKER_PREFETCH_SECONDS="0",
        PREFECT_LOGGING_LEVEL="INFO",
    )
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "prefect", "worker", "start"]
            + ["--pool", pool, "--type", "process"],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def _until(what: str, timeout: float, check: Any, log: Path) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; worker log:\n{_tail(log)}")
        await asyncio.sleep(0.2)


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-4000:] if log.exists() else "(none)"


async def _read_runs(client: PrefectClient, ids: list[uuid.UUID]) -> list[FlowRun]:
    return await client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)))


async def _scenario(variant: str, log: Path) -> dict[str, Any]:
    suffix = uuid.uuid4().hex[:8]
    gate = log.parent / "uploads-created"  # (B) the backfills sleep once it exists
    pool = f"prio-{'enqueue' if variant == DEPLOYMENT_ENQUEUE else 'pool'}-{suffix}"
    async with get_client() as client:
        await client.create_work_pool(
            WorkPoolCreate(
                name=pool,
                type="process",
                base_job_template=ProcessWorker.get_default_base_job_template(),
                concurrency_limit=1 if variant == POOL_LIMIT else None,
            )
        )
        for name, priority in QUEUES.items():
            await client.create_work_queue(name=name, priority=priority, work_pool_name=pool)
        queues = {q.name: q.priority for q in await client.read_work_queues(work_pool_name=pool)}
        assert {n: queues[n] for n in QUEUES} == QUEUES, queues
        limit: dict[str, Any] = {}
        if variant == DEPLOYMENT_ENQUEUE:  # what prefect.yaml's concurrency_limit becomes
            limit = dict(
                concurrency_limit=1,
                concurrency_options=ConcurrencyOptions(
                    collision_strategy=ConcurrencyLimitStrategy.ENQUEUE
                ),
            )
        deployment_id = await client.create_deployment(
            flow_id=await client.create_flow_from_name("priority-sleep"),
            name=f"priority-{suffix}",
            work_pool_name=pool,
            work_queue_name="backfill",
            entrypoint=ENTRYPOINT,
            path=str(REPO_ROOT),
            # run in the checkout itself: without it the process worker copies `path` into
            # a temporary folder for every run
            job_variables={"working_dir": str(REPO_ROOT)},
            **limit,
        )
        worker = _worker(pool, log)
        try:

            async def pool_ready() -> bool:
                return (await client.read_work_pool(pool)).status == WorkPoolStatus.READY

            await _until("the worker to come online", 90, pool_ready, log)

            async def create(queue: str, n: int, **parameters: Any) -> list[uuid.UUID]:
                ids = []
                for i in range(n):
                    run = await client.create_flow_run_from_deployment(
                        deployment_id,
                        work_queue_name=queue,
                        name=f"{queue}-{i + 1}",
                        parameters=parameters,
                    )
                    ids.append(run.id)
                return ids

            backfills = await create(
                "backfill", 4, **({"gate": str(gate)} if variant == POOL_LIMIT else {})
            )

            async def one_running() -> bool:
                runs = await _read_runs(client, backfills)
                return any(r.state is not None and r.state.is_running() for r in runs)

            await _until("a backfill run to be Running", 90, one_running, log)
            if variant == DEPLOYMENT_ENQUEUE:
                # Let the backfills' retries fall due at least two worker polls before the
                # uploads' can (the first backfill still holds the slot: it sleeps 5 s).
                rejected = [
                    st.timestamp
                    for b in backfills
                    for st in await client.read_flow_run_states(b)
                    if st.name == AWAITING
                ]
                if rejected:
                    ready = max(rejected) + dt.timedelta(seconds=2 * POLL_S + 0.5)
                    gap = (ready - dt.datetime.now(dt.UTC)).total_seconds()
                    await asyncio.sleep(max(0.0, gap))
            uploads = await create("uploads", 2)
            gate.touch()
            ids = backfills + uploads

            async def all_final() -> list[FlowRun] | None:
                runs = await _read_runs(client, ids)
                done = all(r.state is not None and r.state.is_final() for r in runs)
                return runs if done else None

            runs = await _until("all six runs to finish", 240, all_final, log)
            states = {r.id: await client.read_flow_run_states(r.id) for r in runs}
        finally:
            _stop(worker)
        await client.delete_deployment(deployment_id)
        await client.delete_work_pool(pool)
    return _figures(variant, runs, states)


def _figures(variant: str, runs: list[FlowRun], states: dict[uuid.UUID, Any]) -> dict[str, Any]:
    for r in runs:
        assert r.state is not None and r.state.is_completed(), (r.name, r.state)
        assert r.start_time is not None and r.end_time is not None
    runs = sorted(runs, key=lambda r: r.start_time)  # type: ignore[arg-type,return-value]
    t0 = min(r.created for r in runs)  # type: ignore[type-var]

    def s(t: dt.datetime) -> float:
        return round((t - t0).total_seconds(), 2)  # type: ignore[operator]

    rows = []
    for pos, r in enumerate(runs, 1):
        history = sorted(states[r.id], key=lambda st: st.timestamp)
        awaiting = [st for st in history if st.name == AWAITING]
        rows.append(
            {
                "position": pos,
                "name": r.name,
                "queue": r.work_queue_name,
                "created_s": s(r.created),  # type: ignore[arg-type]
                "start_s": s(r.start_time),  # type: ignore[arg-type]
                "end_s": s(r.end_time),  # type: ignore[arg-type]
                "wait_s": round((r.start_time - r.created).total_seconds(), 2),  # type: ignore[operator]
                "rejections": len(awaiting),
                "rejected_at_s": [s(st.timestamp) for st in awaiting],
                "retry_due_s": [s(st.state_details.scheduled_time) for st in awaiting],
            }
        )
    return {
        "variant": variant,
        "queue_order": [row["queue"] for row in rows],
        "upload_positions": [row["position"] for row in rows if row["queue"] == "uploads"],
        "upload_waits_s": [row["wait_s"] for row in rows if row["queue"] == "uploads"],
        "backfill_waits_s": [row["wait_s"] for row in rows if row["queue"] == "backfill"],
        "runs": rows,
    }


def _assert_one_at_a_time(rows: list[dict[str, Any]]) -> None:
    for a, b in zip(rows, rows[1:], strict=False):
        assert a["end_s"] <= b["start_s"], f"{a['name']} and {b['name']} overlap: {rows}"


@pytest.mark.parametrize("variant", [POOL_LIMIT, DEPLOYMENT_ENQUEUE])
def test_queue_priority_and_a_freed_slot(
    variant: str, prefect_server: str, figures: list[dict[str, Any]], tmp_path: Path
) -> None:
    f = asyncio.run(_scenario(variant, tmp_path / "worker.log"))
    figures.append(f)
    (tmp_path / "figures.json").write_text(json.dumps(f, indent=2))
    rows = f["runs"]
    print(f"\n{variant}: {json.dumps(rows, indent=1)}")
    _assert_one_at_a_time(rows)
    assert rows[0]["queue"] == "backfill"  # uploads were created once it was Running

    if variant == POOL_LIMIT:
        # Priority holds: each upload starts before every backfill that was still
        # waiting when the upload was created, i.e. right after the first backfill.
        assert f["queue_order"] == ["backfill", "uploads", "uploads"] + ["backfill"] * 3
        for u in (r for r in rows if r["queue"] == "uploads"):
            waiting = [
                b
                for b in rows
                if b["queue"] == "backfill" and b["created_s"] < u["created_s"] < b["start_s"]
            ]
            assert waiting and all(u["start_s"] < b["start_s"] for b in waiting), rows
        assert all(r["rejections"] == 0 for r in rows)  # no deployment limit, no rejections
        return

    # (A) Prefect guarantees only the limit (checked above) and that every run completes.
    # What always holds: an upload that finds the slot held is refused and rescheduled
    # concurrency_slot_wait_seconds (30 s) later, whatever its queue's priority, so it waits
    # at least that long where the pool's limit (B) starts it as soon as the slot frees.
    uploads = [r for r in rows if r["queue"] == "uploads"]
    # (On a loaded machine the worker may first propose an upload only after the slot has
    # freed: that one is not refused. Seen once in CI; at least one run always is.)
    refused = [r for r in uploads if r["rejections"] >= 1]
    assert any(r["rejections"] >= 1 for r in rows), rows
    assert all(r["wait_s"] >= SLOT_WAIT_S - 5 for r in refused), rows
    # Beyond that the server serves waiting runs by the time their last refusal made them
    # due again, not by queue. When the uploads were refused after the waiting backfills,
    # with their retries due later by more than a worker poll, and the first backfill had
    # released the slot by then, only backfills are due when the slot frees: a backfill is
    # served although both uploads wait. On a loaded machine the timings may not line up
    # that way; the order is then only printed.
    first = rows[0]
    waiting_backfills = [r for r in rows[1:] if r["queue"] == "backfill"]
    backfills_due = max(r["retry_due_s"][0] for r in waiting_backfills if r["retry_due_s"])
    uploads_due = min((r["retry_due_s"][0] for r in refused if r["retry_due_s"]), default=0.0)
    if (
        len(refused) == len(uploads)
        and uploads_due - backfills_due > 2 * POLL_S
        and first["end_s"] < backfills_due
    ):
        assert rows[1]["queue"] == "backfill", f"expected a backfill before the uploads: {rows}"
