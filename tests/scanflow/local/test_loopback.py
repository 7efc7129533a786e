"""scanflow.local.loopback: the stand-ins on loopback the tests, the rehearsal and the
benchmarks share. The Receiver is driven by real HTTP requests (httpx) and checks signatures
with scanflow.notify.signing; MotoServer is started as the child process it is and talked to
with boto3 (S3, and ECS's RunTask for a Fargate task definition, which plain moto fails)."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx
import pytest

from scanflow.local.loopback import MotoServer, Receiver, ephemeral_port_range, free_port
from scanflow.notify.signing import HEADER, sign

SECRET = "whsec-loopback"


@pytest.fixture(scope="module")
def shared() -> Iterator[Receiver]:
    r = Receiver("platform", secret=SECRET).start()
    yield r
    r.stop()  # up to half a second: serve_forever polls for shutdown every 0.5 s


@pytest.fixture
def receiver(shared: Receiver) -> Receiver:
    """The module's signing receiver, with nothing recorded and no policy."""
    with shared.lock:
        shared.records.clear()
    shared.policies.clear()
    return shared


def _post(
    url: str, event: dict[str, object], secret: str | None = SECRET, at: int | None = None
) -> int:
    body = json.dumps(event).encode()
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        headers[HEADER] = sign(secret, body, at)
    return httpx.post(url, content=body, headers=headers, timeout=5).status_code


def test_free_port_gives_a_port_nothing_listens_on() -> None:
    port = free_port()
    assert 1024 <= port <= 65535
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # and it can be taken


def test_free_port_is_not_one_the_kernel_gives_outgoing_connections() -> None:
    low, high = ephemeral_port_range()
    ports = {free_port() for _ in range(20)}
    assert not [p for p in ports if low <= p <= high], (low, high, ports)
    assert len(ports) > 1  # chosen at random: two processes rarely pick the same


def test_an_unsigned_receiver_records_every_post_and_answers_200() -> None:
    r = Receiver("slack").start()
    try:
        assert _post(r.url + "/services/T/B/x", {"text": "Scan failed"}, secret=None) == 200
        assert httpx.post(r.url + "/raw", content=b"not json", timeout=5).status_code == 200
    finally:
        r.stop()
    first, second = r.records
    assert (first.path, first.status, first.verified) == ("/services/T/B/x", 200, "unchecked")
    assert first.json == {"text": "Scan failed"}
    assert first.headers["Content-Type"] == "application/json"
    assert second.body == b"not json" and second.json == {}
    assert r.events() == []  # events() are the signed ones only


def test_a_signed_event_is_verified_and_listed_by_its_source(receiver: Receiver) -> None:
    assert _post(receiver.url + "/e", {"event_id": "1", "source": "hook"}) == 200
    assert _post(receiver.url + "/e", {"event_id": "2", "source": "automation"}) == 200
    assert [r.verified for r in receiver.records] == ["ok", "ok"]
    assert [e["event_id"] for e in receiver.events()] == ["1", "2"]
    assert [e["event_id"] for e in receiver.events("automation")] == ["2"]


@pytest.mark.parametrize(
    ("secret", "age_s", "refusal"),
    [
        ("another-secret", 0, "BadSignature: "),
        (None, 0, "MalformedSignature: no X-Scanflow-Signature header"),
        (SECRET, 3600, "StaleTimestamp: "),
    ],
)
def test_a_bad_signature_is_refused_with_400_and_named(
    receiver: Receiver, secret: str | None, age_s: int, refusal: str
) -> None:
    at = int(time.time()) - age_s
    assert _post(receiver.url + "/e", {"event_id": "x"}, secret=secret, at=at) == 400
    [got] = receiver.records
    assert got.status == 400 and got.verified.startswith(refusal), got.verified
    assert receiver.delivered(lambda e: True) == [] and receiver.events() == []
    assert receiver.all(lambda e: e.get("event_id") == "x") == [got]


