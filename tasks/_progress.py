"""A scan's progress, as a Prefect progress artifact on its run (0-100 %), so that a run in
flight shows how far it is: decoding fills most of the bar by the share of the video's
duration decoded, then each stage moves it on; its description names the stage. The
command line reads the same artifact (scanflow/cli/progress.py).

Updates are API calls: during decoding at most one a second; one that fails is skipped (a
progress bar never fails a scan).
"""

from __future__ import annotations

import contextlib
import time
from uuid import UUID

from prefect.artifacts import create_progress_artifact, update_progress_artifact

# Where each stage starts on the bar; decoding runs from "decode" to "inference".
STAGES = {
    "download": 0.0,
    "decode": 2.0,
    "inference": 80.0,
    "summary": 86.0,
    "tracking": 92.0,
    "manifest": 98.0,
    "done": 100.0,
}
EVERY_S = 1.0


def scan_artifact_key(prefix: str, scan_id: str) -> str:
    """An artifact key for a scan: keys allow lowercase letters, digits and dashes only."""
    key = "".join(c if c.isalnum() else "-" for c in scan_id.lower())
    return f"{prefix}-{key}"[:60].rstrip("-")


def progress_key(scan_id: str) -> str:
    return scan_artifact_key("progress", scan_id)


def start_progress(scan_id: str) -> str | None:
    """The run's progress artifact, at 0; its id (a str: it is a task argument)."""
    try:
        made = create_progress_artifact(0.0, key=progress_key(scan_id), description="download")
    except Exception:  # noqa: BLE001 - the API busy: the scan goes on without a bar
        return None
    return str(made)


def set_stage(progress_id: str | None, stage: str) -> None:
    if progress_id is not None:
        with contextlib.suppress(Exception):
            update_progress_artifact(UUID(progress_id), STAGES[stage], description=stage)


class DecodeProgress:
    """Called with each kept frame's time: moves the bar through the decode stretch."""

    def __init__(self, progress_id: str | None, duration_s: float | None) -> None:
        self.id = UUID(progress_id) if progress_id else None
        self.duration = duration_s if duration_s and duration_s > 0 else None
        self.last = 0.0

    def __call__(self, time_s: float) -> None:
        if self.id is None or self.duration is None:
            return
        now = time.monotonic()
        if now - self.last < EVERY_S:
            return
        self.last = now
        share = min(1.0, max(0.0, time_s / self.duration))
        value = STAGES["decode"] + share * (STAGES["inference"] - STAGES["decode"])
        with contextlib.suppress(Exception):
            update_progress_artifact(self.id, round(value, 1), description=f"decode {share:.0%}")
