"""The upload trigger fed by every path an upload can take to it, in-process as the Lambda
runtime would invoke it, with real-shaped events (tests/deployments/events/): EventBridge,
SNS, and SQS batches carrying S3 notifications, EventBridge events or SNS envelopes. Against
the real basic-auth Prefect server, and for failures a real proxy answering 503."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import pytest

from deployments.trigger.scanflow_trigger import handler as trigger
from tests.deployments.trigger.conftest import BUCKET
from tests.support.loopback import AuthServer, FakeLambdaContext, FlakyProxy

pytestmark = pytest.mark.integration

EVENTS_DIR = Path(__file__).parent / "events"


@pytest.fixture
def summary(caplog: pytest.LogCaptureFixture) -> Callable[[], dict[str, Any]]:
    """The handler's log line about its last invocation, parsed (an SQS batch's answer holds
    only the failures: the runs and rejections are in the log)."""
    caplog.set_level(logging.INFO, logger="scanflow_trigger")

    def last() -> dict[str, Any]:
        lines = [
            r.getMessage()
            for r in caplog.records
            if r.name == "scanflow_trigger" and '"scanflow.trigger"' in r.getMessage()
        ]
        return json.loads(lines[-1])  # type: ignore[no-any-return]

    return last


def _load(name: str) -> dict[str, Any]:
    return json.loads((EVENTS_DIR / name).read_text())  # type: ignore[no-any-return]


def _restamp(obj: Any, tag: str) -> Any:
    """The same event for new versions of its objects (so fresh idempotency keys), decoding
    and re-encoding the JSON that SQS bodies and SNS messages carry as strings."""
    if isinstance(obj, list):
        return [_restamp(o, tag) for o in obj]
    if not isinstance(obj, dict):
        return obj
    out: dict[str, Any] = {}
    for k, v in obj.items():
        if k in ("versionId", "version-id") and isinstance(v, str):
            out[k] = f"{v}-{tag}"
        elif k in ("body", "Message") and isinstance(v, str) and v.lstrip().startswith("{"):
            out[k] = json.dumps(_restamp(json.loads(v), tag))
        else:
            out[k] = _restamp(v, tag)
    if "md5OfBody" in out:
        out["md5OfBody"] = hashlib.md5(out["body"].encode()).hexdigest()
    return out


def _fresh(name: str) -> dict[str, Any]:
    return _restamp(_load(name), uuid.uuid4().hex[:8])  # type: ignore[no-any-return]


def _redelivered(batch: dict[str, Any], message_ids: list[str]) -> dict[str, Any]:
    """What SQS hands the function again: only those messages, received once more."""
    records = []
    for record in batch["Records"]:
        if record["messageId"] in message_ids:
            again = copy.deepcopy(record)
            again["attributes"]["ApproximateReceiveCount"] = "2"
            again["receiptHandle"] = "AQEB" + uuid.uuid4().hex * 8
            records.append(again)
    return {"Records": records}


def _message(template: dict[str, Any], body: str) -> dict[str, Any]:
    """Another SQS message like ``template`` (its queue, its sender), carrying ``body``."""
    return {
        **copy.deepcopy(template),
        "messageId": str(uuid.uuid4()),
        "receiptHandle": "AQEB" + uuid.uuid4().hex * 8,
        "body": body,
        "md5OfBody": hashlib.md5(body.encode()).hexdigest(),
    }


def _ids(batch: dict[str, Any], *indexes: int) -> list[str]:
    return [batch["Records"][i]["messageId"] for i in indexes]


def _body(batch: dict[str, Any], index: int) -> dict[str, Any]:
    return json.loads(batch["Records"][index]["body"])  # type: ignore[no-any-return]


def _s3_key(notification: dict[str, Any]) -> str:
    """The idempotency key of a one-record S3 notification (its key is URL-encoded)."""
    obj = notification["Records"][0]["s3"]["object"]
    bucket = notification["Records"][0]["s3"]["bucket"]["name"]
    return f"{bucket}/{unquote_plus(obj['key'])}@{obj.get('versionId') or obj['eTag']}"


def _eventbridge_key(event: dict[str, Any]) -> str:
    obj = event["detail"]["object"]
    return (
        f"{event['detail']['bucket']['name']}/{obj['key']}@{obj.get('version-id') or obj['etag']}"
    )


def _runs_by_key(server: AuthServer, keys: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Every flow run the server holds for each idempotency key."""
    with server.client() as c:
        found = (
            c.post(
                "/flow_runs/filter",
                json={"flow_runs": {"idempotency_key": {"any_": keys}}, "limit": 200},
            )
            .raise_for_status()
            .json()
        )
    return {k: [r for r in found if r["idempotency_key"] == k] for k in keys}


