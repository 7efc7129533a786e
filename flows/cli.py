"""The scanflow command line.

    scanflow up | down | demo
    scanflow server start|stop|status [--database sqlite|postgres]
    scanflow process VIDEO_OR_URI [--patient-id P] [--scan-id S] [--options JSON]
    scanflow submit  VIDEO_OR_URI [--patient-id P] [--scan-id S] [--wait] [--rerun]
    scanflow sample  PATH [--seconds N] [--width W --height H]

Prefect is imported only after the environment points it at the right server.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import json
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from flows.server import LocalStack
from flows.settings import Settings

FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def _point_prefect_at(stack: LocalStack) -> bool:
    """Set PREFECT_* for this process; True when the API is our local server."""
    ours = "PREFECT_API_URL" not in os.environ
    local = os.environ.get("PREFECT_API_URL", stack.settings.api_url).rstrip("/")
    for key, value in stack.client_env().items():
        if key == "PREFECT_API_AUTH_STRING" and local != stack.settings.api_url:
            continue  # the local server's credential goes to the local server only
        if key.startswith(("PREFECT_", "SCANFLOW_")) or key == "DO_NOT_TRACK":
            os.environ.setdefault(key, value)
    return ours


def _default_scan_id(uri: str) -> str:
    stem = Path(uri.rstrip("/")).stem or "scan"
    return re.sub(r"[^A-Za-z0-9_.-]", "-", stem).strip("-.")[:64] or "scan"


def _to_uri(video: str) -> str:
    from tasks.storage import to_uri

    return to_uri(video)


def _allow_input(settings: Settings, uri: str) -> None:
    """``scanflow process`` reads what its user names: the input's folder joins the allowed
    input roots of this process (never a worker's)."""
    from tasks.access import parse_root

    folder = uri.rsplit("/", 1)[0]
    try:
        parse_root(folder)
    except ValueError:
        return  # not a root we could allow (the run will say why it is refused)
    roots = [*settings.allowed_input_roots, folder]
    os.environ["SCANFLOW_INPUT_ROOTS"] = json.dumps(roots)


def ui_run_url(settings: Settings, flow_run_id: str) -> str:
    base = os.environ.get("PREFECT_UI_URL") or os.environ.get(
        "PREFECT_API_URL", settings.api_url
    ).removesuffix("/api")
    return f"{base}/runs/flow-run/{flow_run_id}"


# -- commands ------------------------------------------------------------------------------


def cmd_up(args: argparse.Namespace, settings: Settings, stack: LocalStack) -> int:
    for part, state in stack.up().items():
        print(f"{part}: {state}")
    print(f"Prefect UI: {settings.ui_url}")
    return 0


def cmd_down(args: argparse.Namespace, settings: Settings, stack: LocalStack) -> int:
    for part, stopped in stack.down().items():
        print(f"{part}: {'stopped' if stopped else 'was not running'}")
    return 0


def cmd_server(args: argparse.Namespace, settings: Settings, stack: LocalStack) -> int:
    if args.action == "start":
        print(f"server: {stack.start_server()} at {settings.api_url} ({settings.database})")
    elif args.action == "stop":
        print(f"server: {'stopped' if stack.server.stop() else 'was not running'}")
    else:
        print(json.dumps(stack.status(), indent=2))
        return 0 if stack.healthy() else 3
    return 0


def cmd_sample(args: argparse.Namespace, settings: Settings, stack: LocalStack) -> int:
    from cv.synthetic import ScanSpec, render_scan

    out = Path(args.path)
    out.parent.mkdir(parents=True, exist_ok=True)
    render_scan(
        out,
        ScanSpec(
            width=args.width,
            height=args.height,
            fps=args.fps,
            duration_s=args.seconds,
            seed=args.seed,
            blurred=frozenset(range(30, 45)),
        ),
    )
    print(out)
    return 0


def cmd_process(args: argparse.Namespace, settings: Settings, stack: LocalStack) -> int:
    if _point_prefect_at(stack):
        stack.start_server()
    from prefect import tags
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from flows.process_scan import process_scan
    from tasks.options import ScanOptions

    uri = _to_uri(args.video)
    _allow_input(settings, uri)
    options = ScanOptions.model_validate_json(args.options) if args.options else None
    # A run called in this process sends no heartbeats: only deployment runs are watched
    # for missed ones (deployments/automations.py), and Prefect's heartbeat thread sleeps
    # in 1 s steps, so joining it would hold the run's end up to a second.
    no_heartbeats = temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})
    with tags("scanflow", "cli"), no_heartbeats:
        state = process_scan(
            scan_id=args.scan_id or _default_scan_id(uri),
            patient_id=args.patient_id,
            video_uri=uri,
            options=options,
            return_state=True,
        )
    if state.is_completed():
        print(state.result())
        return 0
    print(f"{state.name}: {state.message}", file=sys.stderr)
    return 1


async def submit_scan(
    settings: Settings,
    *,
    video_uri: str,
    patient_id: str,
    scan_id: str,
    options: dict[str, Any] | None = None,
    rerun: bool = False,
) -> Any:
    """Create a run of the process-scan deployment; the same scan gives the same run."""
    from prefect.client.orchestration import get_client

    params: dict[str, Any] = {"scan_id": scan_id, "patient_id": patient_id, "video_uri": video_uri}
    if options:
        params["options"] = options
    key = f"process-scan/{patient_id}/{scan_id}" + (f"@{time.time_ns()}" if rerun else "")
    async with get_client() as client:
        deployment = await client.read_deployment_by_name(settings.deployment)
        return await client.create_flow_run_from_deployment(
            deployment.id,
            parameters=params,
            name=scan_id,
            idempotency_key=key,
            tags=["scanflow", "cli"],
        )


