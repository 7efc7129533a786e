"""``scanflow pools`` and ``scanflow deploy``: the production path's command line.

    scanflow pools apply scanflow-gpu [--replace-template]   # pool + queues with priorities
    scanflow pools templates                                 # rewrite deployments/work-pools/*.json
    scanflow deploy ecs-gpu [NAME ...]                       # prefect deploy, env checked first

Both talk to the API PREFECT_API_URL names, or to the local server when it is unset.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
from typing import Any

import yaml

from flows.settings import REPO_ROOT, Settings

ENV_PLACEHOLDER = re.compile(r"\{\{\s*\$([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def deployment_config(name: str) -> dict[str, Any]:
    spec = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())
    for deployment in spec.get("deployments") or []:
        if deployment.get("name") == name:
            return dict(deployment)
    names = [d.get("name") for d in spec.get("deployments") or []]
    raise RuntimeError(f"prefect.yaml has no deployment {name!r}; it has {names}.")


def required_env(name: str) -> list[str]:
    """The environment variables a deployment's ``{{ $VAR }}`` placeholders read."""
    return sorted(set(ENV_PLACEHOLDER.findall(yaml.safe_dump(deployment_config(name)))))


def _use_local_server_unless_told(stack: Any) -> None:
    if "PREFECT_API_URL" in os.environ:
        return
    for key, value in stack.client_env().items():
        if key.startswith(("PREFECT_", "SCANFLOW_")) or key == "DO_NOT_TRACK":
            os.environ.setdefault(key, value)


def cmd_pools(args: argparse.Namespace, settings: Settings, stack: Any) -> int:
    from deployments.work_pools import POOLS, apply_pool, write_templates

    if args.action == "templates":
        for path in write_templates():
            print(path)
        return 0
    names = [args.name] if args.name else [n for n, p in POOLS.items() if not p.cloud_only]
    _use_local_server_unless_told(stack)
    for name in names:
        result = asyncio.run(apply_pool(name, replace_template=args.replace_template))
        print(f"{result['pool']} ({result['type']}): {result['action']}")
    return 0


def cmd_deploy(args: argparse.Namespace, settings: Settings, stack: Any) -> int:
    needed = sorted({var for name in args.names for var in required_env(name)})
    missing = [var for var in needed if not os.environ.get(var)]
    if missing:
        print(
            f"scanflow deploy: set {', '.join(missing)} first (prefect.yaml reads them when "
            "the deployment is applied; unset, they would be stored as text).",
            file=sys.stderr,
        )
        return 2
    _use_local_server_unless_told(stack)
    names = [part for name in args.names for part in ("--name", name)]
    done = subprocess.run(
        [sys.executable, "-m", "prefect", "--no-prompt", "deploy", *names],
        cwd=REPO_ROOT,
        env=dict(os.environ),
    )
    return done.returncode


def register(sub: Any) -> dict[str, Any]:
    from deployments.work_pools import POOLS

    pools = sub.add_parser("pools", help="create or update the production work pools")
    pools.add_argument("action", choices=["apply", "templates"])
    pools.add_argument(
        "name", nargs="?", choices=sorted(POOLS), help="default: every non-Cloud-only pool"
    )
    pools.add_argument(
        "--replace-template",
        action="store_true",
        help="overwrite an existing pool's base job template (and its provisioned defaults)",
    )
    deploy = sub.add_parser("deploy", help="apply prefect.yaml deployments (env checked first)")
    deploy.add_argument("names", nargs="+", help="deployment names in prefect.yaml, e.g. ecs-gpu")
    return {"pools": cmd_pools, "deploy": cmd_deploy}