def _read_run(server: AuthServer, run_id: str) -> dict[str, Any]:
    with server.client() as c:
        return c.get(f"/flow_runs/{run_id}").raise_for_status().json()  # type: ignore[no-any-return]


# -- EventBridge ------------------------------------------------------------------------


def test_eventbridge_event_creates_the_run_and_the_same_upload_by_any_path_finds_it(
    trigger_env: AuthServer, s3_event: dict[str, Any]
) -> None:
    event = _load("eventbridge-object-created.json")
    out = trigger.handler(event, FakeLambdaContext())

    assert out["status"] == "accepted" and out["rejected"] == []
    (run,) = out["runs"]
    key = "region=eu/patients/p-010/scans/eb-2025.05.02.mp4"  # not URL-encoded: taken as is
    assert run["video_uri"] == f"s3://{BUCKET}/{key}"
    assert run["idempotency_key"] == f"{BUCKET}/{key}@Wq3F.5pXnH1zqKb7Wm0Lg2XvQmDiT9hS"
    assert run["created"]
    stored = _read_run(trigger_env, run["flow_run_id"])
    assert stored["name"] == "eb-2025.05.02"
    assert stored["parameters"] == {
        "scan_id": "eb-2025.05.02",
        "patient_id": "p-010",
        "video_uri": f"s3://{BUCKET}/{key}",
    }
    assert stored["idempotency_key"] == run["idempotency_key"]
    assert stored["deployment_id"] == trigger_env.deployment_id
    assert stored["work_queue_name"] == "uploads"

    # the same upload as S3 notifies it (key URL-encoded, eTag/versionId spelled its way)
    record = copy.deepcopy(s3_event["Records"][0])
    record["s3"]["object"].update(
        key="region%3Deu/patients/p-010/scans/eb-2025.05.02.mp4",
        size=7340032,
        eTag="5d41402abc4b2a76b9719d911017c592",
        versionId="Wq3F.5pXnH1zqKb7Wm0Lg2XvQmDiT9hS",
    )
    again = trigger.handler({"Records": [record]}, FakeLambdaContext())
    assert again["status"] == "accepted"
    assert again["runs"][0]["flow_run_id"] == run["flow_run_id"]
    assert again["runs"][0]["idempotency_key"] == run["idempotency_key"]
    assert not again["runs"][0]["created"]

    # ... and as an SQS queue receives it from an EventBridge rule
    queued = _load("sqs-eventbridge.json")
    assert _body(queued, 0) == event
    assert trigger.handler({"Records": queued["Records"][:1]}, FakeLambdaContext()) == {
        "batchItemFailures": []
    }
    found = _runs_by_key(trigger_env, [run["idempotency_key"]])[run["idempotency_key"]]
    assert [r["id"] for r in found] == [run["flow_run_id"]]


