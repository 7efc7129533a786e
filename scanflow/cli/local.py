"""The embedded default and scans: ``scanflow up | down | demo | server | process | submit |
sample``."""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import json
import os
import re
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import unquote

from prefect import tags
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

from cv.synthetic import ScanSpec, render_scan
from flows.process_scan import process_scan
from scanflow.access import parse_root
from scanflow.cli.progress import Followed, follow
from scanflow.contracts.events import EventType, classify
from scanflow.contracts.manifest import manifest_uri
from scanflow.contracts.options import ScanOptions
from scanflow.local.stack import LocalStack
from scanflow.settings import Settings
from scanflow.storage import join, store_for, to_uri
from tasks._progress import progress_key

FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}

# `scanflow process` and `scanflow submit --wait` exit with the scan's outcome (README):
EXIT_COMPLETED = 0
EXIT_FAILED = 1  # ours to fix: failed, crashed, cancelled, stalled (2 is a usage error)
EXIT_REJECTED = 3  # the patient's to fix: a re-scan is needed
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT): the run is marked Cancelled


def exit_code(state: Any) -> int:
    """The exit code for a run's final state."""
    if state.type.value == "COMPLETED":
        return EXIT_COMPLETED
    if state.type.value not in FINAL:
        return EXIT_FAILED
    event_type, _ = classify(state.type.value, state.name, state.message)
    return EXIT_REJECTED if event_type is EventType.REJECTED else EXIT_FAILED


def _outcome_lines(state: Any) -> list[str]:
    """The reason code and its cause, for a run that did not complete."""
    event_type, reason = classify(state.type.value, state.name, state.message)
    if reason is None:
        return []
    return [f"reason: {reason.value} (cause: {reason.cause.value}; {event_type.value})"]


def is_local_api(settings: Settings) -> bool:
    """Does this process talk to the local server (rather than an API it was given)?"""
    return os.environ.get("PREFECT_API_URL", "").rstrip("/") == settings.api_url


def _default_scan_id(uri: str) -> str:
    """A valid scan id from the file's name (percent-decoded: a URI's spaces are %20)."""
    stem = unquote(Path(uri.rstrip("/")).stem) or "scan"
    return re.sub(r"[^A-Za-z0-9_.-]", "-", stem).strip("-._")[:64].rstrip("-._") or "scan"


def _allow_input(settings: Settings, uri: str) -> None:
    """``scanflow process`` reads what its user names: the input's folder joins the allowed
    input roots of this process (never a worker's)."""
    folder = uri.rsplit("/", 1)[0]
    try:
        parse_root(folder)
    except ValueError:
        return  # not a root we could allow (the run will say why it is refused)
    roots = [*settings.allowed_input_roots, folder]
    os.environ["SCANFLOW_INPUT_ROOTS"] = json.dumps(roots)


_CLOUD_API = re.compile(r"^https://api\.prefect\.cloud/api/accounts/([^/]+)/workspaces/([^/]+)$")


def ui_run_url(settings: Settings, flow_run_id: str) -> str:
    """The run's page: PREFECT_UI_URL, else the UI of the API in use (Prefect Cloud's app
    for a Cloud workspace, the server itself otherwise)."""
    base = os.environ.get("PREFECT_UI_URL", "").rstrip("/")
    if not base:
        api = os.environ.get("PREFECT_API_URL", settings.api_url).rstrip("/")
        cloud = _CLOUD_API.match(api)
        base = (
            f"https://app.prefect.cloud/account/{cloud[1]}/workspace/{cloud[2]}"
            if cloud
            else api.removesuffix("/api")
        )
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
        state = stack.start_server()
        print(f"server: {state} at {settings.api_url} ({settings.database})")
        if stack.scaled:
            replicas = " ".join(map(str, stack.replica_pids()))
            print(f"  API replicas (pids {replicas}) on port {settings.server_port}")
            print(f"  services: pid {stack.services.pid()}; messaging: Redis")
    elif args.action == "stop":
        print(f"server: {'stopped' if stack.stop_server() else 'was not running'}")
    else:
        print(json.dumps(stack.status(), indent=2))
        return 0 if stack.healthy() else 3
    return 0


