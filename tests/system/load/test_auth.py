"""Basic auth on the server the project runs (SCANFLOW_SERVER_AUTH): the command line, the
worker and the Lambda trigger work with it, a client without it is refused, and the
credential shows up in no log and no command output."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from deployments.rehearsal.burst import (
    BUCKET,
    DEPLOYMENT,
    TRIGGER_DIR,
    BurstStack,
    render_media,
    s3_client,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OUTPUTS: list[str] = []  # every command's output, checked for the credential at the end


def _cli(stack: BurstStack, *args: str) -> subprocess.CompletedProcess[str]:
    out = stack.cli(*args)
    OUTPUTS.append(out.stdout + out.stderr)
    return out


@pytest.fixture(scope="module")
def upload(sqlite_stack: BurstStack) -> str:
    """A good scan in the uploads bucket; returns its key's folder."""
    media = render_media(sqlite_stack.home / "auth-media", 3.2, 160, 120)
    s3 = s3_client(sqlite_stack.s3_url)
    for scan in ("cli-submit", "cli-process", "lambda-direct"):
        s3.put_object(Bucket=BUCKET, Key=f"patients/auth-p/scans/{scan}.mp4", Body=media["good"])
    return f"s3://{BUCKET}/patients/auth-p/scans"


def test_clients_without_the_credential_are_refused(
    sqlite_stack: BurstStack, auth_string: str
) -> None:
    from prefect.client.orchestration import SyncPrefectClient

    api = sqlite_stack.api_url
    assert httpx.get(f"{api}/health", timeout=10).status_code == 200  # probes stay open
    user = auth_string.split(":", 1)[0]
    for auth in (None, (user, "wrong-password"), ("someone", auth_string.split(":", 1)[1])):
        r = httpx.post(f"{api}/flow_runs/filter", json={}, auth=auth, timeout=10)  # type: ignore[arg-type]
        assert r.status_code == 401, (auth is None, r.status_code)
    with sqlite_stack.http() as client:
        assert client.post("/flow_runs/filter", json={"limit": 1}).status_code == 200

    # Prefect's own client, given no credential, is refused too
    with SyncPrefectClient(api) as prefect, pytest.raises(httpx.HTTPStatusError) as refused:
        prefect.read_deployment_by_name(DEPLOYMENT)
    assert refused.value.response.status_code == 401


def test_command_line_submit_and_process_with_auth(sqlite_stack: BurstStack, upload: str) -> None:
    status = _cli(sqlite_stack, "server", "status")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["basic_auth"] is True

    # submit: a run of the deployment, taken by the worker (which needs the credential too)
    submitted = _cli(
        sqlite_stack,
        "submit",
        f"{upload}/cli-submit.mp4",
        "--patient-id",
        "auth-p",
        "--wait",
        "--timeout",
        "300",
    )
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    assert "state: Completed" in submitted.stdout

    # process: the flow in the command's own process, reporting to the server
    processed = _cli(sqlite_stack, "process", f"{upload}/cli-process.mp4", "--patient-id", "auth-p")
    assert processed.returncode == 0, processed.stdout + processed.stderr
    assert processed.stdout.strip().endswith("auth-p/cli-process/manifest.json")
    with sqlite_stack.http() as client:
        runs = client.post(
            "/flow_runs/filter", json={"flow_runs": {"name": {"any_": ["cli-process"]}}}
        ).json()
    assert [r["state"]["type"] for r in runs] == ["COMPLETED"]


def test_lambda_trigger_with_and_without_the_credential(
    sqlite_stack: BurstStack, upload: str, auth_string: str
) -> None:
    event = {
        "scan_id": "lambda-direct",
        "patient_id": "auth-p",
        "video_uri": f"{upload}/lambda-direct.mp4",
    }
    code = (
        "import json, sys\n"
        "from scanflow_trigger import handler\n"
        "from scanflow_trigger.errors import AuthError\n"
        "try:\n"
        "    print(json.dumps(handler.handler(json.loads(sys.argv[1]))))\n"
        "except AuthError as exc:\n"
        "    print(json.dumps({'auth_error': str(exc)}))\n"
    )

    def invoke(credential: str) -> dict[str, object]:
        # in a process of its own, as Lambda runs it: the trigger's environment only
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "SCANFLOW_"))}
        env.update(sqlite_stack.trigger_env(), PREFECT_API_AUTH_STRING=credential)
        out = subprocess.run(
            [sys.executable, "-c", code, json.dumps(event)],
            cwd=TRIGGER_DIR,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        OUTPUTS.append(out.stdout + out.stderr)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]

    refused = invoke(auth_string.split(":", 1)[0] + ":not-the-password")
    assert "HTTP 401" in str(refused["auth_error"])
    accepted = invoke(auth_string)
    assert accepted["status"] == "accepted"
    (run,) = accepted["runs"]  # type: ignore[misc]
    assert run["created"] is True
    with sqlite_stack.http() as client:
        stored = client.get(f"/flow_runs/{run['flow_run_id']}").json()
    assert stored["parameters"] == event


def test_the_credential_is_in_no_log_and_no_output(
    sqlite_stack: BurstStack, auth_string: str
) -> None:
    password = auth_string.split(":", 1)[1]
    token = base64.b64encode(auth_string.encode()).decode()
    texts = {f"output {i}": text for i, text in enumerate(OUTPUTS)}
    for path in Path(sqlite_stack.home, "logs").glob("*.log"):
        texts[str(path)] = path.read_text(errors="replace")
    logs: list[dict[str, str]] = []
    with sqlite_stack.http() as client:  # run logs as the Prefect UI shows them
        while page := client.post("/logs/filter", json={"offset": len(logs)}).json():
            logs.extend(page)
    texts["run logs"] = "\n".join(entry["message"] for entry in logs)
    assert logs and OUTPUTS
    for where, text in texts.items():
        assert password not in text, where
        assert token not in text, where