def test_eventbridge_without_a_version_id_keys_on_the_etag_and_refuses_other_events(
    trigger_env: AuthServer,
) -> None:
    event = _fresh("eventbridge-object-created.json")
    del event["detail"]["object"]["version-id"]  # an unversioned bucket
    event["detail"]["object"]["etag"] = uuid.uuid4().hex
    out = trigger.handler(event, FakeLambdaContext())
    assert out["status"] == "accepted"
    assert out["runs"][0]["idempotency_key"].endswith("@" + event["detail"]["object"]["etag"])

    deleted = {**event, "detail-type": "Object Deleted"}
    refused = trigger.handler(deleted, FakeLambdaContext())
    assert refused["status"] == "rejected" and refused["runs"] == []
    assert "detail-type='Object Deleted'" in refused["rejected"][0]["reason"]


# -- SNS --------------------------------------------------------------------------------


def test_sns_delivery_creates_the_run_and_accepts_an_iphone_mov(trigger_env: AuthServer) -> None:
    event = _fresh("sns-s3-notification.json")
    out = trigger.handler(event, FakeLambdaContext())

    assert out["status"] == "accepted" and out["rejected"] == []
    (run,) = out["runs"]
    key = "patients/p-020/scans/IMG_0420.MOV"  # ".MOV": the extension check ignores case
    assert run["video_uri"] == f"s3://{BUCKET}/{key}"
    assert run["idempotency_key"] == _s3_key(json.loads(event["Records"][0]["Sns"]["Message"]))
    assert run["created"]
    stored = _read_run(trigger_env, run["flow_run_id"])
    assert stored["parameters"] == {
        "scan_id": "IMG_0420",
        "patient_id": "p-020",
        "video_uri": f"s3://{BUCKET}/{key}",
    }

    # SNS redelivers: the same run
    again = trigger.handler(copy.deepcopy(event), FakeLambdaContext())
    assert again["runs"][0]["flow_run_id"] == run["flow_run_id"] and not again["runs"][0]["created"]

    # the s3:TestEvent S3 publishes to the topic when the notification is set up
    test_event = copy.deepcopy(event)
    test_event["Records"][0]["Sns"]["Message"] = json.dumps(
        {"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": BUCKET}
    )
    assert trigger.handler(test_event, FakeLambdaContext()) == {
        "status": "ignored",
        "runs": [],
        "rejected": [],
    }


# -- SQS --------------------------------------------------------------------------------


def test_sqs_batch_submitted_whole_answers_no_failures_and_never_retries_bad_records(
    trigger_env: AuthServer, summary: Callable[[], dict[str, Any]]
) -> None:
    batch = _fresh("sqs-s3-notifications.json")
    out = trigger.handler(batch, FakeLambdaContext())

    # bad records and the test event are answered (logged), not failures: SQS deletes them
    assert out == {"batchItemFailures": []}

    good = {i: _s3_key(_body(batch, i)) for i in (0, 1, 2, 5, 7, 8)}
    assert good[5] == good[0] and good[8] == good[2]  # S3 delivered two notifications twice
    uploads = sorted(set(good.values()))
    assert len(uploads) == 4
    runs = _runs_by_key(trigger_env, uploads)
    assert {k: len(v) for k, v in runs.items()} == dict.fromkeys(uploads, 1)
    by_scan = {r["parameters"]["scan_id"]: r for rs in runs.values() for r in rs}
    assert set(by_scan) == {"IMG_0001", "clip-7", "s-2025.06.01", "scan-8"}
    assert by_scan["IMG_0001"]["parameters"]["video_uri"].endswith("/IMG_0001.MOV")
    assert by_scan["clip-7"]["parameters"]["video_uri"].endswith("/clip-7.m4v")
    # the URL-encoded key (region%3Deu/...) is decoded
    assert by_scan["s-2025.06.01"]["parameters"]["video_uri"] == (
        f"s3://{BUCKET}/region=eu/patients/p-032/scans/s-2025.06.01.mp4"
    )
    bad = [_s3_key(_body(batch, i)) for i in (3, 6)]
    assert _runs_by_key(trigger_env, bad) == {k: [] for k in bad}

    log = summary()
    assert log["kind"] == "sqs" and log["batch_size"] == 9
    assert log["status"] == "partial" and log["failed"] == []
    assert sorted(r["idempotency_key"] for r in log["runs"]) == uploads
    assert all(r["created"] for r in log["runs"])
    reasons = {r["source"]: r["reason"] for r in log["rejected"]}
    assert set(reasons) == {"Records[3].body.Records[0]", "Records[6].body.Records[0]"}
    assert "extension 'txt'" in reasons["Records[3].body.Records[0]"]
    assert "outside the allowed prefixes" in reasons["Records[6].body.Records[0]"]

    # the whole batch delivered again: no new run, still no failures
    assert trigger.handler(copy.deepcopy(batch), FakeLambdaContext()) == {"batchItemFailures": []}
    assert not any(r["created"] for r in summary()["runs"])
    assert {k: len(v) for k, v in _runs_by_key(trigger_env, uploads).items()} == dict.fromkeys(
        uploads, 1
    )


