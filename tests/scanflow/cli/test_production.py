"""The production commands (scanflow/cli/production.py) run in-process through
``scanflow.cli.main.main``: ``deploy`` refusing before it runs anything, ``automations
show``, ``pools templates`` into a folder of the test's own, and, against the session's
real Prefect server, ``secrets set`` (Secret blocks of the test's own names) and ``pools
apply`` (the repository's pool specs renamed for the test; they are deleted afterwards).
``scanflow deploy`` applying prefect.yaml is run in tests/deployments/test_ecs.py."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from deployments import work_pools
from scanflow.cli.main import main

GPU_ENV = {
    "SCANFLOW_IMAGE": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/scanflow:test",
    "SCANFLOW_GPU_CLUSTER": "scanflow-gpu",
    "SCANFLOW_EXECUTION_ROLE_ARN": "arn:aws:iam::123456789012:role/scanflow-execution",
    "SCANFLOW_GPU_TASK_ROLE_ARN": "arn:aws:iam::123456789012:role/scanflow-task",
    "SCANFLOW_INPUT_ROOTS": "s3://uploads/patients/",
    "SCANFLOW_PLATFORM_WEBHOOK_URL": "http://127.0.0.1:9/scanflow/events",
}


def test_scanflow_deploy_refuses_while_a_variable_it_reads_is_unset(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in GPU_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("SCANFLOW_RESULTS_URI", raising=False)
    assert main(["deploy", "ecs-gpu"]) == 2
    err = capsys.readouterr().err
    assert "scanflow deploy: set SCANFLOW_RESULTS_URI first" in err
    assert "they would be stored as text" in err


def test_deploy_names_every_unset_variable_of_every_deployment_once(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in {*GPU_ENV, "SCANFLOW_RESULTS_URI", "SCANFLOW_CPU_TASK_ROLE_ARN"}:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SCANFLOW_IMAGE", "img:1")
    monkeypatch.setenv("SCANFLOW_RESULTS_URI", "")  # empty is unset: it would be stored so
    assert main(["deploy", "ecs-cpu", "notify-cloud"]) == 2
    err = capsys.readouterr().err
    assert (
        "set SCANFLOW_CPU_TASK_ROLE_ARN, SCANFLOW_INPUT_ROOTS, SCANFLOW_PLATFORM_WEBHOOK_URL, "
        "SCANFLOW_RESULTS_URI first" in err
    )
    assert "SCANFLOW_IMAGE" not in err and "SCANFLOW_GPU_CLUSTER" not in err


def test_deploy_of_an_unknown_deployment_names_the_ones_there_are(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["deploy", "ecs-tpu"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("scanflow deploy: prefect.yaml has no deployment 'ecs-tpu'; it has [")
    assert "'ecs-gpu'" in err


def test_automations_show_prints_the_definitions_as_json(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SCANFLOW_PENDING_AFTER_S", "45")
    monkeypatch.setenv("SCANFLOW_CRASH_RETRIES", "1")
    assert main(["automations", "show"]) == 0
    shown = json.loads(capsys.readouterr().out)
    names = [a["name"] for a in shown]
    assert len(names) == 8 and names[-1] == "scanflow: crashed scan retried"
    assert all(a["tags"] == ["scanflow-managed"] for a in shown)
    pending = next(a for a in shown if a["name"] == "scanflow: scan waiting for capacity")
    assert pending["trigger"]["within"] == 45.0
    completed = next(a for a in shown if a["name"] == "scanflow: scan completed")
    (action,) = completed["actions"]
    assert action["type"] == "run-deployment"
    # no server asked: the notify deployment's id is a placeholder
    assert action["deployment_id"] == str(uuid.UUID(int=0))
    monkeypatch.setenv("SCANFLOW_CRASH_RETRIES", "0")
    assert main(["automations", "show"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 7


def test_pools_templates_writes_what_the_repository_has(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    repository = work_pools.TEMPLATES_DIR
    monkeypatch.setattr(work_pools, "TEMPLATES_DIR", tmp_path / "work-pools")
    assert main(["pools", "templates"]) == 0
    written = [Path(line) for line in capsys.readouterr().out.split()]
    assert sorted(p.name for p in written) == ["ecs-gpu.json", "ecs-push.json"]
    for path in written:
        assert path.parent == tmp_path / "work-pools"
        # up to date: nothing would change in the repository
        assert path.read_bytes() == (repository / path.name).read_bytes()


# -- against the session's server ----------------------------------------------------------


async def _delete_blocks(names: list[str]) -> None:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    async with get_client() as client:
        for name in names:
            try:
                block = await client.read_block_document_by_name(name, "secret")
            except ObjectNotFound:
                continue
            await client.delete_block_document(block.id)


@pytest.fixture
def secret_blocks(prefect_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Secret block names of this test's own, named by the settings."""
    tag = uuid.uuid4().hex[:8]
    names = [f"test-signing-{tag}", f"test-slack-{tag}"]
    monkeypatch.setenv("SCANFLOW_PLATFORM_SIGNING_SECRET_BLOCK", names[0])
    monkeypatch.setenv("SCANFLOW_SLACK_WEBHOOK_BLOCK", names[1])
    yield names
    asyncio.run(_delete_blocks(names))