def cmd_sample(args: argparse.Namespace, settings: Settings, stack: LocalStack) -> int:
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
    if is_local_api(settings):
        stack.start_server()
    uri = to_uri(args.video)
    _allow_input(settings, uri)
    options = ScanOptions.model_validate_json(args.options) if args.options else None
    # A run called in this process sends no heartbeats: only deployment runs are watched
    # for missed ones (deployments/automations.py), and Prefect's heartbeat thread sleeps
    # in 1 s steps, so joining it would hold the run's end up to a second.
    no_heartbeats = temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})
    scan_id = args.scan_id or _default_scan_id(uri)
    started = datetime.now(UTC) - timedelta(seconds=1)
    outcome: list[Any] = []

    def run() -> None:
        with tags("scanflow", "cli"), no_heartbeats:
            outcome.append(
                process_scan(
                    scan_id=scan_id,
                    patient_id=args.patient_id,
                    video_uri=uri,
                    options=options,
                    return_state=True,
                )
            )

    # the flow in a thread of its own, its progress artifact followed from this one
    worker = threading.Thread(target=contextvars.copy_context().run, args=(run,), daemon=True)
    worker.start()
    followed = Followed()
    try:
        follow(progress_key(scan_id), started, lambda: not worker.is_alive(), followed=followed)
        worker.join()
    except KeyboardInterrupt:
        _interrupted(followed.flow_run_id)
    if not outcome:
        print("scanflow process: the flow ended without a state", file=sys.stderr)
        return 1
    state = outcome[0]
    print(
        f"{state.name} in {(datetime.now(UTC) - started).total_seconds() - 1:.1f} s",
        file=sys.stderr,
    )
    if state.is_completed():
        manifest = str(state.result())
        print(f"report: {manifest.rsplit('/', 1)[0]}/report.html", file=sys.stderr)
        print(manifest)
        return EXIT_COMPLETED
    print(f"{state.name}: {state.message}", file=sys.stderr)
    for line in _outcome_lines(state):
        print(line, file=sys.stderr)
    return exit_code(state)


def _interrupted(flow_run_id: Any) -> NoReturn:
    """Ctrl-C during ``scanflow process``: the flow's thread dies with this process, so its
    run is marked Cancelled here (the automations tell the platform), not left Running; the
    process then ends at once (Prefect's exit handlers would wait on the flow's thread and
    print its interrupted work)."""
    from prefect.states import Cancelled

    if flow_run_id is None:
        print("interrupted before the run started", file=sys.stderr)
    else:
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(
                flow_run_id,
                Cancelled(message="interrupted on the command line (Ctrl-C)"),
                force=True,
            )
        print(f"interrupted: run {flow_run_id} cancelled", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_INTERRUPTED)


def cmd_reconcile(args: argparse.Namespace, settings: Settings, stack: LocalStack) -> int:
    """One pass of the reconcile flow, here and now; exit 1 when gaps are left unhealed."""
    from flows.reconcile import reconcile

    if is_local_api(settings):
        stack.start_server()
    no_heartbeats = temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})
    with tags("scanflow", "cli"), no_heartbeats:
        ledger = reconcile(since=args.since, until=args.until, dry_run=args.dry_run)
    if args.json:
        print(json.dumps(ledger, indent=1))
    else:
        print(f"window:  {ledger['window']['since']} .. {ledger['window']['until']}")
        print(f"uploads: {ledger['uploads']}   runs: {ledger['runs']} {ledger['runs_by_state']}")
        for kind, n in ledger["gaps_by_kind"].items():
            print(f"gap {kind}: {n['found']} found, {n['healed']} healed")
        print(f"report:  {ledger['report']}")
    left = ledger["gaps_found"] - ledger["gaps_healed"]  # a dry run heals nothing
    return 1 if left else 0


