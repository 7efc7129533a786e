"""``scanflow automations apply [--dry-run]`` and ``scanflow automations list`` (a flows.cli
extension). Prefect is imported only once the environment points at the right server."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from typing import Any


def register(sub: Any) -> dict[str, Any]:
    p = sub.add_parser("automations", help="scanflow's Prefect automations (notifications)")
    p.add_argument("action", choices=["apply", "show"])
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    return {"automations": cmd_automations}


def cmd_automations(args: argparse.Namespace, settings: Any, stack: Any) -> int:
    for key, value in stack.client_env().items():
        if key.startswith("PREFECT_"):
            os.environ.setdefault(key, value)
    from deployments.automations import apply_automations, desired_automations

    if args.action == "show":
        from uuid import UUID

        from deployments.automations import normal_form

        wanted = desired_automations(settings, UUID(int=0))
        print(json.dumps([normal_form(a) for a in wanted], indent=2))
        return 0
    plan = asyncio.run(apply_automations(settings, dry_run=args.dry_run))
    for line in plan.lines():
        print(line)
    verb = "would change" if args.dry_run else "changed"
    print(f"{verb} {plan.changes} automation(s), {len(plan.unchanged)} unchanged")
    return 0
