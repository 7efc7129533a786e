"""scanflow's production work pools: their base job templates and their work queues.

Two pools run ``process-scan`` on AWS ECS (``prefect.yaml`` has one deployment on each):

- ``scanflow-cpu``, type ``ecs:push`` (Prefect Cloud only): Prefect Cloud starts every flow
  run as its own Fargate task, so CPU capacity follows the queue down to zero. Create it
  with ``prefect work-pool create scanflow-cpu --type ecs:push --provision-infra
  --base-job-template deployments/work-pools/ecs-push.json``: the provisioner fills in the
  cluster, VPC, execution role and credentials block as the template's defaults.
- ``scanflow-gpu``, type ``ecs`` (a hybrid pool: our ECS worker submits the tasks): GPU
  tasks on an EC2 capacity provider whose Auto Scaling group scales 0..N. The template
  leaves the launch type out so the capacity provider strategy places the task, asks for
  GPUs through the container's ``resourceRequirements`` (the ECS worker has no field for
  them) and marks the task definition EC2-only.

Each pool gets the same work queues; a lower priority number is served first, so fresh
uploads go before re-runs and backfills when the pool is at its concurrency limit.

The templates are files under ``deployments/work-pools/`` (what ``prefect work-pool create
--base-job-template`` takes), generated from prefect-aws's own ECS template plus the changes
below; ``python -m deployments.work_pools`` rewrites them and a test fails if they drift.
"""

from __future__ import annotations

import copy
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TEMPLATES_DIR = Path(__file__).resolve().parent / "work-pools"


@dataclass(frozen=True)
class QueueSpec:
    name: str
    priority: int
    description: str


@dataclass(frozen=True)
class PoolSpec:
    name: str
    type: str
    template_file: str
    description: str
    concurrency_limit: int | None
    queues: tuple[QueueSpec, ...]
    cloud_only: bool = False

    @property
    def template_path(self) -> Path:
        return TEMPLATES_DIR / self.template_file

    def load_template(self) -> dict[str, Any]:
        return dict(json.loads(self.template_path.read_text()))


QUEUES = (
    QueueSpec("uploads", 1, "Fresh uploads from the S3 trigger: served first."),
    QueueSpec("reruns", 2, "Re-processing requested by a person (a new model, a bug fix)."),
    QueueSpec("backfill", 3, "Bulk re-processing of old scans: served last."),
)

GPU_CAPACITY_PROVIDER = "scanflow-gpu"

POOLS: dict[str, PoolSpec] = {
    "scanflow-cpu": PoolSpec(
        name="scanflow-cpu",
        type="ecs:push",
        template_file="ecs-push.json",
        description="process-scan on Fargate (CPU), one task per run, pushed by Prefect Cloud.",
        concurrency_limit=None,  # bounded by the deployment's concurrency limit
        queues=QUEUES,
        cloud_only=True,
    ),
    "scanflow-gpu": PoolSpec(
        name="scanflow-gpu",
        type="ecs",
        template_file="ecs-gpu.json",
        description="process-scan on EC2 GPU instances through an ECS capacity provider.",
        concurrency_limit=8,  # at most the Auto Scaling group's maximum size
        queues=QUEUES,
    ),
}


# -- the templates -------------------------------------------------------------------------


def _ecs_default_template() -> dict[str, Any]:
    from prefect_aws.workers.ecs_worker import ECSWorker

    return copy.deepcopy(ECSWorker.get_default_base_job_template())


def _common(template: dict[str, Any], *, family: str, cpu: int, memory: int) -> None:
    props = template["variables"]["properties"]
    props["image"]["description"] = (
        "The scanflow image (built from the repository's Dockerfile and pushed to ECR). "
        "Set per deployment in prefect.yaml."
    )
    props["family"]["default"] = family
    props["cpu"]["default"] = cpu
    props["memory"]["default"] = memory
    # Runs write their logs to CloudWatch too: what a crashed container printed stays.
    props["configure_cloudwatch_logs"]["default"] = True
    props["cloudwatch_logs_prefix"]["default"] = family
    props["env"]["default"] = {"PYTHONUNBUFFERED": "1"}


