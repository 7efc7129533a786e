"""``apply_pool`` (deployments/pool_api.py) against the session's real Prefect server, with
the repository's real pool specs under names of this module's own (POOLS, the registry of
pool specs, gets copies renamed with dataclasses.replace: configuration, not the code under
test). The open-source server takes an ``ecs:push`` pool through its API, which stands in
for the provisioned Prefect Cloud pool a push pool takes its AWS defaults from. Every pool
created here is deleted afterwards."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate

from deployments import work_pools
from deployments.pool_api import apply_pool

pytestmark = pytest.mark.integration

PROVISIONED = {  # what --provision-infra stores as a push pool's defaults
    "cluster": "prefect-ecs-cluster",
    "vpc_id": "vpc-0123456789abcdef0",
    "execution_role_arn": "arn:aws:iam::123456789012:role/PrefectEcsTaskExecutionRole",
}


@pytest.fixture
def pools(prefect_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """Renamed copies of the repository's pools, registered in POOLS; deleted afterwards."""
    tag = uuid.uuid4().hex[:8]
    names = {base: f"{base}-{tag}" for base in work_pools.POOLS}
    for base, name in names.items():
        spec = work_pools.POOLS[base]
        source = spec.site_defaults_from
        renamed = dataclasses.replace(
            spec, name=name, site_defaults_from=names[source] if source else None
        )
        monkeypatch.setitem(work_pools.POOLS, name, renamed)
    yield names
    asyncio.run(_delete(list(names.values())))


async def _delete(names: list[str]) -> None:
    async with get_client() as client:
        for pool in await client.read_work_pools():
            if pool.name in names:
                await client.delete_work_pool(pool.name)


async def _read(name: str) -> tuple[Any, list[tuple[str, int, str | None]]]:
    async with get_client() as client:
        pool = await client.read_work_pool(name)
        queues = await client.read_work_queues(work_pool_name=name)
    order = sorted((q.priority, q.name, q.description) for q in queues)
    return pool, [(n, p, d) for p, n, d in order]


async def _limits(name: str) -> dict[str, int | None]:
    async with get_client() as client:
        return {q.name: q.concurrency_limit for q in await client.read_work_queues(name)}


async def _create(name: str, kind: str, template: dict[str, Any]) -> None:
    async with get_client() as client:
        await client.create_work_pool(
            WorkPoolCreate(name=name, type=kind, base_job_template=template)
        )


def _defaults(template: dict[str, Any]) -> dict[str, Any]:
    props = template["variables"]["properties"]
    return {k: v["default"] for k, v in props.items() if "default" in v}


def test_a_new_gpu_pool_gets_the_repositorys_template_queues_and_limit(
    pools: dict[str, str],
) -> None:
    name = pools["scanflow-gpu"]
    result = asyncio.run(apply_pool(name, cloud=False))
    assert result == {
        "pool": name,
        "type": "ecs",
        "action": "created",
        "template": "the repository's",
        "template_diff": [],
    }
    pool, queues = asyncio.run(_read(name))
    assert pool.type == "ecs" and pool.concurrency_limit == 8
    assert pool.base_job_template == work_pools.POOLS["scanflow-gpu"].load_template()
    assert pool.description == work_pools.POOLS["scanflow-gpu"].description
    # in priority order; the server's own "default" queue is served after them
    assert [(n, p) for n, p, _ in queues[:3]] == [("uploads", 1), ("reruns", 2), ("backfill", 3)]
    limits = asyncio.run(_limits(name))
    assert limits["backfill"] == 6 and limits["uploads"] is None  # 3/4 of 8: uploads keep 2
    assert queues[0][2] == "Fresh uploads from the S3 trigger: served first."

    again = asyncio.run(apply_pool(name, cloud=False))
    assert (again["action"], again["template"], again["template_diff"]) == (
        "updated",
        "the repository's",
        [],
    )
    assert asyncio.run(_read(name))[1] == queues  # no queue added, none reordered


def test_a_new_notify_pool_is_a_process_pool_with_its_one_queue(pools: dict[str, str]) -> None:
    name = pools["scanflow-notify"]
    result = asyncio.run(apply_pool(name, cloud=False))
    assert (result["type"], result["action"]) == ("process", "created")
    pool, queues = asyncio.run(_read(name))
    assert pool.type == "process" and pool.concurrency_limit == 4
    from prefect.workers.process import ProcessWorker

    assert pool.base_job_template == ProcessWorker.get_default_base_job_template()
    assert queues == [("default", 1, "Outcome deliveries (notify-outcome).")]
    with pytest.raises(RuntimeError, match="--credential-secret-arn is for ecs pools"):
        asyncio.run(apply_pool(name, cloud=False, credential_secret_arn="arn:x"))


