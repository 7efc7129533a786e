"""scanflow's production work pools: their base job templates and their work queues.

Four pools; ``prefect.yaml`` has the deployments on them:

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
- ``scanflow-notify-push`` (Prefect Cloud, ``ecs:push``) or ``scanflow-notify`` (self-hosted,
  ``process``, served by the always-on worker of ``deployments/ecs-gpu/template.yaml``):
  where ``notify-outcome`` runs in production, apart from the scans so that a full scan
  pool never holds back the news of one.

The scan pools get the same work queues and a pool-level concurrency limit: the server
hands a freed slot to the highest-priority queue that has a run waiting (lower number
first), so fresh uploads go before re-runs and backfills; and the backfill queue may hold
at most three quarters of the slots, so an upload that arrives during a backfill of
thousands of scans starts at once instead of at the next freed slot. (A deployment's own concurrency
limit does not order anything: with ``ENQUEUE`` a refused run retries 30 s later and the
slot goes to whoever asks first; docs/production.md has the measurement.)

Every image is built for linux/amd64 and every task definition says so
(``runtimePlatform``): an image built on an ARM laptop then fails at once, by name, instead
of with "exec format error" in a container log.

The templates are files under ``deployments/work-pools/`` (what ``prefect work-pool create
--base-job-template`` takes), generated from prefect-aws's own ECS template plus the changes
below; ``python -m deployments.work_pools`` rewrites them and a test fails if they drift.
"""

from __future__ import annotations

import copy
import difflib
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
    # At most this share of the pool's slots (rounded down, at least 1): a queue that may
    # not fill the pool leaves the queues above it a slot free at all times.
    pool_share: float | None = None

    def limit(self, pool_limit: int | None) -> int | None:
        if self.pool_share is None or pool_limit is None:
            return None
        return max(1, int(pool_limit * self.pool_share))


@dataclass(frozen=True)
class PoolSpec:
    name: str
    type: str
    description: str
    concurrency_limit: int | None
    queues: tuple[QueueSpec, ...]
    template_file: str | None = None  # None: the worker type's own default template
    cloud_only: bool = False
    # Prefect Cloud only: the pool whose provisioned defaults (credentials, cluster, network,
    # execution role) a new push pool takes, instead of provisioning everything again.
    site_defaults_from: str | None = None
    # Where it belongs: Prefect Cloud, a self-hosted server, or both.
    on_cloud: bool = True
    self_hosted: bool = True
    # How long a run may wait in Pending for its infrastructure: a deployment with a
    # concurrency limit on this pool needs at least this grace on its slot (its lease is
    # not renewed until the run's process starts; Prefect's default is 300 s).
    min_slot_grace_s: int = 300

    @property
    def template_path(self) -> Path | None:
        return TEMPLATES_DIR / self.template_file if self.template_file else None

    def load_template(self) -> dict[str, Any]:
        if self.template_file is None:
            return _default_template(self.type)
        return dict(json.loads((TEMPLATES_DIR / self.template_file).read_text()))


QUEUES = (
    QueueSpec("uploads", 1, "Fresh uploads from the S3 trigger: served first."),
    QueueSpec("reruns", 2, "Re-processing requested by a person (a new model, a bug fix)."),
    QueueSpec(
        "backfill",
        3,
        "Bulk re-processing of old scans and shadow runs: served last, never in every slot.",
        pool_share=0.75,
    ),
)
NOTIFY_QUEUES = (QueueSpec("default", 1, "Outcome deliveries (notify-outcome)."),)

GPU_CAPACITY_PROVIDER = "scanflow-gpu"
# AWS Fargate's valid task sizes: CPU units -> the memory (MiB) each allows.
FARGATE_SIZES: dict[int, set[int]] = {
    256: {512, 1024, 2048},
    512: set(range(1024, 4097, 1024)),
    1024: set(range(2048, 8193, 1024)),
    2048: set(range(4096, 16385, 1024)),
    4096: set(range(8192, 30721, 1024)),
    8192: set(range(16384, 61441, 4096)),
    16384: set(range(32768, 122881, 8192)),
}
# Image architecture: every task definition pins it (see the module docstring).
RUNTIME_PLATFORM = {"cpuArchitecture": "X86_64", "operatingSystemFamily": "LINUX"}

