"""The pools' base job templates and prefect.yaml's deployments, checked statically: against
prefect-aws's ECS worker (its documented job variables and its own task-definition code)
and against the server's template validation. The push pool cannot be created on an
open-source server (it has no ``ecs:push`` type), so this is where it is checked."""

from __future__ import annotations

import asyncio
import re
import uuid
from typing import Any

import pytest
import yaml
from prefect.client.schemas.objects import FlowRun
from prefect.server.schemas.actions import WorkPoolCreate
from prefect.utilities.templating import find_placeholders
from prefect_aws.workers.ecs_worker import ECSJobConfiguration, ECSVariables, ECSWorker

from deployments import work_pools
from scanflow.settings import REPO_ROOT

EXTRA_GPU_VARIABLES = {"gpu_count"}  # ours, used in the container's resourceRequirements


def _deployments() -> dict[str, dict[str, Any]]:
    spec = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())
    return {d["name"]: d for d in spec["deployments"]}


def _job_variables(name: str) -> dict[str, Any]:
    """The deployment's job variables with its {{ $VAR }} placeholders filled in."""
    text = yaml.safe_dump(_deployments()[name]["work_pool"]["job_variables"])
    text = re.sub(r"\{\{\s*\$(\w+)\s*\}\}", lambda m: f"value-of-{m[1]}", text)
    return dict(yaml.safe_load(text))


@pytest.mark.parametrize("name", sorted(work_pools.BUILDERS))
def test_template_files_are_up_to_date(name: str) -> None:
    path = work_pools.TEMPLATES_DIR / name
    assert path.read_text() == work_pools.render(name), (
        f"{path} is stale: run `scanflow pools templates` (python -m deployments.work_pools)"
    )


ECS_POOLS = sorted(n for n, p in work_pools.POOLS.items() if p.type.startswith("ecs"))


@pytest.mark.parametrize("pool", ECS_POOLS)
def test_templates_are_valid_for_the_server_and_the_ecs_worker(pool: str) -> None:
    spec = work_pools.POOLS[pool]
    template = spec.load_template()
    WorkPoolCreate(name=spec.name, type=spec.type, base_job_template=template)  # server-side
    variables = set(template["variables"]["properties"])
    documented = set(ECSVariables.model_fields)
    extra = EXTRA_GPU_VARIABLES if spec.type == "ecs" else set()
    assert variables - documented == extra
    used = {p.name for p in find_placeholders(template["job_configuration"])}
    assert used <= variables, f"undeclared placeholders: {used - variables}"
    assert set(template["job_configuration"]) == set(ECSJobConfiguration.model_fields)


def _render(pool: str, deployment: str, defaults: dict[str, Any]) -> ECSJobConfiguration:
    values = {**defaults, **_job_variables(deployment)}
    return asyncio.run(
        ECSJobConfiguration.from_template_and_values(work_pools.POOLS[pool].load_template(), values)
    )


def _task_definition(pool: str, config: ECSJobConfiguration) -> dict[str, Any]:
    flow_run = FlowRun(id=uuid.uuid4(), name="s-1", flow_id=uuid.uuid4())
    config.prepare_for_flow_run(flow_run)
    worker = ECSWorker(work_pool_name=pool)
    taskdef = worker._prepare_task_definition(config, region="eu-west-1", flow_run=flow_run)
    worker._validate_task_definition(taskdef, config)
    return taskdef


def test_the_push_pool_runs_the_cpu_deployment_on_a_valid_fargate_task() -> None:
    # what `--provision-infra` stores as the pool's defaults
    provisioned = {
        "cluster": "prefect-ecs-cluster",
        "vpc_id": "vpc-0123456789abcdef0",
        "execution_role_arn": "arn:aws:iam::123456789012:role/PrefectEcsTaskExecutionRole",
    }
    config = _render("scanflow-cpu", "ecs-cpu", provisioned)
    assert config.task_run_request["launchType"] == "FARGATE"
    taskdef = _task_definition("scanflow-cpu", config)
    assert taskdef["requiresCompatibilities"] == ["FARGATE"]
    assert taskdef["networkMode"] == "awsvpc"
    cpu, memory = int(taskdef["cpu"]), int(taskdef["memory"])
    assert memory in work_pools.FARGATE_SIZES[cpu], (
        f"{cpu} CPU units cannot have {memory} MiB on Fargate"
    )
    container = taskdef["containerDefinitions"][0]
    assert container["image"] == "value-of-SCANFLOW_IMAGE"
    assert container["logConfiguration"]["logDriver"] == "awslogs"
    assert config.env["SCANFLOW_RESULTS_URI"] == "value-of-SCANFLOW_RESULTS_URI"
    assert (
        config.task_run_request["overrides"]["taskRoleArn"] == "value-of-SCANFLOW_CPU_TASK_ROLE_ARN"
    )
    assert taskdef["runtimePlatform"] == {
        "cpuArchitecture": "X86_64",
        "operatingSystemFamily": "LINUX",
    }
    push = work_pools.POOLS["scanflow-cpu"].load_template()
    assert push["variables"]["properties"]["launch_type"]["enum"] == ["FARGATE", "FARGATE_SPOT"]