def test_a_clock_ahead_refuses_what_was_signed_now() -> None:
    """How the replay tests receive an old request later."""
    r = Receiver("platform", secret=SECRET, clock=lambda: time.time() + 3600).start()
    try:
        assert _post(r.url, {"event_id": "x"}) == 400
    finally:
        r.stop()
    assert r.records[0].verified.startswith("StaleTimestamp")


def test_a_policy_answers_for_the_platform_until_it_is_removed(receiver: Receiver) -> None:
    def down(event: dict[str, object]) -> int | None:
        return 503 if event.get("type") == "scan.failed" else None

    receiver.policies.append(down)
    assert _post(receiver.url, {"event_id": "a", "type": "scan.failed"}) == 503
    assert _post(receiver.url, {"event_id": "b", "type": "scan.completed"}) == 200
    # a refused signature is refused whatever the policy says
    assert _post(receiver.url, {"event_id": "c", "type": "scan.failed"}, secret="x") == 400
    receiver.policies.remove(down)
    assert _post(receiver.url, {"event_id": "a", "type": "scan.failed"}) == 200
    assert [r.status for r in receiver.records] == [503, 200, 400, 200]
    assert [e["event_id"] for e in receiver.events()] == ["b", "a"]
    assert len(receiver.all(lambda e: e["event_id"] == "a")) == 2


def test_wait_for_returns_once_enough_arrived_or_what_came_by_the_timeout(
    receiver: Receiver,
) -> None:
    def later() -> None:
        time.sleep(0.2)
        for n in range(2):
            _post(receiver.url, {"scan_id": "s-1", "n": n})

    threading.Thread(target=later).start()
    started = time.monotonic()
    found = receiver.wait_for(lambda e: e.get("scan_id") == "s-1", timeout=10, count=2)
    assert [r.json["n"] for r in found] == [0, 1]
    assert 0.15 <= time.monotonic() - started < 5
    started = time.monotonic()
    assert receiver.wait_for(lambda e: e.get("scan_id") == "s-1", timeout=0.3, count=3) == found
    assert time.monotonic() - started >= 0.3


@pytest.mark.integration
def test_moto_server_serves_s3_and_runs_fargate_tasks(tmp_path: Path) -> None:
    moto = MotoServer(tmp_path / "moto.log").start()
    try:
        creds = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
        aws = {"endpoint_url": moto.url, "region_name": "us-east-1", **creds}
        s3 = boto3.client("s3", **aws)
        bucket = f"loopback-{uuid.uuid4().hex[:8]}"
        s3.create_bucket(Bucket=bucket)
        s3.put_object(Bucket=bucket, Key="a/b.txt", Body=b"hello")
        assert s3.get_object(Bucket=bucket, Key="a/b.txt")["Body"].read() == b"hello"

        ec2 = boto3.client("ec2", **aws)
        vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        # a Fargate VPC has DNS hostnames on (moto's ENI needs them too)
        ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
        group = ec2.create_security_group(GroupName="scan", Description="scan", VpcId=vpc)
        ecs = boto3.client("ecs", **aws)
        ecs.create_cluster(clusterName="scanflow")
        # as Prefect renders it for Fargate: sizes on the task, none on the container
        ecs.register_task_definition(
            family="process-scan",
            requiresCompatibilities=["FARGATE"],
            networkMode="awsvpc",
            cpu="1024",
            memory="2048",
            containerDefinitions=[{"name": "prefect", "image": "scanflow:latest"}],
        )
        ran = ecs.run_task(
            cluster="scanflow",
            taskDefinition="process-scan",
            launchType="FARGATE",
            networkConfiguration={
                "awsvpcConfiguration": {"subnets": [subnet], "securityGroups": [group["GroupId"]]}
            },
        )
        assert ran["failures"] == [] and len(ran["tasks"]) == 1
        described = ecs.describe_task_definition(taskDefinition="process-scan")
        [container] = described["taskDefinition"]["containerDefinitions"]
        assert "memory" not in container  # the stored definition is as it was registered
    finally:
        moto.stop()
    assert moto.proc is not None and moto.proc.poll() is not None
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", moto.port), timeout=1):
        pass
