"""A local stack of its own whose worker holds distinctive secrets, for the leak and replay
tests: the platform signing secret (in settings), the Slack webhook URL (in a Secret block,
as deployments keep it), and S3 credentials; inputs and results on moto's S3, plus a local
uploads folder. Real HTTP receivers on loopback stand in for the platform and Slack.

The runs it makes through the deployment (all hooks deliver every outcome):

- ``ok``: a good scan at ``patients/pt-leak-1/scans/scan-leak-ok.mp4`` whose container tags
  and S3 object metadata carry a real name, a birth date and a location;
- ``bad``: text uploaded as ``patients/pt-leak-1/scans/scan-leak-bad.mp4`` (rejected);
- ``named``: a damaged video in the uploads folder whose *file name* is a real name
  (rejected: the decoder's messages must not repeat the name);
- ``denied``: another patient's key (refused before reading).

Never the session's shared stack: these secrets must not reach other tests' runs.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import av

from scanflow.local.loopback import Receiver
from scanflow.local.sandbox import Sandbox

_TAG = uuid.uuid4().hex[:12]
SIGNING_SECRET = f"whsec-CANARY-sign-{_TAG}"
SLACK_TOKEN = f"xoxb-CANARY-slack-{_TAG}"
AWS_KEY_ID = f"AKIACANARY{_TAG.upper()}"
AWS_SECRET = f"CANARY-aws-secret-{_TAG}"
SECRETS = (SIGNING_SECRET, SLACK_TOKEN, AWS_KEY_ID, AWS_SECRET)

# What must never show: a name, a birth date and a place, as uploads may carry them.
REAL_NAME = "Jane Roe"
NAMED_FILE = "Jane-Roe-1984-03-02-scan.mp4"
PERSONAL = ("Jane Roe", "Jane-Roe", "Jane_Roe", "1984-03-02", "+48.8584+002.2945")

PATIENT = "pt-leak-1"
OTHER_PATIENT = "pt-leak-2"
ALL_EVENTS = ["scan.completed", "scan.rejected", "scan.failed", "scan.crashed", "scan.stalled"]


def _tagged_copy(src: Path, dest: Path) -> Path:
    """``src`` remuxed with a real name, a birth date and a place in its container tags."""
    with av.open(str(src)) as inp, av.open(str(dest), "w") as out:
        out.metadata.update(
            {
                "title": f"{REAL_NAME} 1984-03-02",
                "artist": REAL_NAME,
                "comment": f"patient {REAL_NAME}, born 1984-03-02",
                "location": "+48.8584+002.2945/",
            }
        )
        stream = out.add_stream_from_template(inp.streams.video[0])
        for packet in inp.demux(inp.streams.video[0]):
            if packet.dts is None:
                continue
            packet.stream = stream
            out.mux(packet)
    return dest


class LeakWorld(Sandbox):
    """The stack, its receivers and buckets, and the runs it made (by case)."""

    def __init__(self, platform: Receiver, slack: Receiver, s3_endpoint: str) -> None:
        tag = uuid.uuid4().hex[:8]
        self.uploads_bucket, self.results_bucket = f"leak-uploads-{tag}", f"leak-results-{tag}"
        super().__init__(
            "leak",
            env={
                "AWS_ENDPOINT_URL_S3": s3_endpoint,
                "AWS_ACCESS_KEY_ID": AWS_KEY_ID,
                "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
                "AWS_DEFAULT_REGION": "us-east-1",
            },
        )
        self.uploads_dir = self.home / "uploads"
        self.uploads_dir.mkdir()
        self.env.update(
            {
                "SCANFLOW_RESULTS_URI": f"s3://{self.results_bucket}/results",
                "SCANFLOW_INPUT_ROOTS": json.dumps(
                    [f"s3://{self.uploads_bucket}/patients", self.uploads_dir.as_uri()]
                ),
                "SCANFLOW_PLATFORM_WEBHOOK_URL": platform.url + "/scanflow/events",
                "SCANFLOW_PLATFORM_SIGNING_SECRET": SIGNING_SECRET,
                "SCANFLOW_SLACK_EVENTS": json.dumps(ALL_EVENTS),
            }
        )
        self.platform, self.slack = platform, slack
        self.runs: dict[str, uuid.UUID] = {}
        self.finals: dict[str, Any] = {}

    def stop(self) -> None:
        self.down()
        self.platform.stop()
        self.slack.stop()

    # -- what the UI and the logs show -------------------------------------------------
    def ui_texts(self) -> dict[str, str]:
        """Everything the Prefect API serves to its UI about these runs, as JSON text."""
        import httpx
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter

        ids = list(self.runs.values())
        out: dict[str, str] = {}
        with self.client() as client:
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids))
            )
            for run in runs:
                out[f"flow run {run.name}"] = run.model_dump_json()
                for state in client.read_flow_run_states(run.id):
                    out[f"state {run.name} {state.name}"] = state.model_dump_json()
            all_runs = client.read_flow_runs(limit=200)  # notify-outcome runs too
            out["all flow runs"] = json.dumps([r.model_dump(mode="json") for r in all_runs])
            out["task runs"] = json.dumps(
                [t.model_dump(mode="json") for t in client.read_task_runs(limit=200)]
            )
            logs = client.read_logs(LogFilter(), limit=200)
            offset = 200
            while True:
                more = client.read_logs(LogFilter(), limit=200, offset=offset)
                if not more:
                    break
                logs += more
                offset += 200
            out["run logs"] = "\n".join(f"{log.name}: {log.message}" for log in logs)
            out["artifacts"] = json.dumps(
                [a.model_dump(mode="json") for a in client.read_artifacts()]
            )
            out["deployments"] = json.dumps(
                [d.model_dump(mode="json") for d in client.read_deployments()]
            )
            out["work pools"] = json.dumps(
                [p.model_dump(mode="json") for p in client.read_work_pools()]
            )
            # as the UI reads them (the client's default, include_secrets=True, is not)
            blocks = client.read_block_documents(include_secrets=False)
            out["blocks"] = json.dumps([b.model_dump(mode="json") for b in blocks])
            out["variables"] = json.dumps(
                [v.model_dump(mode="json") for v in client.read_variables()]
            )
        pages: list[str] = []
        page = httpx.post(f"{self.api_url}/events/filter", json={"limit": 50}, timeout=30)
        while True:
            page.raise_for_status()
            pages.append(page.text)
            following = page.json().get("next_page")
            if not following or len(pages) >= 100:
                break
            page = httpx.get(following, timeout=30)
        out["events"] = "\n".join(pages)
        return out

    def log_files(self) -> dict[str, str]:
        return {
            f"log file {p.name}": p.read_text(errors="replace")
            for p in (self.home / "logs").glob("*.log")
        }


def start_leak_world(s3_endpoint: str, good_scan: Path) -> LeakWorld:
    import boto3

    platform = Receiver(secret=SIGNING_SECRET).start()
    slack = Receiver().start()
    world = LeakWorld(platform, slack, s3_endpoint)
    uploads, results, uploads_dir, home = (
        world.uploads_bucket,
        world.results_bucket,
        world.uploads_dir,
        world.home,
    )
    try:
        world.up()
        saved = world.cli(
            "secrets", "set", "slack-webhook-url", stdin=f"{slack.url}/services/T0/B0/{SLACK_TOKEN}"
        )
        assert saved.returncode == 0, saved.stdout + saved.stderr

        s3 = boto3.client("s3", endpoint_url=s3_endpoint)  # the test's own credentials
        s3.create_bucket(Bucket=uploads)
        s3.create_bucket(Bucket=results)
        tagged = _tagged_copy(good_scan, home / "tagged.mp4")
        personal = {"original-filename": NAMED_FILE, "patient-name": REAL_NAME.replace(" ", "-")}
        s3.upload_file(
            str(tagged),
            uploads,
            f"patients/{PATIENT}/scans/scan-leak-ok.mp4",
            ExtraArgs={"Metadata": personal},
        )
        s3.put_object(
            Bucket=uploads,
            Key=f"patients/{PATIENT}/scans/scan-leak-bad.mp4",
            Body=b"not a video\n" * 100,
            Metadata=personal,
        )
        data = good_scan.read_bytes()
        (uploads_dir / NAMED_FILE).write_bytes(data[: len(data) // 2])  # cut short
        submit = {
            "ok": ("scan-leak-ok", f"s3://{uploads}/patients/{PATIENT}/scans/scan-leak-ok.mp4"),
            "bad": ("scan-leak-bad", f"s3://{uploads}/patients/{PATIENT}/scans/scan-leak-bad.mp4"),
            "named": ("scan-leak-named", (uploads_dir / NAMED_FILE).as_uri()),
            "denied": (
                "scan-leak-denied",
                f"s3://{uploads}/patients/{OTHER_PATIENT}/scans/scan-leak-ok.mp4",
            ),
        }
        with world.client() as client:
            deployment = client.read_deployment_by_name("process-scan/local")
            for case, (scan_id, uri) in submit.items():
                run = client.create_flow_run_from_deployment(
                    deployment.id,
                    parameters={"scan_id": scan_id, "patient_id": PATIENT, "video_uri": uri},
                    name=scan_id,
                    tags=["scanflow", "leak"],
                )
                world.runs[case] = run.id
            deadline = time.monotonic() + 300
            for case, run_id in world.runs.items():
                while True:
                    run = client.read_flow_run(run_id)
                    if run.state and run.state.is_final():
                        world.finals[case] = run
                        break
                    assert time.monotonic() < deadline, f"{case}: still {run.state}"
                    time.sleep(0.5)
        # the hooks deliver right after the final state: wait for every outcome
        while time.monotonic() < deadline:
            scans = {r.json.get("scan_id") for r in platform.records if r.status == 200}
            posted = len(slack.records)
            if len(scans) >= len(submit) and posted >= len(submit):
                break
            time.sleep(0.3)
    except BaseException:
        world.stop()
        raise
    return world
