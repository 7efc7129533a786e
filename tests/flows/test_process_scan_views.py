"""What people see of a scan while and after it runs, on the session's server: the run's
markdown artifact with its pictures (and how it renders in the Prefect UI, in headless
Chromium), a rejected scan's frames behind the verdict, the progress artifact, and the
command line's progress lines rising to 100 %."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client

from cv.synthetic import ScanSpec, SyntheticScan, render_scan
from flows.process_scan import process_scan
from scanflow.cli.main import main

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_server")]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DATA_JPEG = "data:image/jpeg;base64,"


async def _artifacts(run_id: Any) -> list[Any]:
    async with get_client() as client:
        found = await client.read_artifacts()
    return [a for a in found if str(a.flow_run_id) == str(run_id)]


def _run_artifacts(state: Any) -> list[Any]:
    return asyncio.run(_artifacts(state.state_details.flow_run_id))


def test_the_run_page_shows_the_pictures_and_a_finished_progress_bar(
    good_scan: SyntheticScan, later_scan: SyntheticScan, results_dir: Path, tmp_path: Path
) -> None:
    first = process_scan("ui-1", "pt-ui", good_scan.path.as_uri(), return_state=True)
    state = process_scan("ui-2", "pt-ui", later_scan.path.as_uri(), return_state=True)
    assert first.is_completed() and state.is_completed(), state.message
    found = _run_artifacts(state)
    [summary] = [a for a in found if a.type == "markdown"]
    text = summary.data or ""
    pictures = re.findall(r"!\[([^\]]*)\]\((data:image/jpeg;base64,[^)]+)\)", text)
    alts = [alt for alt, _ in pictures]
    assert alts[0].startswith("contact sheet") and alts[-1].startswith("trend over 2 scans")
    assert sum("change map against ui-1" in a for a in alts) >= 1, alts
    assert all(len(uri) < 120_000 for _, uri in pictures)  # small: thumbnails, not frames
    assert "report.html" in text
    [progress] = [a for a in found if a.type == "progress"]
    assert progress.data == 100.0 and progress.description == "done"
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed: the UI rendering is not checked")
    # the Prefect UI renders the markdown's pictures on the artifact's page
    ui = os.environ["PREFECT_API_URL"].removesuffix("/api")
    out = subprocess.run(
        [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=30000",
            "--dump-dom", f"{ui}/artifacts/artifact/{summary.id}",
        ],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    rendered = re.findall(r'<img[^>]+src="(data:image/jpeg;base64,[^"]{100})', out.stdout)
    assert len(rendered) >= len(pictures), out.stdout[-2000:] + out.stderr[-2000:]


def test_a_rejected_scans_page_shows_the_frames_behind_the_verdict(
    results_dir: Path, tmp_path: Path
) -> None:
    dark = render_scan(
        tmp_path / "dark.mp4", ScanSpec(duration_s=4.0, fps=15.0, seed=3, dark=frozenset(range(60)))
    )
    state = process_scan("ui-dark", "pt-ui", dark.path.as_uri(), return_state=True)
    assert state.name == "Rejected", state.message
    [page] = [a for a in _run_artifacts(state) if a.type == "markdown"]
    text = page.data or ""
    assert "guidance for the patient" in text and "The frames behind the verdict" in text
    captions = re.findall(r"!\[([^\]]*)\]\(" + re.escape(DATA_JPEG), text)
    assert any("darkest (brightness" in c for c in captions), captions
    assert len(captions) == len(set(captions)) >= 1


def test_the_command_line_shows_progress_rising_to_the_end(
    good_scan: SyntheticScan, results_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["process", str(good_scan.path), "--patient-id", "pt-ui", "--scan-id", "ui-cli"])
    out, err = capsys.readouterr()
    assert code == 0 and out.strip().endswith("ui-cli/manifest.json"), err[-2000:]
    values = [float(v) for v in re.findall(r"^progress:\s+([\d.]+)%", err, re.M)]
    assert values and values == sorted(values) and values[-1] == 100.0, err[-2000:]
    assert re.search(r"^progress:.*\bdone$", err, re.M) and "report: " in err
    assert re.search(r"^Completed in [\d.]+ s$", err, re.M)


def test_on_a_terminal_the_progress_is_a_bar(good_scan: SyntheticScan, tmp_path: Path) -> None:
    """`scanflow process` with stderr on a pseudo-terminal draws Rich's bar, not lines."""
    import pty
    import sys
    import threading

    from scanflow.settings import REPO_ROOT

    master, slave = pty.openpty()
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "100"}
    done = subprocess.run(
        [sys.executable, "-m", "scanflow.cli.main", "process", str(good_scan.path),
         "--patient-id", "pt-ui", "--scan-id", "ui-tty"],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=slave, timeout=300,
    )  # fmt: skip
    os.close(slave)
    reader.join(timeout=10)
    os.close(master)
    screen = b"".join(chunks).decode(errors="replace")
    assert done.returncode == 0, screen[-3000:]
    assert done.stdout.decode().strip().endswith("ui-tty/manifest.json")  # stdout stays plain
    assert "━" in screen and "%" in screen, screen[-3000:]  # Rich's bar and its percentage
    assert "progress: " not in screen  # not the plain lines


def test_ctrl_c_cancels_the_run_instead_of_leaving_it_running(tmp_path: Path) -> None:
    """The flow runs in a thread of `scanflow process`; interrupted, the command marks its
    run Cancelled and exits 130."""
    import signal
    import sys
    import uuid

    from scanflow.settings import REPO_ROOT

    long = render_scan(tmp_path / "long.mp4", ScanSpec(duration_s=60.0, fps=15.0, seed=2))
    proc = subprocess.Popen(
        [sys.executable, "-m", "scanflow.cli.main", "process", str(long.path),
         "--patient-id", "pt-ui", "--scan-id", "ui-ctrl-c"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if line.startswith("progress:") and "decode" in line:
            break
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=60)
    err = "".join(seen) + rest
    assert proc.returncode == 130 and "Traceback" not in err, err[-3000:]
    found = re.search(r"^interrupted: run ([0-9a-f-]{36}) cancelled$", err, re.M)
    assert found, err[-3000:]

    async def state() -> Any:
        async with get_client() as client:
            return (await client.read_flow_run(uuid.UUID(found.group(1)))).state

    final = asyncio.run(state())
    assert final.type.value == "CANCELLED" and "Ctrl-C" in final.message
