"""The upload trigger, invoked in-process as the Lambda runtime would, with real S3 event
JSON, against a real Prefect server with basic auth on (and, for failures, a real proxy
that answers 503 or drops connections before forwarding)."""

from __future__ import annotations

import copy
import json
from typing import Any

import boto3
import pytest

from deployments.trigger.scanflow_trigger import handler as trigger
from deployments.trigger.scanflow_trigger.errors import AuthError, ConfigError, UnavailableError
from tests.deployments.trigger.conftest import BUCKET
from tests.support.loopback import AuthServer, FakeLambdaContext, FlakyProxy

pytestmark = pytest.mark.integration


def _read_run(server: AuthServer, run_id: str) -> dict[str, Any]:
    with server.client() as c:
        return c.get(f"/flow_runs/{run_id}").raise_for_status().json()  # type: ignore[no-any-return]


def _direct(scan: str, patient: str = "p-100") -> dict[str, str]:
    return {
        "scan_id": scan,
        "patient_id": patient,
        "video_uri": f"s3://{BUCKET}/patients/{patient}/scans/{scan}.mp4",
    }


def test_s3_event_creates_a_run_per_good_record_and_reports_each_bad_one(
    trigger_env: AuthServer, s3_event: dict[str, Any]
) -> None:
    out = trigger.handler(s3_event, FakeLambdaContext())

    assert out["status"] == "partial"
    runs = {r["scan_id"]: r for r in out["runs"]}
    assert set(runs) == {"s-2024.05.01", "scan_7"}
    first = runs["s-2024.05.01"]
    # the key arrived URL-encoded (region%3Deu/...): the run gets the decoded key
    assert first["video_uri"] == f"s3://{BUCKET}/region=eu/patients/p-001/scans/s-2024.05.01.mp4"
    assert first["idempotency_key"] == (
        f"{BUCKET}/region=eu/patients/p-001/scans/s-2024.05.01.mp4@3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY"
    )
    assert runs["scan_7"]["idempotency_key"].endswith("@9b2cf535f27731c974343645a3985328-9")
    assert all(r["created"] for r in out["runs"])

    stored = _read_run(trigger_env, first["flow_run_id"])
    assert stored["name"] == "s-2024.05.01"
    assert stored["parameters"] == {
        "scan_id": "s-2024.05.01",
        "patient_id": "p-001",
        "video_uri": first["video_uri"],
    }
    assert stored["idempotency_key"] == first["idempotency_key"]
    assert stored["deployment_id"] == trigger_env.deployment_id
    assert stored["work_queue_name"] == "uploads"  # fresh uploads: the first-served queue
    assert {"scanflow", "s3-upload"} <= set(stored["tags"])
    assert stored["state"]["type"] == "SCHEDULED"

    reasons = {r["source"]: r["reason"] for r in out["rejected"]}
    assert set(reasons) == {"Records[2]", "Records[3]", "Records[4]", "Records[5]"}
    assert "patients/<patient>/scans/<scan>.<ext>" in reasons["Records[2]"]
    assert "my scan.mp4" in reasons["Records[2]"]  # '+' decoded to a space, then refused
    assert reasons["Records[3]"].startswith("[too_large]")
    assert "ObjectRemoved:Delete" in reasons["Records[4]"]
    assert "'someone-elses-bucket' is not in the allowlist" in reasons["Records[5]"]


def test_a_redelivered_event_gives_the_same_runs_and_a_new_version_a_new_run(
    trigger_env: AuthServer, s3_event: dict[str, Any]
) -> None:
    first = trigger.handler(s3_event, FakeLambdaContext())
    again = trigger.handler(copy.deepcopy(s3_event), FakeLambdaContext())
    assert [r["flow_run_id"] for r in again["runs"]] == [r["flow_run_id"] for r in first["runs"]]
    assert not any(r["created"] for r in again["runs"])

    overwritten = {"Records": [copy.deepcopy(s3_event["Records"][0])]}
    overwritten["Records"][0]["s3"]["object"]["versionId"] = "new-version-2"
    newer = trigger.handler(overwritten, FakeLambdaContext())
    assert newer["runs"][0]["created"]
    assert newer["runs"][0]["flow_run_id"] != first["runs"][0]["flow_run_id"]

    # a record repeated inside one event is one run
    twice = {"Records": [s3_event["Records"][1], s3_event["Records"][1]]}
    out = trigger.handler(twice, FakeLambdaContext())
    assert len(out["runs"]) == 1 and out["status"] == "accepted"


def test_direct_invocation_answers_with_the_run_and_refuses_bad_input(
    trigger_env: AuthServer,
) -> None:
    out = trigger.handler(_direct("direct-1"), FakeLambdaContext())
    assert out["status"] == "accepted"
    run = out["runs"][0]
    assert run["idempotency_key"] == "process-scan/p-100/direct-1"  # as `scanflow submit`
    assert (
        trigger.handler(_direct("direct-1"), None)["runs"][0]["flow_run_id"] == (run["flow_run_id"])
    )

    bad = {
        "bucket": {**_direct("x"), "video_uri": "s3://other-bucket/patients/p/scans/x.mp4"},
        "prefix": {**_direct("x"), "video_uri": f"s3://{BUCKET}/tmp/x.mp4"},
        "extension": {**_direct("x"), "video_uri": f"s3://{BUCKET}/patients/p/scans/x.exe"},
        "id": {**_direct("x"), "patient_id": "../etc"},
        "missing": {"scan_id": "x", "video_uri": f"s3://{BUCKET}/patients/p/scans/x.mp4"},
        "extra": {**_direct("x"), "options": {"sample_fps": 99}},
        "scheme": {**_direct("x"), "video_uri": "file:///etc/passwd.mp4"},
    }
    for case, event in bad.items():
        out = trigger.handler(event, FakeLambdaContext())
        assert out["status"] == "rejected" and out["runs"] == [], case
        assert out["rejected"][0]["source"] == "event", case
    assert "unexpected ['options']" in trigger.handler(bad["extra"])["rejected"][0]["reason"]

    unknown = trigger.handler({"hello": "world"}, FakeLambdaContext())
    assert unknown["status"] == "rejected"
    assert "unrecognised event" in unknown["rejected"][0]["reason"]
    s3_test = {"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": BUCKET}
    assert trigger.handler(s3_test, FakeLambdaContext()) == {
        "status": "ignored",
        "runs": [],
        "rejected": [],
    }


