"""``python -m deployments.rehearsal``: docs/production.md's steps, in order, on loopback.

    python -m deployments.rehearsal [--workdir DIR] [--until N] [--json] [--serve]

Prints each step with the commands it ran and what was checked after it; exit code 1 when
a step failed (the message names the step, the command and why). ``--until N`` stops after
step N. The stand-ins (moto, a local Prefect server, the platform's receiver) run in a
temporary folder, removed afterwards unless ``--workdir`` is given. ``--serve`` keeps them
running after a green rehearsal: it prints one JSON line (the environment that reaches
them) and stops when its standard input closes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from deployments.rehearsal.production import Rehearsal


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployments.rehearsal", description=__doc__)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--until", type=int, default=None, help="stop after this step")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--serve", action="store_true", help="keep the stand-ins running")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="scanflow-rehearsal-"))
    rehearsal = Rehearsal(workdir, until=args.until)
    try:
        result = rehearsal.run(stop=not args.serve)
        if args.serve:
            if result.ok:
                print(json.dumps(rehearsal.world()), flush=True)
                sys.stdin.read()  # until the caller closes it
            rehearsal.stop()
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.serve and result.ok:
        return 0
    if args.json:
        print(result.as_json())
    else:
        for step in result.steps:
            print(f"## {step.number}. {step.title} ({step.seconds} s)")
            for command in step.commands:
                print(f"   $ {command[:160]}")
            for check in step.checks:
                print(f"   ok {check}")
        if result.recorded:
            print("read from the templates, not exercised: " + ", ".join(result.recorded))
        print(f"figures: {result.figures}")
        print("rehearsal: ok" if result.ok else f"rehearsal FAILED at {result.error}")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
