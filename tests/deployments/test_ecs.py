"""The GPU path end to end on loopback: ``prefect deploy`` of prefect.yaml's deployments
against a real local server, prefect-aws's ECS worker submitting a run to moto's ECS, and
the container command the worker asked for, run here as the image would run it.

moto and the Fargate task definitions Prefect generates: moto's RunTask adds up the
container definitions' ``memory`` to place a task and fails with ``TypeError: unsupported
operand type(s) for +=: 'int' and 'NoneType'`` (an HTTP 500) when a container has none, as
in a Fargate task definition (memory at the task level only, which AWS accepts). The GPU
pool's task definitions are EC2 ones: Prefect's worker sets ``cpu`` and ``memory`` on the
container itself for any launch type but Fargate, so moto can place them. No pre-registered
``task_definition_arn`` is needed, and the task definition under test is the one the worker
generates. moto's container instances offer 4096 CPU units and 7482 MiB, so the run asks
for less (a per-run job-variable override, which the test also checks is honoured).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from cv.synthetic import SyntheticScan
from deployments.dockerfile import parse_dockerfile
from deployments.pool_api import apply_pool
from scanflow.local.stack import LocalStack
from scanflow.settings import REPO_ROOT, Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DEPLOY_ENV = {
    "SCANFLOW_IMAGE": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/scanflow:test",
    "SCANFLOW_GPU_CLUSTER": "scanflow-gpu",
    "SCANFLOW_EXECUTION_ROLE_ARN": "arn:aws:iam::123456789012:role/scanflow-execution",
    "SCANFLOW_GPU_TASK_ROLE_ARN": "arn:aws:iam::123456789012:role/scanflow-task",
    # (SCANFLOW_INPUT_ROOTS comes from the test session: scans are rendered under /tmp)
    "SCANFLOW_PLATFORM_WEBHOOK_URL": "http://127.0.0.1:9/scanflow/events",
}
RUN_SIZE = {"cpu": 2048, "memory": 6144}


@pytest.fixture(scope="module")
def deployed(prefect_server: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The local and ecs-gpu deployments applied from prefect.yaml by `scanflow deploy`."""
    results = tmp_path_factory.mktemp("ecs-results")
    env = {**os.environ, **DEPLOY_ENV, "SCANFLOW_RESULTS_URI": results.as_uri()}
    LocalStack(Settings()).ensure_pool()
    asyncio.run(apply_pool("scanflow-gpu", cloud=False))
    done = subprocess.run(
        [sys.executable, "-m", "scanflow.cli.main", "deploy", "local", "ecs-gpu"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return {"results_uri": results.as_uri(), "results": str(results)}


async def _read(name: str) -> Any:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        deployment = await client.read_deployment_by_name(name)
        queues = await client.read_work_queues(work_pool_name="scanflow-gpu")
        return deployment, queues


def test_prefect_deploy_applies_the_local_and_gpu_deployments(deployed: dict[str, str]) -> None:
    local, _ = asyncio.run(_read("process-scan/local"))
    assert local.work_pool_name == "process"
    assert local.entrypoint == "flows/process_scan.py:process_scan"

    gpu, queues = asyncio.run(_read("process-scan/ecs-gpu"))
    assert gpu.entrypoint == "flows.process_scan.process_scan"
    assert not gpu.pull_steps  # the code is in the image
    assert gpu.work_pool_name == "scanflow-gpu" and gpu.work_queue_name == "uploads"
    assert gpu.job_variables["image"] == DEPLOY_ENV["SCANFLOW_IMAGE"]
    assert gpu.job_variables["env"]["SCANFLOW_RESULTS_URI"] == deployed["results_uri"]
    assert gpu.global_concurrency_limit is not None
    assert gpu.global_concurrency_limit.limit == 8
    assert gpu.concurrency_options.collision_strategy.value == "ENQUEUE"
    # prefect.yaml's grace for a slot during a cold start reaches the deployment
    assert gpu.concurrency_options.grace_period_seconds == 1800
    by_priority = [q.name for q in sorted(queues, key=lambda q: q.priority)]
    assert by_priority[:3] == ["uploads", "reruns", "backfill"]


@pytest.fixture(scope="module")
def submitted(
    deployed: dict[str, str], s3_endpoint: str, good_scan: SyntheticScan
) -> Iterator[dict[str, Any]]:
    """One run of ecs-gpu, submitted by prefect-aws's ECS worker to moto's ECS."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ENDPOINT_URL", s3_endpoint)  # every AWS service: moto
        # The observer watches an SQS queue of ECS events (production: EventBridge -> SQS).
        mp.setenv("PREFECT_INTEGRATIONS_AWS_ECS_OBSERVER_ENABLED", "false")
        ecs, ec2 = boto3.client("ecs"), boto3.client("ec2")
        ecs.create_cluster(clusterName="scanflow-gpu")
        ecs.create_capacity_provider(
            name="scanflow-gpu",
            autoScalingGroupProvider={
                "autoScalingGroupArn": "arn:aws:autoscaling:us-east-1:123456789012:"
                "autoScalingGroup:0:autoScalingGroupName/scanflow-gpu",
                "managedScaling": {"status": "ENABLED", "targetCapacity": 100},
                "managedTerminationProtection": "DISABLED",
            },
        )
        ecs.put_cluster_capacity_providers(
            cluster="scanflow-gpu",
            capacityProviders=["scanflow-gpu"],
            defaultCapacityProviderStrategy=[],
        )
        image_id = ec2.describe_images()["Images"][0]["ImageId"]
        instance = ec2.run_instances(
            ImageId=image_id, MinCount=1, MaxCount=1, InstanceType="g5.xlarge"
        )["Instances"][0]
        ecs.register_container_instance(
            cluster="scanflow-gpu",
            instanceIdentityDocument=json.dumps({"instanceId": instance["InstanceId"]}),
        )
        run = asyncio.run(_create_run(good_scan))
        from prefect_aws.workers.ecs_worker import ECSWorker

        asyncio.run(ECSWorker(work_pool_name="scanflow-gpu").start(run_once=True))

        arns = ecs.list_tasks(cluster="scanflow-gpu")["taskArns"]
        assert len(arns) == 1, "the worker did not start exactly one ECS task"
        task = ecs.describe_tasks(cluster="scanflow-gpu", tasks=arns, include=["TAGS"])["tasks"][0]
        taskdef = ecs.describe_task_definition(taskDefinition=task["taskDefinitionArn"])
        yield {"run": run, "task": task, "taskdef": taskdef["taskDefinition"], **deployed}


async def _create_run(scan: SyntheticScan) -> Any:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        deployment = await client.read_deployment_by_name("process-scan/ecs-gpu")
        return await client.create_flow_run_from_deployment(
            deployment.id,
            parameters={
                "scan_id": "ecs-scan",
                "patient_id": "ecs-1",
                "video_uri": scan.path.as_uri(),
            },
            name="ecs-scan",
            job_variables=RUN_SIZE,
        )


async def _read_run(run_id: Any) -> Any:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return await client.read_flow_run(run_id)


def test_the_ecs_worker_registers_the_gpu_task_and_runs_it_on_the_capacity_provider(
    submitted: dict[str, Any],
) -> None:
    taskdef, task = submitted["taskdef"], submitted["task"]
    assert taskdef["family"] == "scanflow-gpu"
    assert taskdef["requiresCompatibilities"] == ["EC2"]
    assert taskdef["networkMode"] == "bridge"
    assert taskdef["executionRoleArn"] == DEPLOY_ENV["SCANFLOW_EXECUTION_ROLE_ARN"]
    container = taskdef["containerDefinitions"][0]
    assert container["name"] == "prefect"
    assert container["image"] == DEPLOY_ENV["SCANFLOW_IMAGE"]
    assert container["resourceRequirements"] == [{"type": "GPU", "value": "1"}]
    assert (container["cpu"], container["memory"]) == (RUN_SIZE["cpu"], RUN_SIZE["memory"])
    assert container["logConfiguration"]["logDriver"] == "awslogs"

    # RunTask: the capacity provider places it (no launch type), with the run's command,
    # environment and size
    assert task["capacityProviderName"] == "scanflow-gpu"
    assert not task.get("launchType")
    overrides = task["overrides"]
    assert overrides["taskRoleArn"] == DEPLOY_ENV["SCANFLOW_GPU_TASK_ROLE_ARN"]
    (override,) = overrides["containerOverrides"]
    assert override["name"] == "prefect"
    assert override["command"] == parse_dockerfile(REPO_ROOT / "Dockerfile").cmd
    env = {e["name"]: e["value"] for e in override["environment"]}
    run = submitted["run"]
    assert env["PREFECT__FLOW_RUN_ID"] == str(run.id)
    assert env["PREFECT_API_URL"] == os.environ["PREFECT_API_URL"]
    assert env["SCANFLOW_RESULTS_URI"] == submitted["results_uri"]
    assert env["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == "30"
    tags = {t["key"]: t["value"] for t in task["tags"]}
    assert tags["prefect.io/flow-run-id"] == str(run.id)

    stored = asyncio.run(_read_run(run.id))
    assert stored.state.type.value == "PENDING"
    assert stored.infrastructure_pid == f"scanflow-gpu::{task['taskArn']}"


def test_the_image_command_runs_the_submitted_flow_run(
    submitted: dict[str, Any], tmp_path: Path
) -> None:
    """What the container would do: the image's ENTRYPOINT hands the worker's command, with
    the worker's environment plus the image's ENV, to a shell-less exec, in a working
    directory with no source tree (the flow is imported from the installed package)."""
    image = parse_dockerfile(REPO_ROOT / "Dockerfile")
    (override,) = submitted["task"]["overrides"]["containerOverrides"]
    workdir = tmp_path / "home"
    workdir.mkdir()
    venv = str(Path(sys.executable).parent.parent)  # the image's /opt/venv, here
    env = {
        **{k: v.replace("/opt/venv", venv) for k, v in image.env.items()},
        "HOME": str(workdir),
        "SCANFLOW_HOME": str(tmp_path / "scanflow"),  # the image's /tmp/scanflow, here
        **{e["name"]: e["value"] for e in override["environment"]},
    }
    env["PATH"] = env["PATH"].rstrip(":") + ":/usr/local/bin:/usr/bin:/bin"
    done = subprocess.run(
        override["command"], cwd=workdir, env=env, capture_output=True, text=True, timeout=300
    )
    run = asyncio.run(_read_run(submitted["run"].id))
    assert run.state.type.value == "COMPLETED", (
        run.state.message,
        done.stdout[-3000:],
        done.stderr[-3000:],
    )
    assert done.returncode == 0
    manifest = Path(submitted["results"]) / "ecs-1" / "ecs-scan" / "manifest.json"
    assert json.loads(manifest.read_text())["flow_run_id"] == str(run.id)


def test_scanflow_pools_apply_updates_in_place_and_refuses_push_pools_off_cloud(
    deployed: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    from scanflow.cli.main import main

    assert main(["pools", "apply", "scanflow-gpu"]) == 0
    assert "scanflow-gpu (ecs): updated" in capsys.readouterr().out
    _, queues = asyncio.run(_read("process-scan/ecs-gpu"))
    assert [q.name for q in sorted(queues, key=lambda q: q.priority)][:3] == [
        "uploads",
        "reruns",
        "backfill",
    ]
    assert main(["pools", "apply", "scanflow-cpu"]) == 1
    assert "exists only on Prefect Cloud" in capsys.readouterr().err
