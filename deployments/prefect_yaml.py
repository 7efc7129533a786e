"""prefect.yaml, the one place where scanflow's deployments are declared, read the way
``prefect deploy`` reads it: each deployment's entry, and the ``{{ $VAR }}`` settings it
takes from the environment when it is applied."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from scanflow.settings import REPO_ROOT

ENV_PLACEHOLDER = re.compile(r"\{\{\s*\$([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def deployments(repo: Path = REPO_ROOT) -> dict[str, dict[str, Any]]:
    """Every deployment prefect.yaml declares, by name."""
    spec = yaml.safe_load((repo / "prefect.yaml").read_text())
    return {d["name"]: dict(d) for d in spec.get("deployments") or []}


def deployment_config(name: str, repo: Path = REPO_ROOT) -> dict[str, Any]:
    declared = deployments(repo)
    if name not in declared:
        raise RuntimeError(f"prefect.yaml has no deployment {name!r}; it has {sorted(declared)}.")
    return declared[name]


def required_env(name: str, repo: Path = REPO_ROOT) -> list[str]:
    """The environment variables a deployment's ``{{ $VAR }}`` placeholders read."""
    return sorted(set(ENV_PLACEHOLDER.findall(yaml.safe_dump(deployment_config(name, repo)))))


def flow_name(deployment: dict[str, Any]) -> str:
    """The flow a deployment runs, from its entrypoint (without importing it)."""
    entry = str(deployment["entrypoint"])  # flows/x.py:fn or flows.x.fn
    return entry.rsplit(":", 1)[-1].rsplit(".", 1)[-1].replace("_", "-")  # scanflow's names
