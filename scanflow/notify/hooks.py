"""The fast path: process-scan's state hooks report its outcome from the run's own process
(or, for on_crashed and on_cancellation, from the worker that saw it end).

They never raise and never change the run's state. What they cannot do (the process was
killed with its worker, the run stalled) is the automations' job (deployments/automations.py).
"""

from __future__ import annotations

from typing import Any

from cv.errors import ScanError
from scanflow.contracts.events import build_event
from scanflow.notify.senders import (
    FAST,
    manifest_for,
    resolve_targets,
    run_url,
    send_platform,
    send_slack,
    tag_cause,
)
from scanflow.settings import Settings


def _fresh(flow_run: Any) -> Any:
    """The run as the server has it now (start time, parameters); the hook's copy may lag."""
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            return client.read_flow_run(flow_run.id)
    except Exception:  # noqa: BLE001 - the copy we were given will do
        return flow_run


def _guidance(state: Any) -> str | None:
    try:
        exc = state.result(raise_on_failure=False)
    except Exception:  # noqa: BLE001 - not in this process (on_crashed), or no result
        return None
    return exc.guidance if isinstance(exc, ScanError) else None


def send_outcome(flow: Any, flow_run: Any, state: Any) -> None:
    """on_completion / on_failure / on_crashed / on_cancellation of process-scan."""
    from prefect.logging.loggers import flow_run_logger

    log = flow_run_logger(flow_run, flow)
    try:
        settings = Settings()
        run = _fresh(flow_run)
        event = build_event(
            run,
            state,
            source="hook",
            run_url=run_url(run.id),
            manifest_uri=manifest_for(settings, run.parameters or {}),
            guidance=_guidance(state),
        )
    except Exception:  # noqa: BLE001 - a hook must not fail the run
        log.exception("notify: could not build the outcome event")
        return
    try:
        tag_cause(run, event)
    except Exception as exc:  # noqa: BLE001 - the automation path tags it too
        log.warning("notify: could not tag the run with its cause: %s", exc)
    try:
        targets = resolve_targets(settings)
    except Exception:  # noqa: BLE001 - a hook must not fail the run
        log.exception("notify: could not resolve where outcomes go")
        return
    if not targets.platform_url and not targets.any_slack:
        return
    for send in (send_platform, send_slack):
        try:
            send(event, targets, FAST, log)
        except Exception as exc:  # noqa: BLE001 - the automation path delivers it
            log.error("notify: %s (the notify-outcome automation will retry)", exc)
