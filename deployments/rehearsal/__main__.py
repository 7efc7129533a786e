"""``python -m deployments.rehearsal``: docs/production.md's steps, in order, on loopback.

    python -m deployments.rehearsal [--workdir DIR] [--until N] [--json]

Prints each step with the commands it ran and what was checked after it; exit code 1 when
a step failed (the message names the step, the command and why). ``--until N`` stops after
step N. The stand-ins (moto, a local Prefect server, the platform's receiver) run in a
temporary folder, removed afterwards unless ``--workdir`` is given.
"""

from __future__ import annotations

import argparse
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
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="scanflow-rehearsal-"))
    try:
        result = Rehearsal(workdir, until=args.until).run()
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
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