def test_the_gpu_pool_asks_for_a_gpu_through_the_capacity_provider() -> None:
    config = _render("scanflow-gpu", "ecs-gpu", {})
    assert "launchType" not in config.task_run_request
    assert config.task_run_request["capacityProviderStrategy"] == [
        {"capacityProvider": "scanflow-gpu", "weight": 1, "base": 0}
    ]
    assert config.cluster == "value-of-SCANFLOW_GPU_CLUSTER"
    taskdef = _task_definition("scanflow-gpu", config)
    assert taskdef["requiresCompatibilities"] == ["EC2"]
    container = taskdef["containerDefinitions"][0]
    assert container["resourceRequirements"] == [{"type": "GPU", "value": "1"}]
    assert (container["cpu"], container["memory"]) == (4096, 14336)


def test_prefect_yaml_declares_the_three_deployments() -> None:
    deployments = _deployments()
    local = deployments["local"]  # the embedded default, unchanged
    assert local["entrypoint"] == "flows/process_scan.py:process_scan"
    assert local["work_pool"]["name"] == "process"

    for name, pool in (("ecs-cpu", "scanflow-cpu"), ("ecs-gpu", "scanflow-gpu")):
        d = deployments[name]
        spec = work_pools.POOLS[pool]
        assert d["work_pool"]["name"] == pool
        assert d["work_pool"]["work_queue_name"] == "uploads"
        assert d["pull"] == []  # the image has the code installed
        assert d["concurrency_limit"]["collision_strategy"] == "ENQUEUE"
        assert d["concurrency_limit"]["limit"] >= 1
        declared = set(spec.load_template()["variables"]["properties"])
        assert set(d["work_pool"]["job_variables"]) <= declared
        # the module-path entrypoint names the flow
        from prefect.flows import load_flow_from_entrypoint

        assert load_flow_from_entrypoint(d["entrypoint"]).name == "process-scan"
    queues = [q.name for q in sorted(work_pools.QUEUES, key=lambda q: q.priority)]
    assert queues == ["uploads", "reruns", "backfill"]


