"""prefect.yaml read the way ``prefect deploy`` reads it (deployments/prefect_yaml.py): the
repository's own file, and small prefect.yaml files written to a temporary repository and
passed as ``repo``."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from deployments.prefect_yaml import deployment_config, deployments, flow_name, required_env
from deployments.work_pools import POOLS


def _repo(tmp_path: Path, text: str) -> Path:
    (tmp_path / "prefect.yaml").write_text(textwrap.dedent(text))
    return tmp_path


def test_the_repository_declares_its_deployments_by_name() -> None:
    declared = deployments()
    assert sorted(declared) == [
        "backfill",
        "backfill-cloud",
        "backfill-ecs",
        "ecs-cpu",
        "ecs-gpu",
        "local",
        "notify",
        "notify-cloud",
        "notify-ecs",
        "ops-report",
        "ops-report-cloud",
        "ops-report-ecs",
        "reconcile",
        "reconcile-cloud",
        "reconcile-ecs",
        "shadow-gpu",
        "train-gpu",
    ]
    assert declared["ecs-gpu"]["work_pool"]["name"] == "scanflow-gpu"
    assert deployment_config("notify")["work_pool"]["name"] == "notify"


def test_an_unknown_deployment_is_refused_naming_the_ones_there_are() -> None:
    with pytest.raises(RuntimeError) as err:
        deployment_config("ecs-tpu")
    message = str(err.value)
    assert "'ecs-tpu'" in message
    assert f"it has {sorted(deployments())}." in message
    assert "'ecs-cpu', 'ecs-gpu', 'local'" in message


def test_required_env_lists_each_placeholder_once_sorted() -> None:
    assert required_env("ecs-cpu") == [
        "SCANFLOW_CPU_TASK_ROLE_ARN",
        "SCANFLOW_IMAGE",
        "SCANFLOW_INPUT_ROOTS",
        "SCANFLOW_PLATFORM_WEBHOOK_URL",
        "SCANFLOW_RESULTS_URI",
    ]
    assert required_env("ecs-gpu") == [
        "SCANFLOW_EXECUTION_ROLE_ARN",
        "SCANFLOW_GPU_CLUSTER",
        "SCANFLOW_GPU_TASK_ROLE_ARN",
        "SCANFLOW_IMAGE",
        "SCANFLOW_INPUT_ROOTS",
        "SCANFLOW_PLATFORM_WEBHOOK_URL",
        "SCANFLOW_RESULTS_URI",
    ]
    # notify-outcome reads no uploads: no input roots, no task role
    assert required_env("notify-cloud") == [
        "SCANFLOW_IMAGE",
        "SCANFLOW_PLATFORM_WEBHOOK_URL",
        "SCANFLOW_RESULTS_URI",
    ]
    assert required_env("local") == [] and required_env("notify-ecs") == []
    # the reconciler lists the uploads with the CPU task role's rights
    assert required_env("reconcile-cloud") == [
        "SCANFLOW_CPU_TASK_ROLE_ARN",
        "SCANFLOW_IMAGE",
        "SCANFLOW_PLATFORM_WEBHOOK_URL",
        "SCANFLOW_RESULTS_URI",
        "SCANFLOW_UPLOADS_URI",
    ]


def test_the_ops_report_runs_every_morning() -> None:
    for name in ("ops-report", "ops-report-cloud", "ops-report-ecs"):
        assert deployment_config(name)["schedules"] == [{"cron": "0 7 * * *", "timezone": "UTC"}]


def test_every_reconcile_deployment_runs_every_15_minutes_one_pass_at_a_time() -> None:
    for name in ("reconcile", "reconcile-cloud", "reconcile-ecs"):
        config = deployment_config(name)
        assert config["schedules"] == [{"interval": 900}], name
        assert config["concurrency_limit"] == {"limit": 1, "collision_strategy": "CANCEL_NEW"}
        assert config["work_pool"]["name"] in ("notify", "scanflow-notify-push", "scanflow-notify")


def test_backfill_and_shadow_runs_take_the_backfill_queue() -> None:
    """Shadow runs wait behind uploads on the GPU pool's backfill queue; a backfill's
    process-scan runs go to the backfill queue of the pool SCANFLOW_DEPLOYMENT names."""
    from scanflow.settings import Settings

    assert deployment_config("shadow-gpu")["work_pool"]["work_queue_name"] == "backfill"
    assert Settings().backfill_queue == "backfill"
    pools = {"process-scan/ecs-cpu": "scanflow-cpu", "process-scan/ecs-gpu": "scanflow-gpu"}
    for name in ("backfill-cloud", "backfill-ecs"):
        target = deployment_config(name)["work_pool"]["job_variables"]["env"]["SCANFLOW_DEPLOYMENT"]
        ecs = deployment_config(target.split("/", 1)[1])
        assert ecs["work_pool"]["name"] == pools[target]
        assert "backfill" in [q.name for q in POOLS[pools[target]].queues]


def test_flow_name_comes_from_the_entrypoint_in_either_form() -> None:
    declared = deployments()
    assert {name: flow_name(d) for name, d in declared.items()} == {
        "local": "process-scan",
        "notify": "notify-outcome",
        "ecs-cpu": "process-scan",
        "ecs-gpu": "process-scan",
        "notify-cloud": "notify-outcome",
        "notify-ecs": "notify-outcome",
        "reconcile": "reconcile",
        "reconcile-cloud": "reconcile",
        "reconcile-ecs": "reconcile",
        "ops-report": "ops-report",
        "ops-report-cloud": "ops-report",
        "ops-report-ecs": "ops-report",
        "train-gpu": "train-view-model",
        "shadow-gpu": "shadow-model",
        "backfill": "backfill",
        "backfill-cloud": "backfill",
        "backfill-ecs": "backfill",
    }
    assert flow_name({"entrypoint": "flows/notify_outcome.py:notify_outcome"}) == "notify-outcome"
    assert flow_name({"entrypoint": "flows.process_scan.process_scan"}) == "process-scan"


def test_a_given_repository_is_read_instead_of_this_one(tmp_path: Path) -> None:
    repo = _repo(
        tmp_path,
        """
        name: other
        deployments:
          - name: staging
            entrypoint: flows.process_scan.process_scan
            description: "mentions {{ $IN_DESCRIPTION }} too"
            work_pool:
              name: p
              job_variables:
                image: "{{ $IMAGE }}"
                env:
                  A: "{{$TIGHT}}"
                  B: "{{   $SPACED_1   }}"
                  C: "{{ $IMAGE }}"
                  D: "{{ not_an_env_var }}"
                  E: "{{ prefect.variables.x }}"
                  F: "$NOT_A_PLACEHOLDER"
          - name: bare
            entrypoint: flows/notify_outcome.py:notify_outcome
        """,
    )
    assert sorted(deployments(repo)) == ["bare", "staging"]
    assert required_env("staging", repo) == ["IMAGE", "IN_DESCRIPTION", "SPACED_1", "TIGHT"]
    assert required_env("bare", repo) == []
    assert flow_name(deployment_config("bare", repo)) == "notify-outcome"
    with pytest.raises(
        RuntimeError, match=r"has no deployment 'local'; it has \['bare', 'staging'\]"
    ):
        deployment_config("local", repo)


def test_a_prefect_yaml_without_deployments_has_none(tmp_path: Path) -> None:
    repo = _repo(tmp_path, "name: empty\ndeployments:\n")
    assert deployments(repo) == {}
    with pytest.raises(RuntimeError, match=r"it has \[\]"):
        required_env("local", repo)
    assert deployments(_repo(tmp_path, "name: empty\n")) == {}


@pytest.mark.integration
def test_the_reconcile_deployment_reaches_the_server_with_its_schedule_and_limit(
    prefect_server: str,
) -> None:
    """`prefect deploy --name reconcile`, as an operator runs it, on the session's server."""
    import asyncio
    import contextlib
    import os
    import subprocess
    import sys
    from datetime import timedelta

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    from scanflow.settings import REPO_ROOT

    async def notify_pool() -> None:
        async with get_client() as client:
            with contextlib.suppress(ObjectAlreadyExists):  # the local stack's, if it is up
                await client.create_work_pool(WorkPoolCreate(name="notify", type="process"))

    asyncio.run(notify_pool())
    done = subprocess.run(
        [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--name", "reconcile"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ.copy(),
    )
    assert done.returncode == 0, done.stdout + done.stderr

    async def check() -> None:
        async with get_client() as client:
            deployment = await client.read_deployment_by_name("reconcile/reconcile")
            try:
                [schedule] = deployment.schedules
                assert schedule.active
                assert getattr(schedule.schedule, "interval", None) == timedelta(seconds=900)
                assert deployment.global_concurrency_limit is not None
                assert deployment.global_concurrency_limit.limit == 1
                assert deployment.concurrency_options is not None
                assert deployment.concurrency_options.collision_strategy.value == "CANCEL_NEW"
                assert deployment.work_pool_name == "notify"
            finally:  # its schedule must not fire during the test session
                await client.delete_deployment(deployment.id)

    asyncio.run(check())
