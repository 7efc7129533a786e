"""A scan's flow run and its webhook event, built from Prefect's own objects without a
server: for the tests of the event contract and of the senders."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect.client.schemas.objects import FlowRun

from scanflow.contracts.events import WebhookEvent, build_event


def scan_run(**params: Any) -> FlowRun:
    """A ``process-scan`` run of scan-7 (patient pt-4417) started 42 s ago."""
    return FlowRun(
        id=uuid.uuid4(),
        flow_id=uuid.uuid4(),
        name="scan-7",
        parameters={
            "scan_id": "scan-7",
            "patient_id": "pt-4417",
            "video_uri": "s3://uploads/patients/pt-4417/scans/scan-7.mp4",
            **params,
        },
        start_time=datetime.now(UTC) - timedelta(seconds=42),
    )


def scan_event(state: Any, run: FlowRun | None = None, **kw: Any) -> WebhookEvent:
    """The event a state hook would send for ``state`` of ``run``."""
    run = run or scan_run()
    return build_event(run, state, source="hook", run_url=f"http://ui/runs/flow-run/{run.id}", **kw)
