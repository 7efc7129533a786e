"""The production runbook rehearsed on loopback (``python -m deployments.rehearsal``), and
each defect it guards against reintroduced into a copy of the repository, where the
rehearsal must fail at the step that shows it.

Each rehearsal runs in a process of its own: it starts its own Prefect server, moto and
platform receiver on free ports, and points its own environment at them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from deployments.rehearsal.runbook import read_steps
from scanflow.cli.production import required_env
from scanflow.settings import REPO_ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RUNBOOK = Path("docs") / "production.md"
IGNORE = shutil.ignore_patterns(
    ".git", ".venv", ".scanflow", "__pycache__", "*.egg-info", ".*_cache", "build", "out"
)


def rehearse(repo: Path, workdir: Path, until: int | None = None) -> dict[str, Any]:
    argv = [sys.executable, "-m", "deployments.rehearsal", "--json", "--workdir", str(workdir)]
    if until is not None:
        argv += ["--until", str(until)]
    done = subprocess.run(
        argv,
        cwd=repo,
        env={**os.environ, "PYTHONPATH": str(repo)},
        capture_output=True,
        text=True,
        timeout=900,
    )
    out = done.stdout[done.stdout.index("{") :] if "{" in done.stdout else ""
    assert out, done.stdout[-3000:] + done.stderr[-3000:]
    result: dict[str, Any] = json.loads(out)
    assert (done.returncode == 0) == result["ok"]
    return result


def test_the_runbook_rehearses_green_from_upload_to_the_platform(tmp_path: Path) -> None:
    result = rehearse(REPO_ROOT, tmp_path / "work")
    assert result["ok"], result["error"]
    steps = {s["number"]: s for s in result["steps"]}
    assert [s.number for s in read_steps(REPO_ROOT / RUNBOOK)] == sorted(steps)
    upload = "\n".join(steps[7]["checks"])
    assert "4 uploads (.MOV, .mp4, .m4v, .MP4) became one run each" in upload
    assert "refused: patients/demo-patient/scans/notes.txt" in upload
    assert "its container ran it to Completed" in upload
    assert "signed scan.completed from the run's hook" in upload
    assert "from notify-cloud on the push pool" in upload
    assert "prefect-ecs-user may pass scanflow-cpu-TaskRole" in upload
    assert "capacity provider scanflow-gpu, GPU 1, Prefect key as a secret" in upload
    assert "all ok" in steps[8]["checks"][-1]
    print(
        "\nrehearsal: "
        + ", ".join(f"step {s['number']} {s['seconds']} s" for s in result["steps"])
        + f"; figures {result['figures']}"
    )


def test_every_deploy_in_the_runbook_has_the_settings_it_reads() -> None:
    """Static and fast: the variables exported before each `scanflow deploy` cover what
    prefect.yaml's deployments read (the rehearsal also runs it)."""
    exported: set[str] = set()
    deploys = 0
    for step in read_steps(REPO_ROOT / RUNBOOK):
        for command in step.commands:
            exported |= set(re.findall(r"(?:^|\s)([A-Z_][A-Z0-9_]*)=", command))
            match = re.search(r"scanflow deploy ((?:[\w-]+\s*)+)$", command)
            if match:
                deploys += 1
                for name in match[1].split():
                    assert set(required_env(name)) <= exported, (name, step.title)
    assert deploys >= 2
    text = (REPO_ROOT / RUNBOOK).read_text() + (REPO_ROOT / "README.md").read_text()
    assert "pnu_" not in text  # a person's key: the runbook uses a service account's


@dataclass(frozen=True)
class Defect:
    name: str
    path: str
    change: Callable[[str], str]
    until: int
    fails_at: int
    says: str


def _replace(old: str, new: str) -> Callable[[str], str]:
    def change(text: str) -> str:
        assert old in text, f"the defect's anchor {old!r} is gone: update the test"
        return text.replace(old, new)

    return change


def _move_gpu_stack_before_the_pools(text: str) -> str:
    lines = text.splitlines(keepends=True)
    gpu = next(i for i, line in enumerate(lines) if "--stack-name scanflow-gpu --template" in line)
    moved = lines.pop(gpu)
    apply = next(i for i, line in enumerate(lines) if "scanflow pools apply" in line)
    lines.insert(apply, moved)
    return "".join(lines)