def test_sqs_batch_with_prefect_unavailable_answers_exactly_the_unsubmitted_messages(
    trigger_env: AuthServer, monkeypatch: pytest.MonkeyPatch, summary: Callable[[], dict[str, Any]]
) -> None:
    batch = _fresh("sqs-s3-notifications.json")
    # uploads in the batch's order: .MOV (messages 0, 5), .m4v (1), encoded (2, 8), mp4 (7)
    mov, m4v, enc, mp4 = (_s3_key(_body(batch, i)) for i in (0, 1, 2, 7))
    monkeypatch.setenv("SCANFLOW_TIME_RESERVE_S", "0.5")
    # the deployment lookup and two runs get through, then the API answers 503 only
    with FlakyProxy(trigger_env.api_url, ["forward"] * 3, then="503") as proxy:
        monkeypatch.setenv("PREFECT_API_URL", proxy.url("/api"))
        out = trigger.handler(batch, FakeLambdaContext(remaining_ms=4000))

        # each message once, in the batch's order (not the order the scans were tried);
        # the duplicate of a created upload (5) is not retried, that of a failed one (8) is
        assert out == {"batchItemFailures": [{"itemIdentifier": i} for i in _ids(batch, 2, 7, 8)]}
        assert proxy.outcomes("/create_flow_run")[:2] == ["201", "201"]
        assert set(proxy.outcomes("/create_flow_run")[2:]) == {"503"}
        log = summary()
        assert [r["idempotency_key"] for r in log["runs"]] == [mov, m4v]
        assert len(log["failed"]) == 2 and "HTTP 503" in log["failed"][0]
        assert {k: len(v) for k, v in _runs_by_key(trigger_env, [mov, m4v, enc, mp4]).items()} == {
            mov: 1,
            m4v: 1,
            enc: 0,
            mp4: 0,
        }

        # SQS delivers only those messages again, the API is back
        proxy.then = "forward"
        again = trigger.handler(
            _redelivered(batch, _ids(batch, 2, 7, 8)), FakeLambdaContext(remaining_ms=4000)
        )
    assert again == {"batchItemFailures": []}
    assert summary()["batch_size"] == 3
    assert [r["idempotency_key"] for r in summary()["runs"]] == [enc, mp4]
    assert all(r["created"] for r in summary()["runs"])
    runs = _runs_by_key(trigger_env, [mov, m4v, enc, mp4])
    assert {k: len(v) for k, v in runs.items()} == dict.fromkeys([mov, m4v, enc, mp4], 1)


def test_sqs_delivering_sns_envelopes_creates_the_runs_and_ignores_the_test_event(
    trigger_env: AuthServer, summary: Callable[[], dict[str, Any]]
) -> None:
    batch = _fresh("sqs-sns-s3.json")
    envelope = _body(batch, 1)
    assert envelope["Type"] == "Notification" and isinstance(envelope["Message"], str)

    assert trigger.handler(batch, FakeLambdaContext()) == {"batchItemFailures": []}
    keys = [_s3_key(json.loads(_body(batch, i)["Message"])) for i in (1, 2)]
    runs = _runs_by_key(trigger_env, keys)
    assert [len(runs[k]) for k in keys] == [1, 1]
    assert runs[keys[0]][0]["parameters"] == {
        "scan_id": "IMG_0050",
        "patient_id": "p-050",
        "video_uri": f"s3://{BUCKET}/patients/p-050/scans/IMG_0050.MOV",
    }
    assert runs[keys[1]][0]["parameters"]["video_uri"].endswith("/s-51.m4v")
    log = summary()
    assert log["status"] == "accepted" and log["rejected"] == []


