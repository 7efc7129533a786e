"""The local commands' helpers and ``scanflow sample | submit`` (scanflow/cli/local.py), run
in-process through ``scanflow.cli.main.main``. ``submit`` goes to the session's real Prefect
server, to a process-scan deployment of this module's own on a pool no worker serves: the
runs stay Scheduled unless a test sets their state, which is how ``--wait`` is exercised
without running the flow (tests/system/test_deployment.py runs it on a worker)."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import pytest

from scanflow.cli.local import (
    _allow_input,
    _default_scan_id,
    is_local_api,
    submit_scan,
    ui_run_url,
)
from scanflow.cli.main import main
from scanflow.contracts.options import ID_PATTERN
from scanflow.settings import Settings
from tests.support.deployments import unserved_deployment


@pytest.mark.parametrize(
    ("uri", "scan_id"),
    [
        ("file:///data/scans/2025-05-01_scan.mp4", "2025-05-01_scan"),
        ("s3://uploads/patients/p/scans/s-1.MOV", "s-1"),
        ("file:///data/scan 1 (copy).mp4", "scan-1--copy"),
        ("file:///data/.hidden.mp4", "hidden"),
        ("file:///data/folder/", "folder"),
        ("file:///data/---.mp4", "scan"),
        ("file:///data/зуб.mp4", "scan"),
        ("s3://b/" + "a" * 80 + ".mp4", "a" * 64),
        ("file:///data/_draft.mp4", "draft"),
        ("file:///data/My%20Scan%20%282%29.mp4", "My-Scan--2"),
    ],
)
def test_the_default_scan_id_is_a_valid_id_from_the_file_name(uri: str, scan_id: str) -> None:
    assert _default_scan_id(uri) == scan_id
    assert re.match(ID_PATTERN, scan_id)


def test_a_local_api_is_the_settings_own(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(server_host="127.0.0.1", server_port=4321)
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4321/api/")
    assert is_local_api(settings)
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4322/api")
    assert not is_local_api(settings)
    monkeypatch.setenv("PREFECT_API_URL", "https://api.prefect.cloud/api/accounts/a/workspaces/w")
    assert not is_local_api(settings)
    monkeypatch.delenv("PREFECT_API_URL")
    assert not is_local_api(settings)


def test_the_run_link_uses_the_ui_url_else_the_apis_host(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(server_host="127.0.0.1", server_port=4321)
    monkeypatch.delenv("PREFECT_UI_URL", raising=False)
    monkeypatch.setenv("PREFECT_API_URL", "http://10.0.0.5:4200/api")
    assert ui_run_url(settings, "abc") == "http://10.0.0.5:4200/runs/flow-run/abc"
    monkeypatch.delenv("PREFECT_API_URL")
    assert ui_run_url(settings, "abc") == "http://127.0.0.1:4321/runs/flow-run/abc"
    monkeypatch.setenv("PREFECT_API_URL", "http://10.0.0.5:4200/api/")
    assert ui_run_url(settings, "abc") == "http://10.0.0.5:4200/runs/flow-run/abc"
    monkeypatch.setenv("PREFECT_API_URL", "https://api.prefect.cloud/api/accounts/a1/workspaces/w2")
    assert ui_run_url(settings, "abc") == (
        "https://app.prefect.cloud/account/a1/workspace/w2/runs/flow-run/abc"
    )
    monkeypatch.setenv("PREFECT_UI_URL", "https://prefect.example")
    assert ui_run_url(settings, "abc") == "https://prefect.example/runs/flow-run/abc"


@pytest.fixture
def input_roots(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """The process's input roots, restored after the test (``_allow_input`` changes them)."""
    roots = [tmp_path.as_uri()]
    monkeypatch.setenv("SCANFLOW_INPUT_ROOTS", json.dumps(roots))
    return roots


def test_process_allows_the_folder_of_the_input_it_is_given(input_roots: list[str]) -> None:
    _allow_input(Settings(), "file:///srv/scans/p/scan.mp4")
    roots = Settings().input_roots
    assert roots is not None and roots[0] == input_roots[0]
    assert roots[-1] == "file:///srv/scans/p"
    _allow_input(Settings(), "s3://uploads/patients/p/scans/s.mp4")
    assert Settings().input_roots[-1] == "s3://uploads/patients/p/scans"  # type: ignore[index]


@pytest.mark.parametrize("uri", ["file:///scan.mp4", "https://host/x/scan.mp4", "s3://B/x.mp4"])
def test_an_input_that_cannot_be_a_root_changes_nothing(input_roots: list[str], uri: str) -> None:
    before = Settings().input_roots
    _allow_input(Settings(), uri)
    assert Settings().input_roots == before


