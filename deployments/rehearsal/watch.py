"""Step 7 of the rehearsal, "Send a test upload", followed to the end: the uploads reach the
trigger through the template's own notification rules and queue, become runs, the push pool
and the GPU worker submit them to ECS, one runs to Completed as its container would, and
the platform hears of it from the run's hook and from the automation's notify-cloud run.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deployments.dockerfile import parse_dockerfile
from deployments.work_pools import FARGATE_SIZES

if TYPE_CHECKING:
    from deployments.rehearsal.production import Rehearsal

POLL_S = 0.5
# moto's container instances offer 4096 CPU units and 7482 MiB: the GPU probe run asks less.
GPU_PROBE_SIZE = {"cpu": 2048, "memory": 6144}
# What the rehearsal uploads besides the runbook's own test upload: every allowed
# extension, in the cases phones write, and one upload the trigger must refuse.
PROBES = {
    "patients/demo-patient/scans/probe-a.mp4": True,
    "patients/demo-patient/scans/probe-b.m4v": True,
    "patients/demo-patient/scans/probe-c.MP4": True,
    "patients/demo-patient/scans/notes.txt": False,
}


def watch_uploads(r: Rehearsal, probes: dict[str, bool]) -> list[str]:
    lines: list[str] = []
    trigger = r.stacks["scanflow-trigger"]
    bucket = trigger.properties["UploadBucket"]["BucketName"]
    s3 = r.session().client("s3")
    sample = next(r.workdir.glob("*.MOV"))
    for key, accepted in probes.items():
        body = sample.read_bytes() if accepted else b"not a video\n"
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    runbook_upload = f"patients/demo-patient/scans/{sample.name}"
    expected = [runbook_upload] + [k for k, ok in probes.items() if ok]
    refused = [k for k, ok in probes.items() if not ok]

    started = time.monotonic()
    runs = pump_uploads(r, bucket, expected)
    r.figures["uploads_to_runs_s"] = round(time.monotonic() - started, 2)
    lines.append(
        f"{len(expected)} uploads ({', '.join(Path(k).suffix for k in expected)}) became one "
        f"run each in {r.figures['uploads_to_runs_s']} s; refused: {', '.join(refused)}"
    )
    stray = asyncio.run(_runs_for(bucket, refused))
    if any(stray.values()):
        raise r.fail(f"refused uploads got runs: {stray}")

    lines += push(r, "scanflow-cpu", expected_tasks=len(expected))
    run = runs[runbook_upload]
    lines += execute(r, "scanflow-cpu", run)
    lines += deliveries(r, run)
    lines += gpu_probe(r)
    return lines


# -- the trigger, fed as Lambda's event source mapping feeds it ----------------------------


def pump_uploads(r: Rehearsal, bucket: str, expected: list[str]) -> dict[str, Any]:
    """Read the upload queue in batches and invoke the packaged handler with each, deleting
    what it did not answer as a failure, until every expected upload has its run."""
    trigger = r.stacks["scanflow-trigger"]
    if "UploadQueueMapping" not in trigger.properties:
        raise r.fail("the rehearsal follows Delivery=sqs (the runbook's default)")
    mapping = trigger.properties["UploadQueueMapping"]
    if "ReportBatchItemFailures" not in mapping.get("FunctionResponseTypes", []):
        raise r.fail("the event source mapping does not report batch item failures")
    queue_url = trigger.attributes["UploadQueue"]["QueueUrl"]
    queue_arn = trigger.attributes["UploadQueue"]["Arn"]
    function = trigger.physical["Function"]
    session = r.session()
    sqs, lam = session.client("sqs"), session.client("lambda")
    config = lam.get_function_configuration(FunctionName=function)
    code = r.workdir / "lambda-code"
    zipped = (
        session.client("s3")
        .get_object(
            Bucket=trigger.properties["Function"]["Code"]["S3Bucket"],
            Key=trigger.properties["Function"]["Code"]["S3Key"],
        )["Body"]
        .read()
    )
    unzip(zipped, code)
    env = {
        **config["Environment"]["Variables"],
        "AWS_ENDPOINT_URL": r.moto.url,
        "AWS_ACCESS_KEY_ID": "rehearsal",
        "AWS_SECRET_ACCESS_KEY": "rehearsal",
        "AWS_REGION": r.session().region_name,
        "PATH": os.environ.get("PATH", ""),
    }
    deadline = time.monotonic() + 90
    runs: dict[str, Any] = {}
    while time.monotonic() < deadline:
        messages = sqs.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=int(mapping.get("BatchSize", 10)),
            AttributeNames=["All"],
            WaitTimeSeconds=1,
        ).get("Messages", [])
        if messages:
            event = {
                "Records": [_sqs_record(m, queue_arn, r.session().region_name) for m in messages]
            }
            answer = invoke(r, code, env, event, int(config.get("Timeout", 60)))
            failed = {f["itemIdentifier"] for f in answer.get("batchItemFailures", [])}
            for message in messages:
                if message["MessageId"] not in failed:
                    sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
        found = asyncio.run(_runs_for(bucket, expected))
        runs = {k: v[0] for k, v in found.items() if v}
        duplicated = {k: len(v) for k, v in found.items() if len(v) > 1}
        if duplicated:
            raise r.fail(f"uploads with more than one run: {duplicated}")
        if len(runs) == len(expected) and not messages:
            return runs
    missing = sorted(set(expected) - set(runs))
    raise r.fail(
        f"uploads that never became a run (the notification or the trigger lost them): {missing}"
    )


def _sqs_record(message: dict[str, Any], queue_arn: str, region: str) -> dict[str, Any]:
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": message.get("Attributes", {}),
        "messageAttributes": {},
        "md5OfBody": message["MD5OfBody"],
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    }


def invoke(r: Rehearsal, code: Path, env: dict[str, str], event: Any, timeout: int) -> Any:
    """One invocation of the packaged handler, in a process of its own as Lambda runs it."""
    program = (
        "import json, sys, time\n"
        "sys.path.insert(0, '.')  # the unpacked zip, alone: -I keeps the repository out\n"
        "from scanflow_trigger.handler import handler\n"
        "class Context:\n"
        f"    deadline = time.monotonic() + {timeout}\n"
        "    def get_remaining_time_in_millis(self):\n"
        "        return int((self.deadline - time.monotonic()) * 1000)\n"
        "print(json.dumps(handler(json.load(sys.stdin), Context())))\n"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-c", program],
        cwd=code,
        env={**env, "PYTHONPATH": str(code)},
        input=json.dumps(event),
        capture_output=True,
        text=True,
        timeout=timeout + 10,
    )
    if done.returncode != 0:
        raise r.fail(f"the trigger raised: {done.stderr.strip()[-1500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


async def _runs_for(bucket: str, keys: list[str]) -> dict[str, list[Any]]:
    from prefect.client.orchestration import get_client

    out: dict[str, list[Any]] = {}
    async with get_client() as client:
        runs = await client.read_flow_runs(limit=200)
    for key in keys:
        prefix = f"{bucket}/{key}@"
        out[key] = [run for run in runs if (run.idempotency_key or "").startswith(prefix)]
    return out


# -- ECS ---------------------------------------------------------------------------------


def push(r: Rehearsal, pool: str, *, expected_tasks: int) -> list[str]:
    """What Prefect Cloud does for a push pool: render each waiting run's job from the
    pool's template and submit RunTask with the pool's AWS credentials (prefect-aws's ECS
    worker code, once)."""
    before = set(_task_arns(r))
    asyncio.run(_sync_and_submit(pool))
    tasks = [t for t in _task_arns(r) if t not in before]
    if len(tasks) < expected_tasks:
        raise r.fail(f"{pool}: {len(tasks)} ECS tasks started for {expected_tasks} runs")
    submitter = asyncio.run(_push_submitter(r, pool))
    return [check_task(r, arn, submitter, fargate=True) for arn in tasks]


async def _sync_and_submit(pool: str) -> None:
    from prefect_aws.workers.ecs_worker import ECSWorker

    async with ECSWorker(work_pool_name=pool) as worker:
        await worker.sync_with_backend()
        await worker.get_and_submit_flow_runs()


async def _push_submitter(r: Rehearsal, pool_name: str) -> str:
    from prefect.client.orchestration import get_client

    from deployments.doctor import _access_key_of
    from deployments.iam_policy import user_for_access_key

    async with get_client() as client:
        pool = await client.read_work_pool(pool_name)
        props = pool.base_job_template["variables"]["properties"]
        key = await _access_key_of(client, props["aws_credentials"].get("default"))
    return user_for_access_key(r.session().client("iam"), key)


def _task_arns(r: Rehearsal) -> list[str]:
    ecs = r.session().client("ecs")
    arns: list[str] = []
    for cluster in ecs.list_clusters()["clusterArns"]:
        arns += ecs.list_tasks(cluster=cluster)["taskArns"]
    return arns


def _describe(r: Rehearsal, arn: str) -> tuple[dict[str, Any], dict[str, Any]]:
    ecs = r.session().client("ecs")
    cluster = arn.split(":task/", 1)[1].split("/", 1)[0]
    task = ecs.describe_tasks(cluster=cluster, tasks=[arn])["tasks"][0]
    taskdef = ecs.describe_task_definition(taskDefinition=task["taskDefinitionArn"])
    return task, taskdef["taskDefinition"]


def check_task(r: Rehearsal, arn: str, submitter: str, *, fargate: bool) -> str:
    """One RunTask request as ECS received it: roles passable by its submitter, network,
    size, GPU, architecture, and no Prefect credential in plain text."""
    from deployments.iam_policy import may_pass_role

    task, taskdef = _describe(r, arn)
    iam = r.session().client("iam")
    overrides = task.get("overrides", {})
    roles = [overrides.get("taskRoleArn"), taskdef.get("executionRoleArn")]
    for role in filter(None, roles):
        decision = may_pass_role(iam, submitter, role)
        if not decision.allowed:
            raise r.fail(f"RunTask {arn}: {submitter} may not pass {role} ({decision.reason})")
    env = {
        e["name"]: e["value"]
        for o in overrides.get("containerOverrides", [])
        for e in o.get("environment", [])
    }
    leaked = sorted({"PREFECT_API_KEY", "PREFECT_API_AUTH_STRING"} & env.keys())
    if leaked:
        raise r.fail(f"RunTask {arn} carries {leaked} in plain text: use the credential secret")
    platform = taskdef.get("runtimePlatform", {})
    if platform.get("cpuArchitecture") != "X86_64":
        raise r.fail(f"task definition {taskdef['family']} has no runtimePlatform X86_64")
    container = taskdef["containerDefinitions"][0]
    if fargate:
        if taskdef.get("requiresCompatibilities") != ["FARGATE"] or not _fargate_size(taskdef):
            raise r.fail(
                f"{taskdef['family']}: not a valid Fargate task "
                f"({taskdef.get('cpu')} CPU, {taskdef.get('memory')} MiB)"
            )
        if taskdef.get("networkMode") != "awsvpc" or not task.get("attachments"):
            raise r.fail(f"{taskdef['family']}: Fargate needs awsvpc networking with subnets")
        what = f"Fargate {taskdef['cpu']}/{taskdef['memory']}, awsvpc"
    else:
        gpu = container.get("resourceRequirements", [])
        if task.get("capacityProviderName") is None or {"type": "GPU", "value": "1"} not in gpu:
            raise r.fail(f"{taskdef['family']}: not placed by the GPU capacity provider with a GPU")
        secrets = {s["name"] for s in container.get("secrets", [])}
        if "PREFECT_API_KEY" not in secrets:
            raise r.fail(f"{taskdef['family']}: the Prefect key is not an ECS secret")
        what = f"capacity provider {task['capacityProviderName']}, GPU 1, Prefect key as a secret"
    passed = ", ".join(role.rsplit("/", 1)[-1] for role in filter(None, roles))
    who = submitter.rsplit("/", 1)[-1]
    return f"RunTask {taskdef['family']}: {what}, x86_64; {who} may pass {passed}"


def _fargate_size(taskdef: dict[str, Any]) -> bool:
    cpu, memory = int(taskdef.get("cpu") or 0), int(taskdef.get("memory") or 0)
    return memory in FARGATE_SIZES.get(cpu, set())


def execute(r: Rehearsal, pool: str, run: Any) -> list[str]:
    """The container of the run's task, as the image runs it: ENTRYPOINT/CMD with the
    task's environment plus the image's ENV, in a working directory without source."""
    tasks = [a for a in _task_arns(r) if _run_of(r, a) == str(run.id)]
    if not tasks:
        raise r.fail(f"no ECS task for run {run.name}")
    task, _ = _describe(r, tasks[0])
    (override,) = task["overrides"]["containerOverrides"]
    image = parse_dockerfile(r.repo / "Dockerfile")
    venv = str(Path(sys.executable).parent.parent)
    home = r.workdir / f"container-{run.name}"
    home.mkdir(exist_ok=True)
    env = {
        **{k: v.replace("/opt/venv", venv) for k, v in image.env.items()},
        "HOME": str(home),
        "SCANFLOW_HOME": str(home / "scanflow"),
        **{e["name"]: e["value"] for e in override.get("environment", [])},
        # the task role's credentials, here: moto's
        "AWS_ENDPOINT_URL": r.moto.url,
        "AWS_ACCESS_KEY_ID": "rehearsal",
        "AWS_SECRET_ACCESS_KEY": "rehearsal",
        "AWS_DEFAULT_REGION": r.session().region_name,
        "PYTHONPATH": str(r.repo),
    }
    env["PATH"] = env["PATH"].rstrip(":") + ":/usr/local/bin:/usr/bin:/bin"
    started = time.monotonic()
    done = subprocess.run(
        override.get("command") or image.cmd,
        cwd=home,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    final = asyncio.run(_read_run(run.id))
    r.figures[f"{pool}_container_s"] = round(time.monotonic() - started, 1)
    if final.state.type.value != "COMPLETED":
        raise r.fail(
            f"run {run.name} ended {final.state.name}: {final.state.message} "
            f"{(done.stdout + done.stderr)[-1500:]}"
        )
    return [
        f"{run.name}: its container ran it to Completed in {r.figures[f'{pool}_container_s']} s"
    ]


def _run_of(r: Rehearsal, arn: str) -> str | None:
    task, _ = _describe(r, arn)
    env = {
        e["name"]: e["value"]
        for o in task.get("overrides", {}).get("containerOverrides", [])
        for e in o.get("environment", [])
    }
    return env.get("PREFECT__FLOW_RUN_ID")


async def _read_run(run_id: Any) -> Any:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return await client.read_flow_run(run_id)


# -- the platform ----------------------------------------------------------------------


def deliveries(r: Rehearsal, run: Any) -> list[str]:
    lines = []
    hook = _wait(lambda: _event_for(r, run, "hook"), 30)
    if hook is None:
        raise r.fail(f"the platform never got {run.name}'s outcome from its hook")
    lines.append(f"platform: signed {hook['type']} from the run's hook")
    started = time.monotonic()
    notify = _wait(lambda: asyncio.run(_notify_run_for(run.id)), 90)
    if notify is None:
        raise r.fail("no notify-outcome run on notify-cloud: the automation did not fire")
    lines += push(r, "scanflow-notify-push", expected_tasks=1)
    lines += execute(r, "scanflow-notify-push", notify)
    automation = _wait(lambda: _event_for(r, run, "automation"), 30)
    if automation is None:
        raise r.fail("the notify-cloud run did not deliver to the platform")
    if automation["event_id"] != hook["event_id"]:
        raise r.fail("the hook's and the automation's copies have different event ids")
    r.figures["automation_delivery_s"] = round(time.monotonic() - started, 1)
    lines.append(
        f"platform: the same {automation['type']} ({automation['event_id']}) from notify-cloud "
        f"on the push pool, {r.figures['automation_delivery_s']} s after the run ended"
    )
    return lines


def _event_for(r: Rehearsal, run: Any, source: str) -> dict[str, Any] | None:
    for event in r.receiver.events(source):
        if event.get("flow_run_id") == str(run.id):
            return event
    return None


async def _notify_run_for(run_id: Any) -> Any:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    async with get_client() as client:
        runs = await client.read_flow_runs(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["notify-cloud"]))
        )
    for run in runs:
        if str((run.parameters or {}).get("flow_run_id", "")).endswith(str(run_id)):
            return run
    return None


def _wait(probe: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(POLL_S)
    return None


# -- the GPU pool ------------------------------------------------------------------------


def gpu_probe(r: Rehearsal) -> list[str]:
    """A run of ecs-gpu, submitted by the GPU stack's worker (started as the stack starts
    it): its RunTask goes to the capacity provider with a GPU and the key as a secret."""
    run = asyncio.run(_create_gpu_run())
    found = _wait(lambda: asyncio.run(_read_run(run.id)).infrastructure_pid or None, 60)
    if not found:
        raise r.fail(f"the GPU worker never submitted {run.name}: see {r.workdir}")
    arn = str(found).split("::", 1)[1]
    worker_role = r.stacks["scanflow-gpu"].outputs["WorkerRoleArn"]
    return [check_task(r, arn, worker_role, fargate=False)]


async def _create_gpu_run() -> Any:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        deployment = await client.read_deployment_by_name("process-scan/ecs-gpu")
        return await client.create_flow_run_from_deployment(
            deployment.id,
            parameters={
                "scan_id": "gpu-probe",
                "patient_id": "demo-patient",
                "video_uri": "s3://x/y.mp4",
            },
            name="gpu-probe",
            job_variables=GPU_PROBE_SIZE,
        )


def unzip(data: bytes, into: Path) -> Path:
    """The Lambda's code as its runtime unpacks it."""
    if into.exists():
        shutil.rmtree(into)
    into.mkdir(parents=True)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        zf.extractall(into)
    return into