def test_sqs_delivering_eventbridge_events_creates_the_runs(
    trigger_env: AuthServer, summary: Callable[[], dict[str, Any]]
) -> None:
    batch = _fresh("sqs-eventbridge.json")
    assert trigger.handler(batch, FakeLambdaContext()) == {"batchItemFailures": []}
    keys = [_eventbridge_key(_body(batch, i)) for i in range(3)]
    runs = _runs_by_key(trigger_env, keys)
    assert [len(runs[k]) for k in keys] == [1, 1, 1]
    assert [runs[k][0]["parameters"]["scan_id"] for k in keys] == [
        "eb-2025.05.02",
        "IMG_0040",
        "clip-41",
    ]
    assert summary()["status"] == "accepted" and summary()["kind"] == "sqs"


def test_one_upload_through_s3_eventbridge_and_sns_messages_shares_one_run_and_one_fate(
    trigger_env: AuthServer, monkeypatch: pytest.MonkeyPatch, summary: Callable[[], dict[str, Any]]
) -> None:
    """S3 notifying a queue directly and through a topic, and EventBridge too: one upload in
    three messages of a batch (plus a bad one). They fail together and succeed together."""
    tag = uuid.uuid4().hex[:8]
    from_s3 = _restamp(_load("sqs-s3-notifications.json")["Records"][2], tag)  # encoded key
    bad = _restamp(_load("sqs-s3-notifications.json")["Records"][3], tag)
    notification = json.loads(from_s3["body"])
    obj = notification["Records"][0]["s3"]["object"]
    event = _load("eventbridge-object-created.json")
    event["detail"]["object"].update(
        key="region=eu/patients/p-032/scans/s-2025.06.01.mp4",
        size=obj["size"],
        etag=obj["eTag"],
        **{"version-id": obj["versionId"]},
    )
    from_eventbridge = _message(_load("sqs-eventbridge.json")["Records"][0], json.dumps(event))
    sns = _load("sqs-sns-s3.json")["Records"][1]  # its SNS envelope, carrying the same upload
    envelope = {**json.loads(sns["body"]), "Message": json.dumps(notification)}
    from_sns = _message(sns, json.dumps(envelope, indent=2, separators=(",", " : ")))
    batch = {"Records": [from_s3, bad, from_eventbridge, from_sns]}
    upload = _s3_key(notification)
    assert upload == _eventbridge_key(event)

    monkeypatch.setenv("SCANFLOW_TIME_RESERVE_S", "0.5")
    with FlakyProxy(trigger_env.api_url, ["forward"], then="503") as proxy:
        monkeypatch.setenv("PREFECT_API_URL", proxy.url("/api"))
        out = trigger.handler(batch, FakeLambdaContext(remaining_ms=2500))
        assert out == {"batchItemFailures": [{"itemIdentifier": i} for i in _ids(batch, 0, 2, 3)]}
        assert _runs_by_key(trigger_env, [upload]) == {upload: []}

        proxy.then = "forward"
        assert trigger.handler(copy.deepcopy(batch), FakeLambdaContext()) == {
            "batchItemFailures": []
        }
    # one request for the three messages
    assert [o for o in proxy.outcomes("/create_flow_run") if o != "503"] == ["201"]
    assert [r["idempotency_key"] for r in summary()["runs"]] == [upload]
    assert len(_runs_by_key(trigger_env, [upload])[upload]) == 1