def test_sample_writes_a_video_of_the_asked_size(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "nested" / "sample.mp4"
    argv = ["sample", str(out), "--seconds", "1", "--width", "96", "--height", "64"]
    assert main([*argv, "--fps", "6", "--seed", "3"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        frames = list(container.decode(stream))
    assert (stream.codec_context.width, stream.codec_context.height) == (96, 64)
    assert len(frames) == 6


def test_a_bad_sample_size_is_one_line_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["sample", str(tmp_path / "odd.mp4"), "--seconds", "1", "--width", "95"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("scanflow sample: ") and "95" in err and "\n" not in err


# -- submit, against the session's server ----------------------------------------------------


@pytest.fixture
def deployment(prefect_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A process-scan deployment no worker serves, named by SCANFLOW_DEPLOYMENT."""
    with unserved_deployment("cli-local") as name:
        monkeypatch.setenv("SCANFLOW_DEPLOYMENT", name)
        yield name


async def _set_state(run_id: str, state: Any) -> None:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        await client.set_flow_run_state(run_id, state, force=True)


@pytest.mark.integration
def test_submit_keys_runs_by_patient_and_scan_and_reruns_on_request(deployment: str) -> None:
    settings = Settings()
    assert settings.deployment == deployment

    def submit(**kw: Any) -> Any:
        base = {"video_uri": "file:///tmp/x.mp4", "patient_id": "p-1", "scan_id": "s-1"}
        return asyncio.run(submit_scan(settings, **{**base, **kw}))

    first = submit(options={"max_frames": 40})
    assert first.parameters == {
        "scan_id": "s-1",
        "patient_id": "p-1",
        "video_uri": "file:///tmp/x.mp4",
        "options": {"max_frames": 40},
    }
    assert submit().id == first.id  # the same scan: the same run, whatever else changed
    other_patient = submit(patient_id="p-2")
    assert other_patient.id != first.id and "options" not in other_patient.parameters
    rerun, rerun_again = submit(rerun=True), submit(rerun=True)
    assert len({first.id, rerun.id, rerun_again.id}) == 3  # each rerun is a new run
    assert rerun.name == "s-1" and rerun.state.type.value == "SCHEDULED"


@pytest.mark.integration
def test_submit_waits_and_reports_the_outcome(
    deployment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from prefect.states import Completed, Failed

    argv = ["submit", "/tmp/scans/wait.mp4", "--patient-id", "p-9", "--scan-id", "w-1"]
    assert main([*argv, "--wait", "--timeout", "0.5"]) == 1  # nobody runs it: it waits
    out, err = capsys.readouterr()
    run_id = out.splitlines()[0]
    assert re.fullmatch(r"[0-9a-f-]{36}", run_id)
    assert f"flow run {run_id} not finished after 0 s (state Scheduled)" in err

    asyncio.run(_set_state(run_id, Completed()))
    assert main([*argv, "--wait", "--timeout", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == run_id  # submitted again: the same run
    assert lines[1] == "state: Completed"
    assert lines[2] == "run:   " + ui_run_url(Settings(), run_id)
    assert lines[3] == f"manifest: {Settings().results_root}/p-9/w-1/manifest.json"
    # another file under the same scan id: that run, and a note that says so
    assert main(["submit", "/tmp/scans/other.mp4", "--patient-id", "p-9", "--scan-id", "w-1"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == run_id
    assert err.strip() == (
        "note: scan w-1 was submitted before, from file:///tmp/scans/wait.mp4; this is that run "
        "(--rerun for a new run of it, --scan-id for another scan)"
    )

    assert main([*argv, "--rerun"]) == 0
    rerun_id = capsys.readouterr().out.strip()
    rejection = Failed(name="Rejected", message="[too_short] 1.0 s is under 3 s")
    asyncio.run(_set_state(rerun_id, rejection))
    from scanflow.cli.local import _report, wait_for_run

    rejected = asyncio.run(wait_for_run(rerun_id, 5))
    assert _report(Settings(), rejected) == 3  # the patient's to fix (README: exit codes)
    assert capsys.readouterr().out.splitlines()[-2:] == [
        "message: [too_short] 1.0 s is under 3 s",
        "reason: too_short (cause: patient; scan.rejected)",
    ]
    assert main([*argv, "--rerun"]) == 0
    failed_id = capsys.readouterr().out.strip()
    asyncio.run(_set_state(failed_id, Failed(message="[not_found] s3://u/x.mp4 is gone")))
    failed = asyncio.run(wait_for_run(failed_id, 5))
    assert _report(Settings(), failed) == 1  # ours (the integration's) to fix
    assert capsys.readouterr().out.splitlines()[-1] == (
        "reason: not_found (cause: integration; scan.failed)"
    )


@pytest.mark.integration
def test_submit_to_a_missing_deployment_is_an_error(
    prefect_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.exceptions import ObjectNotFound

    monkeypatch.setenv("SCANFLOW_DEPLOYMENT", "process-scan/nowhere-" + uuid.uuid4().hex[:6])
    with pytest.raises(ObjectNotFound):
        asyncio.run(
            submit_scan(Settings(), video_uri="file:///tmp/x.mp4", patient_id="p", scan_id="s")
        )
