"""The ops-report flow (flows/ops_report.py) on the session's Prefect server: four runs of
known outcomes (a rejection processed for real, acknowledged by a loopback platform; a
completed, a model failure and a crash set through the API on a deployment no worker
serves), then one report: counts by outcome and cause, the legs it could time, the
rejection reasons, the artifacts, the JSON report and a Slack digest without patient data."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from flows.ops_report import ops_report
from flows.process_scan import process_scan
from scanflow.local.loopback import Receiver
from scanflow.storage import store_for
from tests.support.deployments import unserved_deployment

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_server")]

SECRET = "whsec-ops-" + uuid.uuid4().hex


@pytest.fixture
def receivers(
    results_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Receiver, Receiver]]:
    platform = Receiver("platform", secret=SECRET).start()
    slack = Receiver("slack").start()
    monkeypatch.setenv("SCANFLOW_PLATFORM_WEBHOOK_URL", platform.url + "/scanflow/events")
    monkeypatch.setenv("SCANFLOW_PLATFORM_SIGNING_SECRET", SECRET)
    monkeypatch.setenv("SCANFLOW_SLACK_WEBHOOK_URL", slack.url + "/services/T0/B0/x")
    try:
        yield platform, slack
    finally:
        platform.stop()
        slack.stop()


def test_a_day_of_scans_by_outcome_cause_and_latency(
    receivers: tuple[Receiver, Receiver], tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort
    from prefect.states import Completed, Crashed, Failed

    platform, slack = receivers
    # The window opens now, not earlier: this process's server also holds the runs of the
    # tests before this one, and one that ended Failed a second ago was counted (in CI).
    since = datetime.now(UTC)
    tag = uuid.uuid4().hex[:6]
    patient = f"pt-ops-{tag}"
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    rejected = process_scan(f"ops-rej-{tag}", patient, empty.as_uri(), return_state=True)
    assert rejected.name == "Rejected"
    with unserved_deployment("ops") as name, get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(name)
        outcomes: list[tuple[str, Any]] = [
            ("done", Completed()),
            ("model", Failed(message="[model_error] the weights do not load")),
            ("crash", Crashed(message="[crashed] no heartbeat")),
        ]
        for scan, state in outcomes:
            params = {
                "scan_id": f"ops-{scan}-{tag}",
                "patient_id": patient,
                "video_uri": "s3://u/x",
            }
            run = client.create_flow_run_from_deployment(deployment.id, parameters=params)
            client.set_flow_run_state(run.id, state, force=True)
        report: dict[str, Any] = ops_report(since=since)

    assert report["by_outcome"] == {"Rejected": 1, "Completed": 1, "Failed": 1, "Crashed": 1}
    assert report["by_cause"] == {"patient": 1, "model": 1, "infrastructure": 1}
    assert report["rejections"] == [{"reason": "unreadable_video", "count": 1, "share": 1.0}]
    # only the rejection's upload exists and only its event was acknowledged
    assert report["latency"]["upload → run created"]["n"] == 1
    assert report["latency"]["ended → platform acknowledged"]["n"] == 1
    assert report["latency"]["upload → platform acknowledged"]["max_s"] > 0
    assert report["unacknowledged_final"] == 3
    assert {s["outcome"] for s in report["slowest"]} <= set(report["by_outcome"])
    saved = json.loads(store_for(report["report"]).get_bytes(report["report"]))
    assert saved["by_cause"] == report["by_cause"]

    [digest] = slack.records
    text = digest.json["text"]
    assert "4 runs" in text and "patient 1" in text and "unreadable_video 100%" in text
    assert patient not in text and tag not in text  # no patient, no scan ids
    with get_client(sync_client=True) as client:
        for key in ("ops-report", "ops-report-charts"):
            [latest] = client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                sort=ArtifactSort.CREATED_DESC,
                limit=1,
            )
            assert latest.data
        [charts] = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["ops-report-charts"])),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
        )
        assert "data:image/png;base64," in str(charts.data)
