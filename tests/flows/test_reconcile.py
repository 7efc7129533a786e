"""The reconcile flow (flows/reconcile.py) on the session's Prefect server, moto's S3 as the
upload bucket, a loopback platform, and a process-scan deployment no worker serves (runs
the reconciler creates stay Scheduled: what is checked is that they exist, once).

Gaps injected: uploads whose trigger invocation was dropped; the same upload triggered
while the reconciler runs (the real trigger's handler, in threads); an outcome the platform
refused (its events never acknowledged) and one of a run that crashed with nobody left to
report it; a run waiting for capacity past the limit. After one pass every upload has
exactly one run and every final outcome one acknowledged event_id; a second pass finds
nothing to heal.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest

from flows.process_scan import process_scan
from flows.reconcile import reconcile
from scanflow.contracts.events import event_id_for
from scanflow.local.loopback import Receiver
from scanflow.notify.receipts import receipt_uri
from scanflow.storage import store_for
from tests.support.deployments import unserved_deployment

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_server")]

SECRET = "whsec-reconcile-" + uuid.uuid4().hex


@pytest.fixture
def world(
    s3_endpoint: str, results_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, Any]]:
    tag = uuid.uuid4().hex[:8]
    bucket = f"reconcile-uploads-{tag}"
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket=bucket)
    platform = Receiver("platform", secret=SECRET).start()
    with unserved_deployment("reconcile") as deployment:
        for name, value in {
            "SCANFLOW_DEPLOYMENT": deployment,
            "SCANFLOW_UPLOADS_URI": f"s3://{bucket}/patients/",
            "SCANFLOW_RECONCILE_SETTLE_S": "0",
            "SCANFLOW_PENDING_AFTER_S": "60",
            "SCANFLOW_PLATFORM_WEBHOOK_URL": platform.url + "/scanflow/events",
            "SCANFLOW_PLATFORM_SIGNING_SECRET": SECRET,
            # the trigger's own settings, for the runs it creates in the race
            "SCANFLOW_ALLOWED_BUCKETS": bucket,
            "SCANFLOW_ALLOWED_PREFIXES": "patients/",
        }.items():
            monkeypatch.setenv(name, value)
        try:
            yield {
                "s3": s3,
                "bucket": bucket,
                "platform": platform,
                "deployment": deployment,
                "results": results_dir,
                "since": datetime.now(UTC) - timedelta(seconds=5),
                "tag": tag,
            }
        finally:
            platform.stop()


def _upload(world: dict[str, Any], key: str, body: bytes = b"\x00" * 2048) -> str:
    world["s3"].put_object(Bucket=world["bucket"], Key=key, Body=body)
    return key


def _runs_of(world: dict[str, Any]) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    name = world["deployment"].split("/", 1)[1]
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[name])), limit=200
        )


def _s3_notification(world: dict[str, Any], key: str) -> dict[str, Any]:
    head = world["s3"].head_object(Bucket=world["bucket"], Key=key)
    return {
        "Records": [
            {
                "eventSource": "aws:s3",
                "eventName": "ObjectCreated:Put",
                "s3": {
                    "bucket": {"name": world["bucket"]},
                    "object": {
                        "key": key,
                        "size": head["ContentLength"],
                        "eTag": head["ETag"].strip('"'),
                    },
                },
            }
        ]
    }


def test_every_upload_gets_exactly_one_run_even_racing_the_trigger(
    world: dict[str, Any],
) -> None:
    from deployments.trigger.scanflow_trigger import handler as trigger

    t = world["tag"]
    dropped = [
        _upload(world, f"patients/pt-{t}/scans/a-{t}.mp4"),
        _upload(world, f"patients/pt-{t}/scans/b-{t}.MOV"),  # an iPhone's name
        _upload(world, f"patients/pt-{t}/scans/c-{t}.m4v"),
    ]
    raced = [_upload(world, f"patients/pt-{t}/scans/race-{i}-{t}.mp4") for i in range(3)]
    triggered = _upload(world, f"patients/pt-{t}/scans/done-{t}.mov")
    _upload(world, f"patients/pt-{t}/notes-{t}.txt")  # not a scan: never a run
    _upload(world, f"patients/pt-{t}/scans/empty-{t}.mp4", b"")  # the trigger refuses it

    trigger.handler(_s3_notification(world, triggered), None)  # delivered as usual

    dry = reconcile(since=world["since"], dry_run=True)
    assert dry["gaps_by_kind"]["upload_without_run"] == {"found": 6, "healed": 0}
    assert len(_runs_of(world)) == 1  # the trigger's: a dry run creates nothing

    # the trigger's delayed deliveries of the raced uploads, while the pass runs
    racers = [
        threading.Thread(target=trigger.handler, args=(_s3_notification(world, k), None))
        for k in raced
    ]
    for r in racers:
        r.start()
    began = time.monotonic()
    ledger = reconcile(since=world["since"])
    healed_in = time.monotonic() - began
    for r in racers:
        r.join()
    print(f"\nFIGURE uploads without a run (6, 3 racing the trigger): healed in {healed_in:.1f} s")

    runs = _runs_of(world)
    scans = sorted(r.parameters["scan_id"] for r in runs)
    expected = sorted(k.rsplit("/", 1)[1].rsplit(".", 1)[0] for k in [*dropped, *raced, triggered])
    assert scans == expected  # each upload once: no duplicate from the race, no junk
    for run in runs:  # keyed as the trigger keys them
        key = run.parameters["video_uri"].removeprefix("s3://")
        assert run.idempotency_key is not None and run.idempotency_key.startswith(key + "@")
    found = ledger["gaps_by_kind"]["upload_without_run"]
    assert found["found"] == found["healed"] >= len(dropped)
    assert ledger["uploads"] == 7
    report = json.loads(store_for(ledger["report"]).get_bytes(ledger["report"]))
    assert report["gaps_healed"] == ledger["gaps_healed"]

    again = reconcile(since=world["since"])
    assert "upload_without_run" not in again["gaps_by_kind"]  # nothing left to heal
    assert len(_runs_of(world)) == len(runs)


def test_unacknowledged_outcomes_are_sent_again_with_the_same_event_id(
    world: dict[str, Any], tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed, Scheduled

    platform: Receiver = world["platform"]
    t = world["tag"]
    refuse = lambda body: 400  # noqa: E731 - the platform refuses everything for a while
    platform.policies.append(refuse)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    rejected = process_scan(f"rej-{t}", f"pt-{t}", empty.as_uri(), return_state=True)
    rejected_id = rejected.state_details.flow_run_id
    assert rejected_id is not None and rejected.name == "Rejected"
    refused = platform.all(lambda event: event.get("flow_run_id") == str(rejected_id))
    assert [r.status for r in refused] == [400]  # the hook's one try, refused for good
    platform.policies.remove(refuse)

    # a run that crashed with its worker, and nobody reported it (no automation here)
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(world["deployment"])
        params = {"scan_id": f"crash-{t}", "patient_id": f"pt-{t}", "video_uri": "s3://x/y.mp4"}
        crashed = client.create_flow_run_from_deployment(deployment.id, parameters=params)
        client.set_flow_run_state(crashed.id, Crashed(message="[crashed] no heartbeat"), force=True)
        waiting = client.create_flow_run_from_deployment(
            deployment.id,
            parameters={**params, "scan_id": f"late-{t}"},
            state=Scheduled(scheduled_time=datetime.now(UTC) - timedelta(hours=1)),
        )

    began = time.monotonic()
    ledger = reconcile(since=world["since"])
    print(
        "\nFIGURE outcomes never acknowledged (a refused rejection, an unreported crash): "
        f"delivered in {time.monotonic() - began:.1f} s"
    )
    gaps = {(g["kind"], g["flow_run_id"]): g for g in ledger["gaps"]}
    for run_id, outcome in ((rejected_id, "failed"), (crashed.id, "crashed")):
        gap = gaps[("unacknowledged", str(run_id))]
        assert gap["healed"], gap
        wanted = str(run_id)
        [got] = platform.delivered(lambda event: event.get("flow_run_id") == wanted)  # noqa: B023
        assert got.verified == "ok" and got.json["source"] == "reconciler"
        assert got.json["event_id"] == str(event_id_for(run_id, outcome))
        uri = receipt_uri(
            str(world["results"].as_uri()),
            f"pt-{t}",
            got.json["scan_id"],
            uuid.UUID(got.json["event_id"]),
        )
        assert store_for(uri).exists(uri)
    assert gaps[("unacknowledged", str(rejected_id))]["detail"].startswith("Rejected")
    [crash_event] = platform.delivered(lambda event: event.get("scan_id") == f"crash-{t}")
    assert (crash_event.json["type"], crash_event.json["cause"]) == (
        "scan.crashed",
        "infrastructure",
    )
    stuck = gaps[("stuck", str(waiting.id))]
    assert not stuck["healed"] and stuck["detail"].startswith(("Scheduled", "Late"))

    again = reconcile(since=world["since"])
    assert not [g for g in again["gaps"] if g["kind"] == "unacknowledged"]
    delivered = [r for r in platform.records if r.status == 200]
    assert len({r.json["event_id"] for r in delivered}) == len(delivered) == 2  # once each
