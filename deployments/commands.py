"""``scanflow pools`` and ``scanflow deploy``: the production path's command line.

    scanflow pools apply [NAME] [--replace-template] [--credential-secret-arn ARN]
                                                             # pools + queues with priorities
    scanflow pools templates                                 # rewrite deployments/work-pools/*.json
    scanflow deploy ecs-gpu [NAME ...]                       # prefect deploy, env checked first
    scanflow secrets set platform-signing-secret|slack-webhook-url < value-file
    scanflow doctor [--json]                                 # the live deployment vs the repo

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
    from deployments.work_pools import apply_pool, pools_for, write_templates

    if args.action == "templates":
        for path in write_templates():
            print(path)
        return 0
    _use_local_server_unless_told(stack)
    cloud = settings.on_prefect_cloud(os.environ.get("PREFECT_API_URL", ""))
    names = [args.name] if args.name else pools_for(cloud)
    for name in names:
        result = asyncio.run(
            apply_pool(
                name,
                cloud=cloud,
                replace_template=args.replace_template,
                credential_secret_arn=args.credential_secret_arn
                if name == "scanflow-gpu"
                else None,
            )
        )
        pool, kind = result["pool"], result["type"]
        print(f"{pool} ({kind}): {result['action']}; template: {result['template']}")
        for line in result["template_diff"]:
            print(f"    {line}")
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


SECRETS = {
    "platform-signing-secret": "platform_signing_secret_block",
    "slack-webhook-url": "slack_webhook_block",
}


def cmd_secrets(args: argparse.Namespace, settings: Settings, stack: Any) -> int:
    """Store a secret in the Prefect Secret block the settings name; the value comes from
    standard input, never from the command line (shell history, process list)."""
    value = sys.stdin.read().strip()
    if not value:
        print("scanflow secrets: no value on standard input", file=sys.stderr)
        return 2
    _use_local_server_unless_told(stack)
    from prefect.blocks.system import Secret

    block = getattr(settings, SECRETS[args.name])
    Secret(value=value).save(block, overwrite=True)
    print(f"Secret block {block}: saved ({len(value)} characters)")
    return 0


def cmd_doctor(args: argparse.Namespace, settings: Settings, stack: Any) -> int:
    _use_local_server_unless_told(stack)
    from deployments.doctor import run_doctor

    report = run_doctor(settings, os.environ.get("PREFECT_API_URL", settings.api_url))
    if args.json:
        print(report.as_json())
    else:
        for check in report.checks:
            print(check.line())
        failed = len(report.failed)
        print(
            f"{len(report.checks)} checks, {failed} failed"
            if failed
            else f"{len(report.checks)} checks, all ok"
        )
    return 1 if report.failed else 0


def register(sub: Any) -> dict[str, Any]:
    from deployments.work_pools import POOLS

    pools = sub.add_parser("pools", help="create or update the production work pools")
    pools.add_argument("action", choices=["apply", "templates"])
    pools.add_argument(
        "name",
        nargs="?",
        choices=sorted(POOLS),
        help="default: the pools this workspace needs (Prefect Cloud's or a self-hosted one's)",
    )
    pools.add_argument(
        "--credential-secret-arn",
        default=None,
        help="scanflow-gpu: the Secrets Manager secret with the Prefect API key (or auth "
        "string); flow-run containers get it as an ECS secret, not in RunTask's environment",
    )
    pools.add_argument(
        "--replace-template",
        action="store_true",
        help="overwrite an existing pool's base job template (and its provisioned defaults)",
    )
    deploy = sub.add_parser("deploy", help="apply prefect.yaml deployments (env checked first)")
    deploy.add_argument("names", nargs="+", help="deployment names in prefect.yaml, e.g. ecs-gpu")
    secrets = sub.add_parser("secrets", help="store a notification secret in its Secret block")
    secrets.add_argument("action", choices=["set"])
    secrets.add_argument("name", choices=sorted(SECRETS))
    doctor = sub.add_parser(
        "doctor", help="check the live deployment (Prefect API and AWS) against the repository"
    )
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    return {"pools": cmd_pools, "deploy": cmd_deploy, "secrets": cmd_secrets, "doctor": cmd_doctor}
