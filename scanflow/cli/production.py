"""The production path's commands: ``scanflow pools | deploy | automations | secrets |
doctor`` (docs/production.md). They talk to the API PREFECT_API_URL names, or to the
local server when it is unset."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
from typing import Any
from uuid import UUID

from prefect.blocks.system import Secret

from deployments.automations import apply_automations, desired_automations, normal_form
from deployments.doctor import run_doctor
from deployments.pool_api import apply_pool
from deployments.prefect_yaml import required_env
from deployments.work_pools import POOLS, pools_for, write_templates
from scanflow.settings import NOTIFICATION_SECRETS, REPO_ROOT, Settings


def cmd_pools(args: argparse.Namespace, settings: Settings, stack: Any) -> int:
    if args.action == "templates":
        for path in write_templates():
            print(path)
        return 0
    cloud = settings.on_prefect_cloud(os.environ.get("PREFECT_API_URL", ""))
    for name in [args.name] if args.name else pools_for(cloud):
        result = asyncio.run(
            apply_pool(
                name,
                cloud=cloud,
                replace_template=args.replace_template,
                # the hybrid ECS pools' workers pass the credential to their tasks
                credential_secret_arn=(
                    args.credential_secret_arn if POOLS[name].type == "ecs" else None
                ),
            )
        )
        pool, kind = result["pool"], result["type"]
        print(f"{pool} ({kind}): {result['action']}; template: {result['template']}")
        for line in result["template_diff"]:
            print(f"    {line}")
    return 0


def cmd_deploy(args: argparse.Namespace, settings: Settings, stack: Any) -> int:
    """``prefect deploy`` of prefect.yaml's deployments, once every ``{{ $VAR }}`` they read
    is set (unset, Prefect would store the placeholder's text)."""
    needed = sorted({var for name in args.names for var in required_env(name)})
    missing = [var for var in needed if not os.environ.get(var)]
    if missing:
        print(
            f"scanflow deploy: set {', '.join(missing)} first (prefect.yaml reads them when "
            "the deployment is applied; unset, they would be stored as text).",
            file=sys.stderr,
        )
        return 2
    names = [part for name in args.names for part in ("--name", name)]
    done = subprocess.run(
        [sys.executable, "-m", "prefect", "--no-prompt", "deploy", *names],
        cwd=REPO_ROOT,
        env=dict(os.environ),
    )
    return done.returncode


def cmd_automations(args: argparse.Namespace, settings: Settings, stack: Any) -> int:
    if args.action == "show":
        wanted = desired_automations(settings, UUID(int=0))
        print(json.dumps([normal_form(a) for a in wanted], indent=2))
        return 0
    plan = asyncio.run(apply_automations(settings, dry_run=args.dry_run))
    for line in plan.lines():
        print(line)
    verb = "would change" if args.dry_run else "changed"
    print(f"{verb} {plan.changes} automation(s), {len(plan.unchanged)} unchanged")
    return 0


def cmd_secrets(args: argparse.Namespace, settings: Settings, stack: Any) -> int:
    """Store a secret in the Prefect Secret block the settings name; the value comes from
    standard input, never from the command line (shell history, process list)."""
    value = sys.stdin.read().strip()
    if not value:
        print("scanflow secrets: no value on standard input", file=sys.stderr)
        return 2
    block = getattr(settings, NOTIFICATION_SECRETS[args.name])
    Secret(value=value).save(block, overwrite=True)
    print(f"Secret block {block}: saved ({len(value)} characters)")
    return 0


def cmd_doctor(args: argparse.Namespace, settings: Settings, stack: Any) -> int:
    report = run_doctor(settings, os.environ.get("PREFECT_API_URL", settings.api_url))
    if args.json:
        print(report.as_json())
    else:
        for check in report.checks:
            print(check.line())
        failed = len(report.failed)
        total = len(report.checks)
        print(f"{total} checks, {failed} failed" if failed else f"{total} checks, all ok")
    return 1 if report.failed else 0
