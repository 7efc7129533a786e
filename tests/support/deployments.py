"""A process-scan deployment no worker serves, on the session's server: runs created for it
stay Scheduled unless a test sets their state (the CLI's submit, the reconciler)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from contextlib import contextmanager


async def _make(tag: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    async with get_client() as client:
        await client.create_work_pool(WorkPoolCreate(name=tag, type="process"))
        flow_id = await client.create_flow_from_name("process-scan")
        await client.create_deployment(
            flow_id=flow_id,
            name=tag,
            entrypoint="flows/process_scan.py:process_scan",
            work_pool_name=tag,
        )


async def _remove(tag: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    async with get_client() as client:
        deployment = await client.read_deployment_by_name(f"process-scan/{tag}")
        runs = await client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
        )
        for run in runs:
            await client.delete_flow_run(run.id)
        await client.delete_deployment(deployment.id)
        await client.delete_work_pool(tag)


@contextmanager
def unserved_deployment(prefix: str) -> Iterator[str]:
    """``process-scan/<prefix>-<random>``, removed with its runs afterwards."""
    tag = f"{prefix}-{uuid.uuid4().hex[:8]}"
    asyncio.run(_make(tag))
    try:
        yield f"process-scan/{tag}"
    finally:
        asyncio.run(_remove(tag))