def ecs_push_template() -> dict[str, Any]:
    """Fargate only: push pools run nothing else."""
    template = _ecs_default_template()
    _common(template, family="scanflow-cpu", cpu=2048, memory=8192)
    props = template["variables"]["properties"]
    props["launch_type"]["enum"] = ["FARGATE", "FARGATE_SPOT"]
    props["launch_type"]["default"] = "FARGATE"
    return template


def ecs_gpu_template() -> dict[str, Any]:
    """EC2 GPU capacity through a capacity provider; no launch type."""
    template = _ecs_default_template()
    _common(template, family="scanflow-gpu", cpu=4096, memory=14336)
    props = template["variables"]["properties"]
    job = template["job_configuration"]

    # Without a launch type, RunTask uses the capacity provider strategy: the provider's
    # managed scaling grows the Auto Scaling group from zero when tasks wait for a GPU.
    del props["launch_type"]
    del job["task_run_request"]["launchType"]
    props["capacity_provider_strategy"]["default"] = [
        {"capacityProvider": GPU_CAPACITY_PROVIDER, "weight": 1, "base": 0}
    ]
    props["gpu_count"] = {
        "title": "GPUs",
        "type": "string",  # ECS's resourceRequirements value is a string
        "pattern": "^[1-8]$",
        "default": "1",
        "description": "GPUs reserved for the flow's container (resourceRequirements).",
    }
    taskdef = job["task_definition"]
    taskdef["requiresCompatibilities"] = ["EC2"]
    taskdef["networkMode"] = "bridge"  # no per-task ENI: no subnets to pass, no ENI limits
    container = taskdef["containerDefinitions"][0]
    container["resourceRequirements"] = [{"type": "GPU", "value": "{{ gpu_count }}"}]
    return template


BUILDERS = {"ecs-push.json": ecs_push_template, "ecs-gpu.json": ecs_gpu_template}


def render(builder_name: str) -> str:
    return json.dumps(BUILDERS[builder_name](), indent=2, sort_keys=True) + "\n"


def write_templates() -> list[Path]:
    TEMPLATES_DIR.mkdir(parents=True, exist_ok=True)
    written = []
    for name in BUILDERS:
        path = TEMPLATES_DIR / name
        path.write_text(render(name))
        written.append(path)
    return written


# -- applying a pool to a Prefect API ------------------------------------------------------


async def apply_pool(name: str, *, replace_template: bool = False) -> dict[str, Any]:
    """Create the pool (or update it) and its queues on the API PREFECT_API_URL names.

    An existing pool keeps its base job template unless ``replace_template``: the ECS
    provisioner stores the cluster, VPC and role it created as the template's defaults.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL

    spec = POOLS[name]
    api_url = PREFECT_API_URL.value() or ""
    if spec.cloud_only and "api.prefect.cloud" not in api_url:
        raise RuntimeError(
            f"{spec.name} is an {spec.type} pool, which exists only on Prefect Cloud "
            f"(PREFECT_API_URL is {api_url or 'unset'})."
        )
    template = spec.load_template()
    async with get_client() as client:
        try:
            pool = await client.read_work_pool(spec.name)
        except ObjectNotFound:
            await client.create_work_pool(
                WorkPoolCreate(
                    name=spec.name,
                    type=spec.type,
                    description=spec.description,
                    base_job_template=template,
                    concurrency_limit=spec.concurrency_limit,
                )
            )
            action = "created"
        else:
            if pool.type != spec.type:
                raise RuntimeError(
                    f"work pool {spec.name} exists with type {pool.type!r}, not {spec.type!r}."
                )
            update = WorkPoolUpdate(
                description=spec.description, concurrency_limit=spec.concurrency_limit
            )
            if replace_template:
                update.base_job_template = template
            await client.update_work_pool(spec.name, update)
            action = "updated"
        for queue in spec.queues:  # in priority order: each takes its slot, others shift
            try:
                existing = await client.read_work_queue_by_name(
                    queue.name, work_pool_name=spec.name
                )
            except ObjectNotFound:
                await client.create_work_queue(
                    queue.name,
                    description=queue.description,
                    work_pool_name=spec.name,
                    priority=queue.priority,
                )
            else:
                await client.update_work_queue(
                    existing.id, priority=queue.priority, description=queue.description
                )
    return {"pool": spec.name, "type": spec.type, "action": action}


if __name__ == "__main__":
    for written in write_templates():
        print(written, file=sys.stderr)