POOLS: dict[str, PoolSpec] = {
    "scanflow-cpu": PoolSpec(
        name="scanflow-cpu",
        type="ecs:push",
        template_file="ecs-push.json",
        description="process-scan on Fargate (CPU), one task per run, pushed by Prefect Cloud.",
        concurrency_limit=20,  # pool-level: a freed slot goes to the highest-priority queue
        queues=QUEUES,
        cloud_only=True,
        min_slot_grace_s=600,  # a Fargate task pulling a ~400 MB image: 1-3 minutes
    ),
    "scanflow-gpu": PoolSpec(
        name="scanflow-gpu",
        type="ecs",
        template_file="ecs-gpu.json",
        description="process-scan on EC2 GPU instances through an ECS capacity provider.",
        concurrency_limit=8,  # at most the Auto Scaling group's maximum size
        queues=QUEUES,
        min_slot_grace_s=1200,  # an instance from zero (3-5 min) and a CUDA image (5-10 min)
    ),
    "scanflow-notify-push": PoolSpec(
        name="scanflow-notify-push",
        type="ecs:push",
        template_file="ecs-push.json",
        description="notify-outcome on Fargate, pushed by Prefect Cloud: no worker to keep.",
        concurrency_limit=None,
        queues=NOTIFY_QUEUES,
        cloud_only=True,
        site_defaults_from="scanflow-cpu",
    ),
    "scanflow-notify": PoolSpec(
        name="scanflow-notify",
        type="process",
        description="notify-outcome on the always-on notify worker (self-hosted server).",
        concurrency_limit=4,
        queues=NOTIFY_QUEUES,
        on_cloud=False,  # Prefect Cloud runs notify-outcome on scanflow-notify-push
    ),
}


def pools_for(cloud: bool) -> list[str]:
    """The pools a workspace needs: Prefect Cloud's, or a self-hosted server's."""
    return [
        name
        for name, spec in POOLS.items()
        if (spec.on_cloud if cloud else spec.self_hosted and not spec.cloud_only)
    ]


# Variables whose defaults belong to the workspace, not to the repository: what
# --provision-infra stores (cluster, network, execution role, AWS credentials) and the
# Prefect credential's secret that `scanflow pools apply --credential-secret-arn` sets.
SITE_VARIABLES = frozenset(
    {
        "aws_credentials",
        "cluster",
        "vpc_id",
        "network_configuration",
        "execution_role_arn",
        "prefect_api_key_secret_arn",
        "prefect_api_auth_string_secret_arn",
    }
)


def _default_template(worker_type: str) -> dict[str, Any]:
    if worker_type == "process":
        from prefect.workers.process import ProcessWorker

        return copy.deepcopy(ProcessWorker.get_default_base_job_template())
    raise ValueError(f"no template file and no default template for {worker_type!r} pools")


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
    taskdef = template["job_configuration"]["task_definition"]
    taskdef["runtimePlatform"] = dict(RUNTIME_PLATFORM)


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


# -- comparing and applying a pool ---------------------------------------------------------


def without_site_defaults(template: dict[str, Any]) -> dict[str, Any]:
    """The template with the workspace's own defaults (SITE_VARIABLES) taken out."""
    out = copy.deepcopy(template)
    props = out.get("variables", {}).get("properties", {})
    for name in SITE_VARIABLES & props.keys():
        props[name].pop("default", None)
    return out


def template_diff(current: dict[str, Any], wanted: dict[str, Any], *, name: str) -> list[str]:
    """A unified diff of two base job templates, ignoring the workspace's own defaults;
    empty when they agree."""

    def lines(template: dict[str, Any]) -> list[str]:
        return json.dumps(without_site_defaults(template), indent=2, sort_keys=True).splitlines()

    return list(
        difflib.unified_diff(
            lines(current), lines(wanted), f"{name} (server)", f"{name} (repository)", lineterm=""
        )
    )


def credential_variable(cloud: bool) -> str:
    """The job variable that carries the Prefect credential's secret: an API key on
    Prefect Cloud, an auth string on a self-hosted server."""
    return "prefect_api_key_secret_arn" if cloud else "prefect_api_auth_string_secret_arn"


def with_site_defaults(
    wanted: dict[str, Any],
    current: dict[str, Any] | None,
    credential: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """``wanted`` carrying the workspace's defaults from ``current`` (and the credential)."""
    out = copy.deepcopy(wanted)
    props = out.get("variables", {}).get("properties", {})
    old = (current or {}).get("variables", {}).get("properties", {})
    for name in SITE_VARIABLES & props.keys() & old.keys():
        if "default" in old[name]:
            props[name]["default"] = old[name]["default"]
    if credential is not None:
        variable, arn = credential
        props[variable]["default"] = arn
    return out


if __name__ == "__main__":
    for written in write_templates():
        print(written, file=sys.stderr)
