"""``scanflow doctor`` against a rehearsed production deployment (a local Prefect server
standing in for Prefect Cloud, moto for AWS: ``python -m deployments.rehearsal --serve``),
each check's misconfiguration injected through the real APIs and then fixed, the doctor run
as its user runs it (``scanflow doctor --json`` in a process of its own)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from scanflow.local.loopback import free_port
from scanflow.settings import REPO_ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class World:
    """The rehearsed deployment: its environment, and clients that reach it."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.session = boto3.Session(
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            region_name=env["AWS_DEFAULT_REGION"],
        )
        self.endpoint = env["AWS_ENDPOINT_URL"]
        self.api = env["PREFECT_API_URL"]

    def client(self, service: str) -> Any:
        return self.session.client(service, endpoint_url=self.endpoint)

    def process_env(self, **extra: str) -> dict[str, str]:
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AWS_", "PREFECT_", "SCANFLOW_"))
        }
        return {**base, **self.env, "PREFECT_HOME": str(Path(self.env["HOME_DIR"])), **extra}

    def scanflow(
        self, *args: str, stdin: str | None = None, **extra: str
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "scanflow.cli.main", *args],
            cwd=REPO_ROOT,
            env=self.process_env(**extra),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=300,
        )

    def doctor(self, **extra: str) -> tuple[int, dict[str, dict[str, Any]]]:
        done = self.scanflow("doctor", "--json", **extra)
        assert "Traceback" not in done.stdout + done.stderr, done.stderr[-3000:]
        report = json.loads(done.stdout)
        checks = {f"{c['group']} {c['subject']}": c for c in report["checks"]}
        assert (done.returncode == 1) == (not report["ok"])
        return done.returncode, checks

    def api_call(self, method: str, path: str, **kw: Any) -> Any:
        response = httpx.request(method, self.api + path, timeout=30, **kw)
        response.raise_for_status()
        return response.json() if response.content else None


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    workdir = tmp_path_factory.mktemp("rehearsed")
    proc = subprocess.Popen(
        [sys.executable, "-m", "deployments.rehearsal", "--serve", "--workdir", str(workdir)],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None and proc.stdin is not None
    line = ""
    for line in proc.stdout:  # the provisioner prints first; the world is the JSON line
        if line.startswith('{"env"'):
            break
    assert line.startswith('{"env"'), "the rehearsal did not come up green"
    world = json.loads(line)
    env = {k: str(v) for k, v in world["env"].items()}
    env["HOME_DIR"] = str(workdir / "doctor-home")
    try:
        yield World(env)
    finally:
        proc.stdin.close()
        proc.wait(timeout=120)


def _broken_then_fixed(
    world: World,
    check: str,
    *,
    breaks: Callable[[], None],
    fixes: Callable[[], None],
    says: str,
    fix_says: str | None = None,
    also_fails: tuple[str, ...] = (),
    **env: str,
) -> None:
    code, checks = world.doctor(**env)
    assert code == 0, [c for c in checks.values() if c["ok"] is False]
    assert checks[check]["ok"] is True
    breaks()
    code, checks = world.doctor(**env)
    assert code == 1
    assert checks[check]["ok"] is False, checks[check]
    assert says in checks[check]["detail"], checks[check]
    if fix_says is not None:
        assert fix_says in (checks[check]["fix"] or ""), checks[check]
    failed = [name for name, c in checks.items() if c["ok"] is False]
    assert failed == [check, *also_fails], f"one misconfiguration, its checks fail: {failed}"
    fixes()
    code, checks = world.doctor(**env)
    assert checks[check]["ok"] is True, checks[check]
    assert code == 0


def test_an_unreachable_api_or_no_aws_credentials_is_one_line(world: World) -> None:
    closed = f"http://127.0.0.1:{free_port()}/api"
    done = world.scanflow("doctor", PREFECT_API_URL=closed)
    assert done.returncode == 1
    assert "Traceback" not in done.stdout + done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("FAIL")]
    assert lines[0].startswith(f"FAIL  prefect  {closed}: unreachable or refused")
    assert "fix: set PREFECT_API_URL" in done.stdout
    assert "skip  pool" in done.stdout

    no_aws = {
        "AWS_ACCESS_KEY_ID": "",
        "AWS_SECRET_ACCESS_KEY": "",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
        "AWS_CONFIG_FILE": "/nonexistent",
    }
    env = world.process_env(**no_aws)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        env.pop(key)
    done = subprocess.run(
        [sys.executable, "-m", "scanflow.cli.main", "doctor"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1 and "Traceback" not in done.stdout + done.stderr
    assert "FAIL  aws      credentials: no AWS credentials" in done.stdout
    assert "skip  trigger" in done.stdout and "skip  roles" in done.stdout

    done = world.scanflow("doctor", SCANFLOW_TRIGGER_FUNCTION="no-such-function")
    assert done.returncode == 1 and "Traceback" not in done.stdout + done.stderr
    assert "FAIL  trigger  no-such-function: ResourceNotFoundException" in done.stdout


def test_a_pool_with_another_template_shows_the_diff_and_is_fixed_by_apply(world: World) -> None:
    from prefect_aws.workers.ecs_worker import ECSWorker

    original = world.api_call("GET", "/work_pools/scanflow-gpu")["base_job_template"]
    arn = original["variables"]["properties"]["prefect_api_key_secret_arn"]["default"]

    def breaks() -> None:  # what a worker that created the pool would have left
        stock = ECSWorker.get_default_base_job_template()
        world.api_call("PATCH", "/work_pools/scanflow-gpu", json={"base_job_template": stock})

    def fixes() -> None:
        done = world.scanflow(
            "pools", "apply", "scanflow-gpu", "--replace-template", "--credential-secret-arn", arn
        )
        assert done.returncode == 0, done.stderr
        assert "template: replaced" in done.stdout

    _broken_then_fixed(
        world,
        "pool scanflow-gpu template",
        breaks=breaks,
        fixes=fixes,
        says="differs",
        fix_says="scanflow pools apply scanflow-gpu --replace-template",
        also_fails=("pool scanflow-gpu credential",),  # the stock template has no secret
    )
    # a replacement keeps the workspace's own defaults: the credential stays
    done = world.scanflow("pools", "apply", "scanflow-gpu", "--replace-template")
    assert done.returncode == 0, done.stderr
    fixed = world.api_call("GET", "/work_pools/scanflow-gpu")["base_job_template"]
    assert fixed["variables"]["properties"]["prefect_api_key_secret_arn"]["default"] == arn


def test_queues_out_of_order(world: World) -> None:
    queues = {
        q["name"]: q
        for q in world.api_call("POST", "/work_pools/scanflow-gpu/queues/filter", json={})
    }

    def breaks() -> None:
        world.api_call("PATCH", "/work_pools/scanflow-gpu/queues/backfill", json={"priority": 1})

    def fixes() -> None:
        assert world.scanflow("pools", "apply", "scanflow-gpu").returncode == 0

    assert queues["uploads"]["priority"] < queues["backfill"]["priority"]
    _broken_then_fixed(
        world,
        "pool scanflow-gpu queues",
        breaks=breaks,
        fixes=fixes,
        says="by priority: backfill 1",
    )


def test_a_deployment_with_a_setting_left_as_text_or_no_grace(world: World) -> None:
    deployment = world.api_call("GET", "/deployments/name/process-scan/ecs-cpu")
    variables = deployment["job_variables"]
    options = deployment["concurrency_options"]

    def set_variables(value: dict[str, Any]) -> Callable[[], None]:
        return lambda: world.api_call(
            "PATCH", f"/deployments/{deployment['id']}", json={"job_variables": value}
        )

    broken = json.loads(json.dumps(variables))
    broken["env"]["SCANFLOW_RESULTS_URI"] = "{{ $SCANFLOW_RESULTS_URI }}"
    _broken_then_fixed(
        world,
        "deploy process-scan/ecs-cpu",
        breaks=set_variables(broken),
        fixes=set_variables(variables),
        says="env.SCANFLOW_RESULTS_URI left as '{{ $SCANFLOW_RESULTS_URI }}'",
        fix_says="scanflow deploy ecs-cpu",
    )

    def set_grace(grace: int | None) -> Callable[[], None]:
        return lambda: world.api_call(
            "PATCH",
            f"/deployments/{deployment['id']}",
            json={"concurrency_options": {**options, "grace_period_seconds": grace}},
        )

    _broken_then_fixed(
        world,
        "deploy process-scan/ecs-cpu",
        breaks=set_grace(None),
        fixes=set_grace(options["grace_period_seconds"]),
        says="shorter than scanflow-cpu's start-up",
    )


def test_automations_out_of_sync_and_the_notify_deployment_on_a_scan_pool(world: World) -> None:
    automations = world.api_call("POST", "/automations/filter", json={})
    stalled = next(a for a in automations if a["name"] == "scanflow: scan stalled")

    def breaks() -> None:
        world.api_call("DELETE", f"/automations/{stalled['id']}")

    def fixes() -> None:
        done = world.scanflow("automations", "apply")
        assert done.returncode == 0, done.stderr

    _broken_then_fixed(
        world,
        "notify automations",
        breaks=breaks,
        fixes=fixes,
        says="out of sync",
        fix_says="scanflow automations apply",
    )

    code, checks = world.doctor(SCANFLOW_NOTIFY_DEPLOYMENT="process-scan/ecs-cpu")
    assert code == 1
    check = checks["notify process-scan/ecs-cpu"]
    assert check["ok"] is False and "news of a scan would wait behind scans" in check["detail"]


def test_the_signing_key_block(world: World) -> None:
    block = "scanflow-platform-signing-secret"
    key = "whsec-doctor-test"

    def breaks() -> None:
        blocks = world.api_call("POST", "/block_documents/filter", json={})
        target = next(b for b in blocks if b["name"] == block)
        world.api_call("DELETE", f"/block_documents/{target['id']}")

    def fixes() -> None:
        done = world.scanflow("secrets", "set", "platform-signing-secret", stdin=key)
        assert done.returncode == 0, done.stderr
        assert key not in done.stdout + done.stderr

    _broken_then_fixed(
        world, f"notify secret block {block}", breaks=breaks, fixes=fixes, says="missing or empty"
    )


def test_the_trigger_environment_credential_and_concurrency(world: World) -> None:
    lam = world.client("lambda")
    function = "scanflow-trigger"
    config = lam.get_function_configuration(FunctionName=function)
    env = config["Environment"]["Variables"]

    def set_env(variables: dict[str, str]) -> Callable[[], None]:
        return lambda: lam.update_function_configuration(
            FunctionName=function, Environment={"Variables": variables}
        )

    _broken_then_fixed(
        world,
        f"trigger {function} environment",
        breaks=set_env({**env, "PREFECT_API_URL": "https://elsewhere.example/api"}),
        fixes=set_env(env),
        says="PREFECT_API_URL is 'https://elsewhere.example/api'",
    )
    _broken_then_fixed(
        world,
        f"trigger {function} environment",
        breaks=set_env({**env, "SCANFLOW_ALLOWED_EXTENSIONS": "mp4,mov"}),
        fixes=set_env(env),
        says="accepts only",
    )
    secrets = world.client("secretsmanager")
    arn = env["PREFECT_API_KEY_SECRET_ARN"]
    value = secrets.get_secret_value(SecretId=arn)["SecretString"]
    _broken_then_fixed(
        world,
        f"trigger {function} credential",
        breaks=lambda: secrets.put_secret_value(SecretId=arn, SecretString=" "),
        fixes=lambda: secrets.put_secret_value(SecretId=arn, SecretString=value),
        says="the secret is empty",
    )


def test_the_upload_bucket_notifications(world: World) -> None:
    s3 = world.client("s3")
    bucket = world.env["UPLOADS"]
    original = s3.get_bucket_notification_configuration(Bucket=bucket)
    original.pop("ResponseMetadata", None)
    suffixed = json.loads(json.dumps(original))
    for configuration in suffixed["QueueConfigurations"]:
        configuration["Filter"]["Key"]["FilterRules"].append({"Name": "suffix", "Value": ".mp4"})

    _broken_then_fixed(
        world,
        f"bucket {bucket} notifications",
        breaks=lambda: s3.put_bucket_notification_configuration(
            Bucket=bucket, NotificationConfiguration=suffixed
        ),
        fixes=lambda: s3.put_bucket_notification_configuration(
            Bucket=bucket, NotificationConfiguration=original
        ),
        says="never reach the trigger, e.g. patients/patient-1/scans/scan-1.mP4",
    )


def test_a_role_the_submitter_cannot_pass(world: World) -> None:
    iam = world.client("iam")
    user = "prefect-ecs-user"
    document = iam.get_user_policy(UserName=user, PolicyName="scanflow-pass-task-role")[
        "PolicyDocument"
    ]
    check = "roles ecs-cpu on scanflow-cpu: scanflow-cpu-TaskRole"
    _broken_then_fixed(
        world,
        check,
        breaks=lambda: iam.delete_user_policy(UserName=user, PolicyName="scanflow-pass-task-role"),
        fixes=lambda: iam.put_user_policy(
            UserName=user, PolicyName="scanflow-pass-task-role", PolicyDocument=json.dumps(document)
        ),
        says="prefect-ecs-user may not pass it",
        fix_says="deployments/ecs-cpu/template.yaml",
    )


def test_the_gpu_pool_without_the_credential_secret(world: World) -> None:
    template = world.api_call("GET", "/work_pools/scanflow-gpu")["base_job_template"]
    arn = template["variables"]["properties"]["prefect_api_key_secret_arn"]["default"]
    stripped = json.loads(json.dumps(template))
    del stripped["variables"]["properties"]["prefect_api_key_secret_arn"]["default"]

    def fixes() -> None:
        done = world.scanflow("pools", "apply", "scanflow-gpu", "--credential-secret-arn", arn)
        assert done.returncode == 0, done.stderr

    _broken_then_fixed(
        world,
        "pool scanflow-gpu credential",
        breaks=lambda: world.api_call(
            "PATCH", "/work_pools/scanflow-gpu", json={"base_job_template": stripped}
        ),
        fixes=fixes,
        says="in plain text",
        fix_says="--credential-secret-arn",
    )
