"""Hostile uploads through the deployment and the worker (as the Lambda submits them): each
ends Failed with its reason, and the worker goes on serving: a good scan sent after them
completes."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from cv.errors import reason_from_message
from cv.synthetic import SyntheticScan
from scanflow.cli.local import submit_scan, wait_for_run
from scanflow.settings import Settings
from tests.system.hostile.corpus import Case
from tests.system.hostile.report import record

pytestmark = [pytest.mark.integration, pytest.mark.slow]

THROUGH_THE_WORKER = ("bomb_dims_h264", "bomb_dims_png", "bomb_dims_midstream", "two_hours")


async def _submit_all(settings: Settings, uploads: dict[str, str]) -> dict[str, Any]:
    runs = {}
    for scan_id, uri in uploads.items():
        run = await submit_scan(
            settings, video_uri=uri, patient_id="patient-hostile-w", scan_id=scan_id, rerun=True
        )
        runs[scan_id] = run.id
    return runs


@pytest.mark.usefixtures("local_stack")
def test_the_worker_keeps_serving_after_hostile_uploads(
    corpus: dict[str, Case], good_scan: SyntheticScan
) -> None:
    settings = Settings()
    uploads = {f"worker-{name}": corpus[name].path.as_uri() for name in THROUGH_THE_WORKER}
    uploads["worker-good-after"] = good_scan.path.as_uri()
    started = time.monotonic()
    runs = asyncio.run(_submit_all(settings, uploads))
    finals = {
        scan_id: asyncio.run(wait_for_run(run_id, timeout=300)) for scan_id, run_id in runs.items()
    }
    for name in THROUGH_THE_WORKER:
        run = finals[f"worker-{name}"]
        reason = reason_from_message(run.state.message)
        assert run.state.type.value == "FAILED", run.state
        assert reason is not None and reason.value == corpus[name].expected, run.state.message
        record(name, **{"via worker": f"{run.state.name} [{reason.value}]"})
    good = finals["worker-good-after"]
    assert good.state.type.value == "COMPLETED", good.state.message
    assert time.monotonic() - started < 300
