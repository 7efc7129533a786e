"""The tree is the architecture: cv/ stays pure, tasks/ never reach into flows/."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(folder: str) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for path in (ROOT / folder).rglob("*.py"):
        names: set[str] = set()
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
            elif isinstance(node, ast.Attribute) and node.attr == "environ":
                names.add("os.environ")
        out[str(path.relative_to(ROOT))] = names
    return out


def test_cv_imports_no_orchestration_network_or_environment() -> None:
    banned = {
        "prefect",
        "boto3",
        "botocore",
        "httpx",
        "os.environ",
        "tasks",
        "flows",
        "deployments",
        "pydantic_settings",
    }
    offenders = {f: sorted(n & banned) for f, n in _imports("cv").items() if n & banned}
    assert not offenders, offenders


def test_tasks_do_not_import_flows_or_deployments() -> None:
    offenders = {
        f: sorted(n & {"flows", "deployments"})
        for f, n in _imports("tasks").items()
        if n & {"flows", "deployments"}
    }
    assert not offenders, offenders