def test_an_existing_pool_keeps_its_template_and_says_how_it_differs(
    pools: dict[str, str],
) -> None:
    name = pools["scanflow-gpu"]
    wanted = work_pools.POOLS["scanflow-gpu"].load_template()
    theirs = copy.deepcopy(wanted)
    props = theirs["variables"]["properties"]
    props["cpu"]["default"] = 1024  # someone changed it in the UI
    props["cluster"]["default"] = "their-cluster"  # the workspace's own: not a difference
    props["prefect_api_auth_string_secret_arn"]["default"] = "arn:aws:secret:theirs"
    asyncio.run(_create(name, "ecs", theirs))

    kept = asyncio.run(apply_pool(name, cloud=False))
    assert kept["action"] == "updated"
    assert kept["template"].startswith("DIFFERS from the repository's (kept;")
    diff = kept["template_diff"]
    assert diff[:2] == [f"--- {name} (server)", f"+++ {name} (repository)"]
    changed = [line for line in diff[2:] if line[:1] in "+-" and not line.startswith("@@")]
    assert changed == ['-        "default": 1024,', '+        "default": 4096,']
    pool, queues = asyncio.run(_read(name))
    assert pool.base_job_template == theirs  # kept
    assert pool.concurrency_limit == 8 and [q[0] for q in queues[:3]] == [
        "uploads",
        "reruns",
        "backfill",
    ]

    replaced = asyncio.run(apply_pool(name, cloud=False, replace_template=True))
    assert replaced["template"] == "replaced (the workspace's own defaults kept)"
    assert replaced["template_diff"] == []
    pool, _ = asyncio.run(_read(name))
    defaults = _defaults(pool.base_job_template)
    assert defaults["cpu"] == 4096
    assert defaults["cluster"] == "their-cluster"
    assert defaults["prefect_api_auth_string_secret_arn"] == "arn:aws:secret:theirs"
    assert work_pools.template_diff(pool.base_job_template, wanted, name=name) == []


def test_the_credential_secret_goes_to_the_platforms_variable(pools: dict[str, str]) -> None:
    name = pools["scanflow-gpu"]
    asyncio.run(apply_pool(name, cloud=False, credential_secret_arn="arn:aws:secret:auth"))
    pool, _ = asyncio.run(_read(name))
    defaults = _defaults(pool.base_job_template)
    assert defaults["prefect_api_auth_string_secret_arn"] == "arn:aws:secret:auth"
    assert defaults.get("prefect_api_key_secret_arn") is None  # a self-hosted server: no key

    # an existing pool (here: one whose cpu someone changed) gets the credential and keeps
    # the rest of its own template
    template = copy.deepcopy(pool.base_job_template)
    template["variables"]["properties"]["cpu"]["default"] = 2048
    asyncio.run(_delete([name]))
    asyncio.run(_create(name, "ecs", template))
    result = asyncio.run(apply_pool(name, cloud=True, credential_secret_arn="arn:aws:secret:key"))
    assert result["template"].startswith("DIFFERS")
    pool, _ = asyncio.run(_read(name))
    defaults = _defaults(pool.base_job_template)
    assert defaults["prefect_api_key_secret_arn"] == "arn:aws:secret:key"  # Prefect Cloud's
    assert defaults["prefect_api_auth_string_secret_arn"] == "arn:aws:secret:auth"
    assert defaults["cpu"] == 2048


def test_cloud_only_pools_are_refused_off_prefect_cloud(pools: dict[str, str]) -> None:
    for base in ("scanflow-cpu", "scanflow-notify-push"):
        with pytest.raises(RuntimeError) as err:
            asyncio.run(apply_pool(pools[base], cloud=False))
        message = str(err.value)
        assert f"{pools[base]} is an ecs:push pool, which exists only on Prefect Cloud" in message
        assert "(PREFECT_API_URL is http://127.0.0.1:" in message
    assert not [p for p in asyncio.run(_names()) if p in pools.values()]


async def _names() -> list[str]:
    async with get_client() as client:
        return [p.name for p in await client.read_work_pools()]


def test_a_push_pool_takes_its_aws_defaults_from_the_provisioned_one(
    pools: dict[str, str],
) -> None:
    cpu, notify = pools["scanflow-cpu"], pools["scanflow-notify-push"]
    with pytest.raises(RuntimeError) as err:
        asyncio.run(apply_pool(notify, cloud=True))
    assert f"{notify} takes its AWS defaults from {cpu}, which does not exist" in str(err.value)
    assert f"prefect work-pool create {cpu} --type ecs:push --provision-infra" in str(err.value)
    with pytest.raises(RuntimeError) as err:
        asyncio.run(apply_pool(cpu, cloud=True))  # the provisioned one is made by Prefect
    assert f"{cpu} does not exist: create it first (prefect work-pool create {cpu}" in str(
        err.value
    )
    assert "--base-job-template" in str(err.value) and "ecs-push.json" in str(err.value)

    # what `prefect work-pool create --provision-infra` leaves: the template, with defaults
    provisioned = work_pools.POOLS["scanflow-cpu"].load_template()
    for variable, value in PROVISIONED.items():
        provisioned["variables"]["properties"][variable]["default"] = value
    asyncio.run(_create(cpu, "ecs:push", provisioned))

    result = asyncio.run(apply_pool(notify, cloud=True))
    assert (result["type"], result["action"]) == ("ecs:push", "created")
    pool, queues = asyncio.run(_read(notify))
    assert pool.type == "ecs:push" and pool.concurrency_limit is None
    defaults = _defaults(pool.base_job_template)
    assert {k: defaults[k] for k in PROVISIONED} == PROVISIONED
    # the rest is the repository's template, not a copy of the CPU pool's
    repository = work_pools.POOLS["scanflow-notify-push"].load_template()
    assert work_pools.template_diff(pool.base_job_template, repository, name=notify) == []
    assert [q[0] for q in queues] == ["default"]


def test_a_pool_of_another_type_is_not_touched(pools: dict[str, str]) -> None:
    name = pools["scanflow-gpu"]
    asyncio.run(_create(name, "process", {}))
    with pytest.raises(
        RuntimeError, match=f"work pool {name} exists with type 'process', not 'ecs'"
    ):
        asyncio.run(apply_pool(name, cloud=False))
    pool, queues = asyncio.run(_read(name))
    assert pool.type == "process" and [q[0] for q in queues] == ["default"]
