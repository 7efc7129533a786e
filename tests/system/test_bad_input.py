"""Bad uploads end as Failed runs whose message carries a reason code and a clear cause.

A rejection (the patient's to fix) ends in a Failed state named ``Rejected``, is not
retried, logs one line with the reason, the message and the guidance, and no traceback: not
in the run's logs on the server, not in what ``scanflow process`` prints (exit code 3). A
failure that is ours (here ``not_found``: the integration's) keeps its traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cv.synthetic import ScanSpec, SyntheticScan, render_scan
from flows.process_scan import process_scan

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_server")]


def _bad_inputs(tmp: Path, good: SyntheticScan) -> dict[str, tuple[Path, str, str]]:
    empty = tmp / "empty.mp4"
    empty.write_bytes(b"")
    text = tmp / "text.mp4"
    text.write_text("not a video at all\n" * 100)
    cut = tmp / "cut.mp4"
    cut.write_bytes(good.path.read_bytes()[: good.path.stat().st_size // 2])
    blurry = render_scan(
        tmp / "blurry.mp4", ScanSpec(duration_s=5, seed=9, blurred=frozenset(range(75)))
    ).path
    return {
        "empty": (empty, "unreadable_video", "empty"),
        "text": (text, "unreadable_video", "not a readable video"),
        "truncated": (cut, "unreadable_video", "bad-truncated.mp4"),  # named after the scan
        "missing": (tmp / "never-uploaded.mp4", "not_found", "never-uploaded.mp4"),
        "blurry": (blurry, "too_few_usable_frames", "closer"),
    }


def _run_and_logs(flow_run_id: Any) -> tuple[Any, list[str]]:
    """The run as the server has it, and every log line of the run and its tasks."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
        only_this_run = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
        logs = client.read_logs(only_this_run, limit=200)
    return run, [log.message for log in logs]


@pytest.mark.parametrize(
    ("case", "cause"),
    [
        ("empty", "patient"),
        ("text", "patient"),
        ("truncated", "patient"),
        ("missing", "integration"),
        ("blurry", "patient"),
    ],
)
def test_bad_input_fails_with_a_reason(
    case: str, cause: str, tmp_path: Path, good_scan: SyntheticScan, results_dir: Path
) -> None:
    path, reason, words = _bad_inputs(tmp_path, good_scan)[case]
    state = process_scan(f"bad-{case}", "patient-bad", path.as_uri(), return_state=True)
    assert state.is_failed(), state
    assert f"[{reason}]" in state.message
    assert words in state.message
    # nothing half-published: no manifest for a failed scan
    assert not (results_dir / "patient-bad" / f"bad-{case}" / "manifest.json").exists()
    run, logs = _run_and_logs(state.state_details.flow_run_id)
    assert run.run_count == 1  # never retried
    assert f"cause:{cause}" in run.tags  # the UI filters runs by it
    tracebacks = [line for line in logs if "Traceback (most recent call last)" in line]
    if cause == "patient":
        assert state.name == "Rejected"
        assert not tracebacks, tracebacks[0]
        [line] = [line for line in logs if f"rejected [{reason}]" in line]
        assert words in line
        if case == "blurry":  # the verdict's guidance, on the same line
            assert "closer" in line
    else:  # ours to fix: the traceback helps whoever does
        assert state.name == "Failed"
        assert tracebacks and not any("rejected [" in line for line in logs)


@pytest.mark.parametrize(("content", "longest"), [(b"", 20), (b"\x00\x17junk" * 512, 20)])
def test_scanflow_process_answers_a_rejection_in_a_few_lines_and_exit_code_3(
    content: bytes, longest: int, tmp_path: Path, results_dir: Path
) -> None:
    """A 0-byte upload printed 72 lines with two tracebacks, 4 KB of noise 115 with four."""
    upload = tmp_path / "upload.mp4"
    upload.write_bytes(content)
    done = subprocess.run(
        [sys.executable, "-m", "scanflow.cli.main", "process", str(upload), "--patient-id", "p"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    printed = done.stdout + done.stderr
    assert done.returncode == 3, printed
    assert "Traceback" not in printed and "RejectedScan(" not in printed
    assert len(printed.splitlines()) <= longest, printed
    assert "reason: unreadable_video (cause: patient; scan.rejected)" in done.stderr


def test_invalid_ids_are_refused(good_scan: SyntheticScan, results_dir: Path) -> None:
    state = process_scan("../escape", "patient-x", good_scan.path.as_uri(), return_state=True)
    assert state.is_failed()
    assert "scan_id" in state.message
    assert not any(results_dir.rglob("*"))
