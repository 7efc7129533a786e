"""How long a reconcile pass takes over N uploads on moto's S3, against a Prefect server
(SQLite, its own: scanflow.local.sandbox) holding their runs, and the floor it is measured
against in the same run: listing the bucket and the runs, nothing else.

Setup: N objects under patients/<p>/scans/<s>.mp4; a run for each (keyed as the trigger keys
them) except ``--gaps`` of them (uploads whose trigger invocation was dropped); half the runs
Completed with their manifest and the receipt of their event in the results folder, the rest
left Scheduled on a pool no worker serves. Then one pass (heals the gaps: creates their
runs) and a second (finds nothing). Prints the seconds of each and their ratio to the floor.

    .venv/bin/python bench/reconcile.py [--uploads 10000] [--gaps 100]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scanflow.local.loopback import MotoServer  # noqa: E402
from scanflow.local.sandbox import Sandbox  # noqa: E402

POOL = "bench-reconcile"
BODY = b"\x00\x00\x00\x18ftypmp42" + bytes(2048)


def _key(i: int) -> str:
    return f"patients/pt-{i % 500:03d}/scans/s-{i:05d}.mp4"


def _put_all(s3: object, bucket: str, n: int) -> str:
    def put(i: int) -> None:
        s3.put_object(Bucket=bucket, Key=_key(i), Body=BODY)  # type: ignore[attr-defined]

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, range(n)))
    return hashlib.md5(BODY).hexdigest()  # noqa: S324 - S3's ETag of a single-part upload


async def _runs(box: Sandbox, bucket: str, etag: str, n: int, gaps: int, results: Path) -> None:
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.states import Completed

    from scanflow.contracts.events import event_id_for

    async with PrefectClient(box.api_url) as client:
        await client.create_work_pool(WorkPoolCreate(name=POOL, type="process"))
        flow_id = await client.create_flow_from_name("process-scan")
        deployment_id = await client.create_deployment(
            flow_id=flow_id,
            name=POOL,
            entrypoint="flows/process_scan.py:process_scan",
            work_pool_name=POOL,
        )
        limit = asyncio.Semaphore(4)

        async def one(i: int) -> None:
            key = _key(i)
            scan, patient = key.rsplit("/", 1)[1][:-4], key.split("/")[1]
            done = i % 2 == 0
            async with limit:
                for attempt in range(5):  # SQLite answers 503 when writes collide
                    try:
                        run = await client.create_flow_run_from_deployment(
                            deployment_id,
                            parameters={
                                "scan_id": scan,
                                "patient_id": patient,
                                "video_uri": f"s3://{bucket}/{key}",
                            },
                            idempotency_key=f"{bucket}/{key}@{etag}",
                            state=Completed() if done else None,
                        )
                        break
                    except Exception:
                        if attempt == 4:
                            raise
                        await asyncio.sleep(2.0 * (attempt + 1))
            if not done:
                return
            folder = results / patient / scan
            (folder / "receipts").mkdir(parents=True, exist_ok=True)
            (folder / "manifest.json").write_text("{}")
            (folder / "receipts" / f"{event_id_for(run.id, 'completed')}.json").write_text("{}")

        await asyncio.gather(*(one(i) for i in range(gaps, n)))


def _floor(bucket_uri: str, since: datetime) -> float:
    from scanflow.storage import S3Store
    from tasks.reconcile import read_runs

    start = time.perf_counter()
    listed = sum(1 for _ in S3Store().list_objects(bucket_uri))
    runs = read_runs.fn("process-scan", since)
    took = time.perf_counter() - start
    print(f"floor: listed {listed} objects and {len(runs)} runs in {took:.2f} s")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uploads", type=int, default=10_000)
    parser.add_argument("--gaps", type=int, default=100)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-reconcile-"))
    moto = MotoServer(work / "moto.log").start()
    aws = {
        "AWS_ENDPOINT_URL_S3": moto.url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    box = Sandbox("bench-reconcile", env=aws)
    try:
        out = box.cli("server", "start")
        assert out.returncode == 0, out.stdout + out.stderr
        import boto3

        bucket = "bench-uploads"
        s3 = boto3.client(
            "s3",
            endpoint_url=moto.url,
            **{
                "aws_access_key_id": "testing",
                "aws_secret_access_key": "testing",
                "region_name": "us-east-1",
            },
        )
        s3.create_bucket(Bucket=bucket)
        since = datetime.now(UTC) - timedelta(minutes=1)
        t0 = time.perf_counter()
        etag = _put_all(s3, bucket, args.uploads)
        print(f"setup: {args.uploads} uploads in {time.perf_counter() - t0:.1f} s")
        results = box.home / "results"
        t0 = time.perf_counter()
        asyncio.run(_runs(box, bucket, etag, args.uploads, args.gaps, results))
        print(
            f"setup: {args.uploads - args.gaps} runs (half Completed) in "
            f"{time.perf_counter() - t0:.1f} s"
        )

        # this process is the reconciler: its settings and Prefect's point at the sandbox
        os.environ.update(aws)
        os.environ.update(
            SCANFLOW_UPLOADS_URI=f"s3://{bucket}/patients/",
            SCANFLOW_RESULTS_URI=results.as_uri(),
            SCANFLOW_DEPLOYMENT=f"process-scan/{POOL}",
            SCANFLOW_RECONCILE_SETTLE_S="0",
            SCANFLOW_RECONCILE_MAX_ACTIONS=str(args.gaps * 2),
            SCANFLOW_PENDING_AFTER_S="86400",
        )
        os.environ.pop("SCANFLOW_PLATFORM_WEBHOOK_URL", None)
        from prefect.settings import PREFECT_API_URL, temporary_settings

        from flows.reconcile import reconcile

        with temporary_settings(updates={PREFECT_API_URL: box.api_url}):
            floor = _floor(f"s3://{bucket}/patients/", since)
            passes = []
            for label in ("first pass (heals the gaps)", "second pass (nothing to heal)"):
                t0 = time.perf_counter()
                ledger = reconcile(since=since)
                took = time.perf_counter() - t0
                passes.append(took)
                print(
                    f"{label}: {took:.2f} s, {ledger['uploads']} uploads, {ledger['runs']} runs, "
                    f"gaps {json.dumps(ledger['gaps_by_kind'])}"
                )
            floor_again = _floor(f"s3://{bucket}/patients/", since)
            base = (floor + floor_again) / 2
            print(
                f"\nuploads {args.uploads}, gaps {args.gaps}: first pass {passes[0]:.1f} s "
                f"({passes[0] / base:.2f}x the floor), second {passes[1]:.1f} s "
                f"({passes[1] / base:.2f}x); floor {base:.1f} s (bucket + runs listed)"
            )
    finally:
        box.cli("server", "stop")
        box.down()
        moto.stop()


if __name__ == "__main__":
    main()
