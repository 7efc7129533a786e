"""`scanflow` leaves without tearing its interpreter down (~1 s of a 2-core machine after
the run has ended), but only after everything that runs at exit has run: Prefect's
services drain their logs and events in threading's exit hooks, other libraries flush in
atexit handlers, and the exit code and buffered output must survive."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from scanflow.settings import REPO_ROOT

ROOT = REPO_ROOT

CHILD = textwrap.dedent(
    """
    import atexit, sys, threading
    from pathlib import Path
    from scanflow.cli import main as cli

    marks = Path(sys.argv[1])

    def mark(what):
        with marks.open("a") as f:
            f.write(what + "\\n")

    def main(argv=None):
        # what Prefect's queue services do when they start (drained at interpreter exit)
        threading._register_atexit(mark, "services drained")
        atexit.register(mark, "atexit handler")  # registered after run()'s own
        sys.stdout.write("buffered, no newline")
        return int(sys.argv[2])

    cli.main = main
    cli.run()
    """
)


def _child(tmp_path: Path, code: int) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    marks = tmp_path / f"marks-{code}"
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(marks), str(code)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done, marks.read_text().splitlines() if marks.exists() else []


def test_exit_runs_every_exit_hook_and_keeps_code_and_output(tmp_path: Path) -> None:
    for code in (0, 1):
        done, marks = _child(tmp_path, code)
        assert done.returncode == code, done.stderr
        assert done.stdout == "buffered, no newline"
        assert marks == ["services drained", "atexit handler"]