def test_503_answers_and_dropped_connections_are_retried(
    trigger_env: AuthServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    direct = trigger.handler(_direct("flaky-1"), FakeLambdaContext())["runs"][0]
    with FlakyProxy(trigger_env.api_url, ["503", "drop", "503", "drop", "503"]) as proxy:
        monkeypatch.setenv("PREFECT_API_URL", proxy.url("/api"))
        out = trigger.handler(_direct("flaky-1"), FakeLambdaContext())
    assert out["status"] == "accepted"
    assert out["runs"][0]["flow_run_id"] == direct["flow_run_id"]  # the idempotency key
    assert proxy.outcomes() == ["503", "drop", "503", "drop", "503", "200", "200"]
    assert proxy.outcomes("/deployments/name/") == ["503", "drop", "503", "drop", "503", "200"]


def test_an_api_unavailable_past_the_time_budget_raises_so_lambda_retries(
    trigger_env: AuthServer, monkeypatch: pytest.MonkeyPatch, s3_event: dict[str, Any]
) -> None:
    monkeypatch.setenv("SCANFLOW_TIME_RESERVE_S", "0.5")
    with FlakyProxy(trigger_env.api_url, then="503") as proxy:
        monkeypatch.setenv("PREFECT_API_URL", proxy.url("/api"))
        with pytest.raises(UnavailableError, match="Lambda will retry the event") as info:
            trigger.handler(s3_event, FakeLambdaContext(remaining_ms=2500))
    assert "HTTP 503" in str(info.value) and "database is locked" in str(info.value)
    assert len(proxy.log) >= 3 and set(proxy.outcomes()) == {"503"}


def test_the_deployment_is_looked_up_once_per_execution_environment(
    trigger_env: AuthServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FlakyProxy(trigger_env.api_url) as proxy:
        monkeypatch.setenv("PREFECT_API_URL", proxy.url("/api"))
        for scan in ("cache-1", "cache-2", "cache-3"):
            assert trigger.handler(_direct(scan), FakeLambdaContext())["status"] == "accepted"
    assert len(proxy.outcomes("/deployments/name/process-scan/ecs-cpu")) == 1
    assert len(proxy.outcomes("/create_flow_run")) == 3


def test_wrong_credentials_raise_instead_of_dropping_the_event(
    trigger_env: AuthServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PREFECT_API_AUTH_STRING", "scanflow:wrong")
    with pytest.raises(AuthError, match="HTTP 401"):
        trigger.handler(_direct("auth-1"), FakeLambdaContext())
    monkeypatch.delenv("PREFECT_API_AUTH_STRING")
    with pytest.raises(AuthError):  # no credential at all
        trigger.handler(_direct("auth-1"), FakeLambdaContext())


def test_the_auth_string_can_come_from_secrets_manager(
    trigger_env: AuthServer, monkeypatch: pytest.MonkeyPatch, s3_endpoint: str
) -> None:
    secrets = boto3.client("secretsmanager", endpoint_url=s3_endpoint)
    arn = secrets.create_secret(
        Name="scanflow-trigger/prefect-credential-test", SecretString=trigger_env.auth_string
    )["ARN"]
    monkeypatch.delenv("PREFECT_API_AUTH_STRING")
    monkeypatch.setenv("PREFECT_API_AUTH_STRING_SECRET_ARN", arn)
    monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", s3_endpoint)
    out = trigger.handler(_direct("secret-1"), FakeLambdaContext())
    assert out["status"] == "accepted"
    assert _read_run(trigger_env, out["runs"][0]["flow_run_id"])["name"] == "secret-1"

    empty = secrets.create_secret(Name="scanflow-trigger/empty", SecretString=" ")["ARN"]
    monkeypatch.setenv("PREFECT_API_AUTH_STRING_SECRET_ARN", empty)
    with pytest.raises(ConfigError, match="has no SecretString"):
        trigger.handler(_direct("secret-2"), FakeLambdaContext())


def test_a_misconfigured_function_fails_loudly(
    trigger_env: AuthServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCANFLOW_DEPLOYMENT", "process-scan/no-such-deployment")
    with pytest.raises(ConfigError, match="no-such-deployment' not found"):
        trigger.handler(_direct("cfg-1"), FakeLambdaContext())
    monkeypatch.setenv("PREFECT_API_KEY", "pnu_x")  # and the auth string: two credentials
    with pytest.raises(ConfigError, match="one Prefect credential"):
        trigger.handler(_direct("cfg-1"), FakeLambdaContext())
    monkeypatch.delenv("SCANFLOW_ALLOWED_BUCKETS")
    with pytest.raises(ConfigError, match="SCANFLOW_ALLOWED_BUCKETS"):
        trigger.handler(_direct("cfg-1"), FakeLambdaContext())


def test_the_answer_is_json(trigger_env: AuthServer, s3_event: dict[str, Any]) -> None:
    # Lambda serialises the return value: it must survive json.dumps unchanged
    out = trigger.handler(s3_event, FakeLambdaContext())
    assert json.loads(json.dumps(out)) == out