async def wait_for_run(flow_run_id: Any, timeout: float) -> Any:
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    async with get_client() as client:
        while True:
            run = await client.read_flow_run(flow_run_id)
            if run.state and run.state.type.value in FINAL:
                return run
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"flow run {flow_run_id} not finished after {timeout:.0f} s "
                    f"(state {run.state.name if run.state else '?'})"
                )
            await asyncio.sleep(0.5)


def _report(settings: Settings, run: Any) -> int:
    state = run.state
    print(f"state: {state.name}")
    print(f"run:   {ui_run_url(settings, str(run.id))}")
    if state.type.value == "COMPLETED":
        from tasks.manifest import manifest_uri
        from tasks.storage import join

        params = run.parameters
        uri = manifest_uri(join(settings.results_root, params["patient_id"], params["scan_id"]))
        print(f"manifest: {uri}")
        return 0
    print(f"message: {state.message}")
    return 1


def cmd_submit(args: argparse.Namespace, settings: Settings, stack: LocalStack) -> int:
    _point_prefect_at(stack)
    uri = _to_uri(args.video)
    options = json.loads(args.options) if args.options else None
    run = asyncio.run(
        submit_scan(
            settings,
            video_uri=uri,
            patient_id=args.patient_id,
            scan_id=args.scan_id or _default_scan_id(uri),
            options=options,
            rerun=args.rerun,
        )
    )
    print(run.id)
    if args.wait:
        return _report(settings, asyncio.run(wait_for_run(run.id, args.timeout)))
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings, stack: LocalStack) -> int:
    _point_prefect_at(stack)
    started = time.monotonic()
    for part, state in stack.up().items():
        print(f"{part}: {state}")
    sample = settings.home.resolve() / "samples" / "sample-scan.mp4"
    if not sample.is_file():
        cmd_sample(
            argparse.Namespace(
                path=str(sample), width=640, height=480, fps=30.0, seconds=20.0, seed=7
            ),
            settings,
            stack,
        )
    run = asyncio.run(
        submit_scan(
            settings, video_uri=sample.as_uri(), patient_id="demo-patient", scan_id="sample-scan"
        )
    )
    print(f"submitted flow run {run.id}")
    finished = asyncio.run(wait_for_run(run.id, args.timeout))
    code = _report(settings, finished)
    print(f"results: {settings.results_root}/demo-patient/sample-scan/")
    print(f"done in {time.monotonic() - started:.1f} s")
    return code


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scanflow", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start the local server, pool, deployment and worker")
    sub.add_parser("down", help="stop the local worker and server")
    demo = sub.add_parser("demo", help="up, then process a sample scan through the deployment")
    demo.add_argument("--timeout", type=float, default=600)
    srv = sub.add_parser("server", help="the local Prefect server")
    srv.add_argument("action", choices=["start", "stop", "status"])
    srv.add_argument("--database", choices=["sqlite", "postgres"])
    for name, help_ in (
        ("process", "run the flow here, now"),
        ("submit", "create a run of the deployment through the API"),
    ):
        c = sub.add_parser(name, help=help_)
        c.add_argument("video", help="local path, file:// or s3:// URI")
        c.add_argument("--patient-id", default="anonymous")
        c.add_argument("--scan-id", default=None, help="default: from the file name")
        c.add_argument("--options", default=None, help="ScanOptions as JSON")
        if name == "submit":
            c.add_argument("--wait", action="store_true", help="wait and print the outcome")
            c.add_argument("--rerun", action="store_true", help="a new run even if submitted")
            c.add_argument("--timeout", type=float, default=600)
    s = sub.add_parser("sample", help="write a synthetic scan video")
    s.add_argument("path")
    s.add_argument("--seconds", type=float, default=20.0)
    s.add_argument("--width", type=int, default=640)
    s.add_argument("--height", type=int, default=480)
    s.add_argument("--fps", type=float, default=30.0)
    s.add_argument("--seed", type=int, default=7)
    _load_extensions(sub)
    return p


COMMANDS: dict[str, Any] = {
    "up": cmd_up,
    "down": cmd_down,
    "server": cmd_server,
    "sample": cmd_sample,
    "process": cmd_process,
    "submit": cmd_submit,
    "demo": cmd_demo,
}

# Command groups that live in modules of their own. Each module has
# ``register(sub) -> dict[str, handler]``: it adds its subparsers to ``sub`` and returns
# their handlers, each called as ``handler(args, settings, stack) -> exit code``.
EXTENSIONS: list[str] = ["deployments.automations_cli", "deployments.commands", "flows.model_cli"]


def _load_extensions(sub: Any) -> None:
    import importlib

    for name in EXTENSIONS:
        COMMANDS.update(importlib.import_module(name).register(sub))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "database", None):
        os.environ["SCANFLOW_DATABASE"] = args.database
    settings = Settings()
    stack = LocalStack(settings)
    if args.command in {"up", "demo"}:
        _point_prefect_at(stack)
    try:
        return int(COMMANDS[args.command](args, settings, stack))
    except Exception as exc:  # noqa: BLE001 - one clear line for the user, not a traceback
        from cv.errors import ScanError

        if isinstance(exc, ScanError | RuntimeError | TimeoutError):
            print(f"scanflow {args.command}: {exc}", file=sys.stderr)
            return 1
        raise


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