def cmd_report(args: argparse.Namespace, settings: Settings, stack: LocalStack) -> int:
    """<results>/<patient>/report.html: the patient's completed scans on one page."""
    from scanflow.report import REPORT_NAME, patient_report
    from tasks.tracking import completed_scans

    scans = completed_scans(settings.results_root, args.patient)
    if not scans:
        print(f"scanflow report: no completed scan of {args.patient}", file=sys.stderr)
        return 1
    uri = join(settings.results_root, args.patient, REPORT_NAME)
    page = patient_report(args.patient, scans).encode()
    store_for(uri).put_bytes(uri, page, "text/html; charset=utf-8")
    print(f"{len(scans)} scans: {uri}")
    return 0


def cmd_backfill(args: argparse.Namespace, settings: Settings, stack: LocalStack) -> int:
    """The backfill flow, here, driving runs on the backfill queue; exit 1 when a scan was
    not completed (started again, it resumes)."""
    from flows.backfill import backfill
    from scanflow.models.registry import REPO_MODELS, resolve_model

    model = None
    if args.model:
        registry = to_uri(settings.model_registry_uri or str(REPO_MODELS))
        try:
            model = resolve_model(to_uri(args.model) if "@" not in args.model else args.model,
                                  registry, settings.models_dir)  # fmt: skip
        except ValueError as exc:
            print(f"scanflow backfill: {exc}", file=sys.stderr)
            return 2
    if is_local_api(settings):
        stack.up()  # the worker serves the backfill queue
    no_heartbeats = temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})
    with tags("scanflow", "cli"), no_heartbeats:
        report = backfill(
            model=model, since=args.since, patient_id=args.patient, timeout_s=args.timeout
        )
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        for r in report["runs"]:
            print(f"{r['patient_id']}/{r['scan_id']:24s} {r['state']:12s} {r['seconds']:7.1f} s")
        m = report["model"]
        print(
            f"model {m['name']} {m['version']} ({report['why']}), code {report['code_version']}: "
            f"{report['selected']} selected, {report['skipped']} already done, "
            f"{report['processed']} processed, {report['not_completed']} not completed"
        )
        print(f"report: {report['report']}")
    return 1 if report["not_completed"] else 0


def cmd_ops_report(args: argparse.Namespace, settings: Settings, stack: LocalStack) -> int:
    """The operations report, here and now."""
    from flows.ops_report import digest_text, ops_report

    if is_local_api(settings):
        stack.start_server()
    no_heartbeats = temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})
    with tags("scanflow", "cli"), no_heartbeats:
        report = ops_report(since=args.since, until=args.until)
    print(json.dumps(report, indent=1) if args.json else digest_text(report).replace("*", ""))
    if not args.json:
        print(f"report: {report['report']}")
    return 0


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
        params = run.parameters
        uri = manifest_uri(join(settings.results_root, params["patient_id"], params["scan_id"]))
        print(f"manifest: {uri}")
        print(f"report:   {uri.rsplit('/', 1)[0]}/report.html")
        return EXIT_COMPLETED
    print(f"message: {state.message}")
    for line in _outcome_lines(state):
        print(line)
    return exit_code(state)


def cmd_submit(args: argparse.Namespace, settings: Settings, stack: LocalStack) -> int:
    uri = to_uri(args.video)
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
    earlier = run.parameters.get("video_uri")
    if earlier != uri:  # the scan's run from an earlier submission (the same key)
        print(
            f"note: scan {run.parameters.get('scan_id')} was submitted before, from {earlier}; "
            "this is that run (--rerun for a new run of it, --scan-id for another scan)",
            file=sys.stderr,
        )
    if args.wait:
        deadline = time.monotonic() + args.timeout

        def final() -> bool:
            with get_client(sync_client=True) as client:
                state = client.read_flow_run(run.id).state
            return bool(state and state.type.value in FINAL) or time.monotonic() > deadline

        follow(progress_key(run.name), run.created or datetime.now(UTC), final)
        return _report(settings, asyncio.run(wait_for_run(run.id, args.timeout)))
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings, stack: LocalStack) -> int:
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
