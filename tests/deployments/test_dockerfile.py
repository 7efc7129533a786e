"""The Dockerfile and its build context, read as Docker reads them (no Docker engine here;
test_ecs.py runs the image's command on the run the ECS worker submitted)."""

from __future__ import annotations

import shlex

from prefect.workers.base import BaseJobConfiguration
from prefect_aws.workers.ecs_worker import ECS_DEFAULT_COMMAND

from deployments.dockerfile import build_context, parse_dockerfile
from scanflow.settings import REPO_ROOT


def test_the_image_runs_the_command_the_workers_send() -> None:
    image = parse_dockerfile(REPO_ROOT / "Dockerfile")
    # ECS replaces CMD with the worker's command; both say the same thing.
    assert image.cmd == shlex.split(BaseJobConfiguration._base_flow_run_command())
    assert " ".join(image.cmd) != ECS_DEFAULT_COMMAND  # prefect-aws's legacy default: unused
    assert image.entrypoint == ["/usr/bin/tini", "-g", "--"]  # signals reach the flow
    assert image.user != "root"
    assert image.env["PATH"].startswith("/opt/venv/bin:")
    assert image.env["SCANFLOW_HOME"].startswith("/tmp/")


def test_the_build_context_is_only_what_the_image_copies() -> None:
    context = build_context(REPO_ROOT)
    rel = {p.relative_to(REPO_ROOT).as_posix() for p in context}
    image = parse_dockerfile(REPO_ROOT / "Dockerfile")
    for source in image.copies:  # every COPY source is sent
        assert any(r == source or r.startswith(source.rstrip("/") + "/") for r in rel), source
    top = {r.split("/")[0] for r in rel}
    allowed = {"pyproject.toml", "requirements-model.txt", "cv", "tasks", "flows", "scanflow"}
    allowed |= {"deployments"}
    assert top <= allowed
    assert not any("__pycache__" in r for r in rel)
    assert {r for r in rel if r.startswith("deployments/")} == {"deployments/__init__.py"}
    size = sum(p.stat().st_size for p in context)
    assert size < 2_000_000, f"build context is {size} bytes"


def test_the_image_copies_every_package_pyproject_installs() -> None:
    import tomllib

    find = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = [p.rstrip("*") for p in find["packages"]["find"]["include"]]
    copies = parse_dockerfile(REPO_ROOT / "Dockerfile").copies
    for package in packages:
        assert any(c == package or c.startswith(f"{package}/") for c in copies), (
            f"the Dockerfile does not COPY the package {package!r} that pyproject.toml installs"
        )