def _stdin(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(text))


@pytest.mark.integration
def test_secrets_set_saves_standard_input_in_the_settings_block_and_never_prints_it(
    secret_blocks: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from prefect.blocks.system import Secret

    signing, slack = secret_blocks
    value = "whsec-" + uuid.uuid4().hex
    _stdin(monkeypatch, f"  {value}\n")
    assert main(["secrets", "set", "platform-signing-secret"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == f"Secret block {signing}: saved ({len(value)} characters)"
    assert value not in out + err
    assert Secret.load(signing).get() == value  # stripped of the newline and blanks

    url = "https://hooks.slack.example/services/T0/B0/" + uuid.uuid4().hex
    _stdin(monkeypatch, url)
    assert main(["secrets", "set", "slack-webhook-url"]) == 0
    assert url not in "".join(capsys.readouterr())
    assert Secret.load(slack).get() == url
    assert Secret.load(signing).get() == value  # the other block is untouched

    rotated = "whsec-" + uuid.uuid4().hex
    _stdin(monkeypatch, rotated)
    assert main(["secrets", "set", "platform-signing-secret"]) == 0  # overwrites
    assert Secret.load(signing).get() == rotated


@pytest.mark.integration
@pytest.mark.parametrize("given", ["", "\n", "   \n\t"])
def test_secrets_set_refuses_empty_input_and_saves_nothing(
    secret_blocks: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    given: str,
) -> None:
    from prefect.exceptions import ObjectNotFound

    _stdin(monkeypatch, given)
    assert main(["secrets", "set", "slack-webhook-url"]) == 2
    assert "scanflow secrets: no value on standard input" in capsys.readouterr().err

    async def read() -> None:
        from prefect.client.orchestration import get_client

        async with get_client() as client:
            await client.read_block_document_by_name(secret_blocks[1], "secret")

    with pytest.raises(ObjectNotFound):
        asyncio.run(read())


async def _pool(name: str) -> tuple[str, list[str]]:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        pool = await client.read_work_pool(name)
        queues = await client.read_work_queues(work_pool_name=name)
    return pool.type, [q.name for q in sorted(queues, key=lambda q: q.priority)]


async def _delete_pools(names: list[str]) -> None:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        for pool in await client.read_work_pools():
            if pool.name in names:
                await client.delete_work_pool(pool.name)


@pytest.fixture
def test_pools(prefect_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """POOLS holds only renamed copies of the repository's pools while the test runs."""
    tag = uuid.uuid4().hex[:8]
    names = {base: f"{base}-{tag}" for base in work_pools.POOLS}
    originals = dict(work_pools.POOLS)
    for base, spec in originals.items():
        monkeypatch.delitem(work_pools.POOLS, base)
        source = spec.site_defaults_from
        renamed = dataclasses.replace(
            spec, name=names[base], site_defaults_from=names[source] if source else None
        )
        monkeypatch.setitem(work_pools.POOLS, names[base], renamed)
    yield names
    asyncio.run(_delete_pools(list(names.values())))


@pytest.mark.integration
def test_pools_apply_creates_a_self_hosted_servers_pools_then_updates_them(
    test_pools: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    gpu, notify = test_pools["scanflow-gpu"], test_pools["scanflow-notify"]
    assert main(["pools", "apply"]) == 0  # the local server is no Prefect Cloud
    assert capsys.readouterr().out.splitlines() == [
        f"{gpu} (ecs): created; template: the repository's",
        f"{notify} (process): created; template: the repository's",
    ]
    kind, queues = asyncio.run(_pool(gpu))
    assert kind == "ecs" and queues[:3] == ["uploads", "reruns", "backfill"]
    assert asyncio.run(_pool(notify)) == ("process", ["default"])

    assert main(["pools", "apply", gpu]) == 0  # one pool, by name
    assert capsys.readouterr().out.splitlines() == [
        f"{gpu} (ecs): updated; template: the repository's"
    ]
    assert main(["pools", "apply", test_pools["scanflow-cpu"]]) == 1
    assert "exists only on Prefect Cloud" in capsys.readouterr().err