def test_the_gpu_stack_passes_cfn_lint_and_matches_the_pool_and_deployment() -> None:
    import subprocess
    import sys
    from pathlib import Path

    from cfnlint.decode import decode

    from scanflow.cli.production import required_env

    path = REPO_ROOT / "deployments" / "ecs-gpu" / "template.yaml"
    lint = subprocess.run(
        [str(Path(sys.executable).parent / "cfn-lint"), str(path)], capture_output=True, text=True
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    template, errors = decode(str(path))
    assert not errors and template is not None
    resources = template["Resources"]
    provider = resources["CapacityProvider"]["Properties"]
    assert provider["Name"] == work_pools.GPU_CAPACITY_PROVIDER
    assert provider["AutoScalingGroupProvider"]["ManagedScaling"]["Status"] == "ENABLED"
    assert resources["AutoScalingGroup"]["Properties"]["MinSize"] == "0"  # scales to zero
    gpu = work_pools.POOLS["scanflow-gpu"].load_template()["variables"]["properties"]
    assert resources["Cluster"]["Properties"]["ClusterName"] == "scanflow-gpu"
    worker_statements = resources["WorkerRole"]["Properties"]["Policies"][0]["PolicyDocument"]
    run_task = next(s for s in worker_statements["Statement"] if "ecs:RunTask" in s["Action"])
    family = gpu["family"]["default"]
    assert any(f"task-definition/{family}:*" in str(r) for r in run_task["Resource"])
    # each output names the variable `scanflow deploy ecs-gpu` needs from it
    described = {o.get("Description") for o in template["Outputs"].values()}
    stack_vars = {
        "SCANFLOW_GPU_CLUSTER",
        "SCANFLOW_EXECUTION_ROLE_ARN",
        "SCANFLOW_GPU_TASK_ROLE_ARN",
    }
    assert stack_vars <= described and stack_vars <= set(required_env("ecs-gpu"))


def test_production_deployments_wire_the_notification_path() -> None:
    from prefect.flows import load_flow_from_entrypoint

    deployments = _deployments()
    for name in ("ecs-cpu", "ecs-gpu"):
        env = deployments[name]["work_pool"]["job_variables"]["env"]
        # the hooks' fast path needs the platform's URL; the key comes from a Secret block
        assert env["SCANFLOW_PLATFORM_WEBHOOK_URL"] == "{{ $SCANFLOW_PLATFORM_WEBHOOK_URL }}"
        assert not any("SECRET" in k or "SLACK" in k for k in env)
    cloud, ecs = deployments["notify-cloud"], deployments["notify-ecs"]
    assert work_pools.POOLS[cloud["work_pool"]["name"]].type == "ecs:push"
    assert work_pools.POOLS[ecs["work_pool"]["name"]].type == "process"
    for d in (cloud, ecs):
        assert d["pull"] == []
        assert load_flow_from_entrypoint(d["entrypoint"]).name == "notify-outcome"
        assert d["work_pool"]["name"] not in {"scanflow-cpu", "scanflow-gpu"}
    # notify-cloud renders a valid Fargate task on its push pool, with no task role to pass
    provisioned = {
        "execution_role_arn": "arn:aws:iam::123456789012:role/PrefectEcsTaskExecutionRole"
    }
    config = _render("scanflow-notify-push", "notify-cloud", provisioned)
    taskdef = _task_definition("scanflow-notify-push", config)
    assert int(taskdef["memory"]) in work_pools.FARGATE_SIZES[int(taskdef["cpu"])]
    assert "taskRoleArn" not in config.task_run_request.get("overrides", {})
    assert config.env["SCANFLOW_PLATFORM_WEBHOOK_URL"] == "value-of-SCANFLOW_PLATFORM_WEBHOOK_URL"


def test_scan_deployments_keep_their_slot_through_a_cold_start() -> None:
    """A slot's lease is not renewed until the run's process starts: the grace covers a
    Fargate image pull (minutes) and a GPU instance launched from zero plus a CUDA image
    pull (up to ~15 minutes), not Prefect's default 300 s."""
    deployments = _deployments()
    assert deployments["ecs-cpu"]["concurrency_limit"]["grace_period_seconds"] >= 600
    assert deployments["ecs-gpu"]["concurrency_limit"]["grace_period_seconds"] >= 1200


def test_the_pools_order_by_priority_at_the_pool_level() -> None:
    for name in ("scanflow-cpu", "scanflow-gpu"):
        spec = work_pools.POOLS[name]
        limit = _deployments()["ecs-cpu" if name == "scanflow-cpu" else "ecs-gpu"]
        assert spec.concurrency_limit == limit["concurrency_limit"]["limit"]
    assert work_pools.pools_for(cloud=True) == [
        "scanflow-cpu",
        "scanflow-gpu",
        "scanflow-notify-push",
    ]
    assert work_pools.pools_for(cloud=False) == ["scanflow-gpu", "scanflow-notify"]


def test_the_gpu_stack_starts_workers_that_never_create_their_pool() -> None:
    from deployments.rehearsal import cfn

    stack = cfn.deploy(
        REPO_ROOT / "deployments" / "ecs-gpu" / "template.yaml",
        stack_name="scanflow-gpu",
        parameters={
            "VpcId": "vpc-1",
            "SubnetIds": "subnet-1,subnet-2",
            "UploadBucketName": "up",
            "ResultsBucketName": "res",
            "PrefectApiUrl": "https://api.prefect.cloud/api/accounts/a/workspaces/w",
            "PrefectApiKeySecretArn": "arn:aws:secretsmanager:eu-west-1:1:secret:k",
            "NotifyWorkerImage": "img:tag",
        },
        session=None,
    )
    commands = [
        c["Command"]
        for name in stack.of_type("AWS::ECS::TaskDefinition")
        for c in stack.properties[name]["ContainerDefinitions"]
    ]
    assert len(commands) == 2  # the ECS worker and (NotifyWorkerImage set) the notify worker
    for command in commands:
        assert command[:3] == ["prefect", "worker", "start"]
        assert "--no-create-pool-if-not-found" in command
    pools = {c[c.index("--pool") + 1]: c[c.index("--type") + 1] for c in commands}
    assert pools == {"scanflow-gpu": "ecs", "scanflow-notify": "process"}
    assert {p: work_pools.POOLS[p].type for p in pools} == pools
    metadata = stack.properties["LaunchTemplate"]["LaunchTemplateData"]["MetadataOptions"]
    assert metadata == {"HttpTokens": "required", "HttpPutResponseHopLimit": 1}
    worker = stack.properties["WorkerRole"]
    actions = {
        a
        for s in worker["Policies"][0]["PolicyDocument"]["Statement"]
        for a in (s["Action"] if isinstance(s["Action"], list) else [s["Action"]])
    }
    # what prefect-aws's own ECS worker service template grants its observer
    assert {"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility"} <= actions
    without_notify = cfn.deploy(
        REPO_ROOT / "deployments" / "ecs-gpu" / "template.yaml",
        stack_name="scanflow-gpu",
        parameters={
            "VpcId": "vpc-1",
            "SubnetIds": "subnet-1",
            "UploadBucketName": "up",
            "ResultsBucketName": "res",
            "PrefectApiUrl": "https://x/api",
            "PrefectApiKeySecretArn": "arn:k",
        },
        session=None,
    )
    assert without_notify.of_type("AWS::ECS::Service") == ["WorkerService"]
