"""Applying scanflow's work pools to a Prefect API (``scanflow pools apply``): each pool with
its type, concurrency limit and queues, and the repository's base job template on a new pool
(an existing one keeps its own unless told, and says how it differs)."""

from __future__ import annotations

from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL

from deployments.work_pools import (
    POOLS,
    PoolSpec,
    credential_variable,
    template_diff,
    with_site_defaults,
)


async def _provisioned(client: Any, spec: PoolSpec) -> dict[str, Any]:
    """The template of the provisioned pool a new push pool takes its defaults from."""

    provision = (
        f"prefect work-pool create {spec.name} --type {spec.type} --provision-infra "
        f"--base-job-template {spec.template_path}"
    )
    if spec.site_defaults_from is None:
        raise RuntimeError(f"{spec.name} does not exist: create it first ({provision}).")
    try:
        source = await client.read_work_pool(spec.site_defaults_from)
    except ObjectNotFound:
        raise RuntimeError(
            f"{spec.name} takes its AWS defaults from {spec.site_defaults_from}, which does "
            f"not exist: create that one first (prefect work-pool create "
            f"{spec.site_defaults_from} --type {spec.type} --provision-infra ...)."
        ) from None
    return dict(source.base_job_template)


async def apply_pool(
    name: str,
    *,
    cloud: bool,
    replace_template: bool = False,
    credential_secret_arn: str | None = None,
) -> dict[str, Any]:
    """Create the pool (or update it) and its queues on the API PREFECT_API_URL names.

    An existing pool keeps its base job template unless ``replace_template``: the answer's
    ``template_diff`` says how it differs from the repository's (the workspace's own
    defaults aside, which a replacement keeps). ``credential_secret_arn`` (ECS pools) is
    the Secrets Manager secret holding the Prefect credential: the worker then passes it to
    flow-run containers as an ECS secret instead of copying the credential into RunTask.
    """

    spec = POOLS[name]
    if spec.cloud_only and not cloud:
        raise RuntimeError(
            f"{spec.name} is an {spec.type} pool, which exists only on Prefect Cloud "
            f"(PREFECT_API_URL is {PREFECT_API_URL.value() or 'unset'})."
        )
    if credential_secret_arn and spec.type != "ecs":
        raise RuntimeError(f"--credential-secret-arn is for ecs pools; {spec.name} is {spec.type}")
    credential = (
        (credential_variable(cloud), credential_secret_arn) if credential_secret_arn else None
    )
    wanted = spec.load_template()
    diff: list[str] = []
    async with get_client() as client:
        try:
            pool = await client.read_work_pool(spec.name)
        except ObjectNotFound:
            site: dict[str, Any] | None = None
            if spec.type.endswith(":push"):
                site = await _provisioned(client, spec)
            await client.create_work_pool(
                WorkPoolCreate(
                    name=spec.name,
                    type=spec.type,
                    description=spec.description,
                    base_job_template=with_site_defaults(wanted, site, credential),
                    concurrency_limit=spec.concurrency_limit,
                )
            )
            action, template = "created", "the repository's"
        else:
            if pool.type != spec.type:
                raise RuntimeError(
                    f"work pool {spec.name} exists with type {pool.type!r}, not {spec.type!r}."
                )
            update = WorkPoolUpdate(
                description=spec.description, concurrency_limit=spec.concurrency_limit
            )
            current = pool.base_job_template
            diff = template_diff(current, wanted, name=spec.name)
            if replace_template or credential_secret_arn:
                base = wanted if replace_template else current
                update.base_job_template = with_site_defaults(base, current, credential)
            if diff and replace_template:
                template = "replaced (the workspace's own defaults kept)"
            elif diff:
                template = "DIFFERS from the repository's (kept; --replace-template replaces it)"
            else:
                template = "the repository's"
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
                    concurrency_limit=queue.limit(spec.concurrency_limit),
                )
            else:
                await client.update_work_queue(
                    existing.id,
                    priority=queue.priority,
                    description=queue.description,
                    concurrency_limit=queue.limit(spec.concurrency_limit),
                )
    return {
        "pool": spec.name,
        "type": spec.type,
        "action": action,
        "template": template,
        "template_diff": diff if not replace_template else [],
    }