DEFECTS = [
    Defect(
        "case-sensitive suffix filters",
        "deployments/trigger/template.yaml",
        _replace(
            """                    - Name: prefix
                      Value: !Ref ScanPrefix
        - LambdaConfigurations:""",
            """                    - Name: prefix
                      Value: !Ref ScanPrefix
                    - Name: suffix
                      Value: .mp4
        - LambdaConfigurations:""",
        ),
        until=6,
        fails_at=6,
        says="never reach the trigger",
    ),
    Defect(
        "notify-outcome not deployed to production",
        "prefect.yaml",
        _replace("  - name: notify-cloud\n", "  - name: notify-elsewhere\n"),
        until=4,
        fails_at=4,
        says="notify-cloud",
    ),
    Defect(
        "the automations run notify-outcome on the local pool",
        "docs/production.md",
        _replace("export SCANFLOW_NOTIFY_DEPLOYMENT=notify-outcome/notify-cloud\n", ""),
        until=5,
        fails_at=5,
        says="notify-outcome/notify",
    ),
    Defect(
        "the GPU worker starts first and creates its pool",
        "deployments/ecs-gpu/template.yaml",
        _replace(
            "            - --no-create-pool-if-not-found\n            - --with-healthcheck",
            "            - --with-healthcheck",
        ),
        until=1,
        fails_at=1,
        says="scanflow-gpu template: differs",
    ),
    Defect(
        "a task role the push pool's user cannot pass",
        "prefect.yaml",
        _replace(
            'task_role_arn: "{{ $SCANFLOW_CPU_TASK_ROLE_ARN }}"',
            'task_role_arn: "{{ $SCANFLOW_GPU_TASK_ROLE_ARN }}"',
        ),
        until=4,
        fails_at=4,
        says="may not pass",
    ),
    Defect(
        "no grace for a slot during a GPU cold start",
        "prefect.yaml",
        _replace("      grace_period_seconds: 1800\n", ""),
        until=4,
        fails_at=4,
        says="shorter than scanflow-gpu's start-up",
    ),
    Defect(
        "20 reserved executions on a new account",
        "deployments/trigger/template.yaml",
        _replace(
            "    Type: Number\n    Default: 0\n    MinValue: 0",
            "    Type: Number\n    Default: 20\n    MinValue: 0",
        ),
        until=6,
        fails_at=6,
        says="UnreservedConcurrentExecution below its minimum value of [100]",
    ),
    Defect(
        "the Prefect key copied into RunTask",
        "docs/production.md",
        _replace(" --credential-secret-arn $PREFECT_SECRET_ARN", ""),
        until=1,
        fails_at=1,
        says="in plain text",
    ),
    Defect(
        "an image built for the laptop's architecture",
        "docs/production.md",
        _replace(
            "docker build --platform linux/amd64 --build-arg CODE", "docker build --build-arg CODE"
        ),
        until=3,
        fails_at=3,
        says="--platform linux/amd64",
    ),
    Defect(
        "a setting missing from the deploy step",
        "docs/production.md",
        _replace(" SCANFLOW_INPUT_ROOTS=s3://$UPLOADS/patients/", ""),
        until=4,
        fails_at=4,
        says="set SCANFLOW_INPUT_ROOTS first",
    ),
    Defect(
        "the trigger's code in the results bucket",
        "docs/production.md",
        lambda text: text.replace(
            "s3://$ARTIFACTS/scanflow-trigger.zip", "s3://$RESULTS/scanflow-trigger.zip"
        ).replace("CodeS3Bucket=$ARTIFACTS", "CodeS3Bucket=$RESULTS"),
        until=6,
        fails_at=6,
        says="may overwrite the trigger's code",
    ),
    Defect(
        "flow containers can reach the instance role",
        "deployments/ecs-gpu/template.yaml",
        _replace("HttpPutResponseHopLimit: 1", "HttpPutResponseHopLimit: 2"),
        until=2,
        fails_at=2,
        says="hop limit must be 1",
    ),
    Defect(
        "the ECS worker cannot extend its events' visibility",
        "deployments/ecs-gpu/template.yaml",
        _replace("                  - sqs:ChangeMessageVisibility\n", ""),
        until=2,
        fails_at=2,
        says="sqs:ChangeMessageVisibility",
    ),
]


@pytest.mark.parametrize("defect", DEFECTS, ids=[d.name for d in DEFECTS])
def test_the_rehearsal_catches_the_defect(defect: Defect, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(REPO_ROOT, repo, ignore=IGNORE)
    target = repo / defect.path
    changed = defect.change(target.read_text())
    if defect.name == "the GPU worker starts first and creates its pool":
        runbook = repo / RUNBOOK
        runbook.write_text(_move_gpu_stack_before_the_pools(runbook.read_text()))
    target.write_text(changed)
    result = rehearse(repo, tmp_path / "work", until=defect.until)
    assert not result["ok"], f"{defect.name}: the rehearsal passed"
    assert result["failed_step"] == defect.fails_at, result["error"]
    assert defect.says in result["error"], result["error"]
