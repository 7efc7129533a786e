"""The ``scanflow`` command: parse (scanflow/cli/parser.py lists every command), point
Prefect at the right API, then run the command's handler.

Prefect reads its settings when it is imported, so this module is the one boundary: it
imports nothing of Prefect's, sets ``PREFECT_*`` (the API in ``PREFECT_API_URL`` if given,
else the local server of ``scanflow up``), and only then imports the handlers' module
(``local``, ``models`` or ``production``), which import Prefect at their top.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
from pathlib import Path
from types import ModuleType

from cv.errors import ScanError
from scanflow.cli.parser import build_parser
from scanflow.settings import Settings, prefect_client_env


def point_prefect(settings: Settings) -> None:
    """PREFECT_* (and SCANFLOW_*) for this process, unless already set: the API
    PREFECT_API_URL names, else the local server. The local server's credential goes to the
    local server only."""
    api = os.environ.get("PREFECT_API_URL", settings.api_url).rstrip("/")
    for key, value in prefect_client_env(settings).items():
        if key == "PREFECT_API_AUTH_STRING" and api != settings.api_url:
            continue
        if key.startswith(("PREFECT_", "SCANFLOW_")) or key == "DO_NOT_TRACK":
            os.environ.setdefault(key, value)
    # Prefect creates its home at import, without parents: on a fresh clone it warned
    home = os.environ.get("PREFECT_HOME")
    if home:
        Path(home).mkdir(parents=True, exist_ok=True)


def _handlers(group: str) -> ModuleType:
    """The handlers of a command group, imported once Prefect points at its API."""
    if group == "local":
        from scanflow.cli import local

        return local
    if group == "models":
        from scanflow.cli import models

        return models
    from scanflow.cli import production

    return production


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "database", None):
        os.environ["SCANFLOW_DATABASE"] = args.database
    if getattr(args, "messaging", None):
        os.environ["SCANFLOW_MESSAGING"] = args.messaging
    if getattr(args, "replicas", None) is not None:
        os.environ["SCANFLOW_SERVER_REPLICAS"] = str(args.replicas)
    settings = Settings()
    point_prefect(settings)
    handlers = _handlers(args.group)
    from scanflow.local.stack import LocalStack  # imports Prefect: after point_prefect

    try:
        return int(getattr(handlers, f"cmd_{args.handler}")(args, settings, LocalStack(settings)))
    # one clear line, no traceback: a refused scan, a bad argument value, a server that
    # does not answer
    except (ScanError, ValueError, RuntimeError, TimeoutError) as exc:
        print(f"scanflow {args.command}: {exc}", file=sys.stderr)
        return 1


_exit_code = 1  # what the process exits with if main() raises


def _exit_without_teardown() -> None:
    # Last of the exit handlers (registered first), after Prefect's services have drained
    # their logs and events: flush what is buffered and leave. Tearing down an interpreter
    # that holds Prefect, torch and FFmpeg takes ~1 s of a 2-core machine's time, after the
    # run has ended, and frees nothing the operating system would not.
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # closed, or a closed pipe
            stream.flush()
    os._exit(_exit_code)


def run() -> None:
    """The ``scanflow`` command: ``main`` with the process's arguments, then exit without
    tearing the interpreter down."""
    global _exit_code
    atexit.register(_exit_without_teardown)  # before Prefect's: runs after them
    _exit_code = main()
    sys.exit(_exit_code)


if __name__ == "__main__":
    run()
