"""A scan's progress, as a Prefect progress artifact on its run (0-100 %), so that a run in
flight shows how far it is: decoding fills most of the bar by the share of the video's
duration decoded, then each stage moves it on; its description names the stage. The
command line reads the same artifact (scanflow/cli/progress.py).

Updates are API calls: during decoding at most one a second; one that fails is skipped (a
progress bar never fails a scan). They leave from a thread of their own, the latest value
first (one not yet sent is replaced by a newer one), so decoding never waits on the API;
the last stage ("done") waits for them to be sent (a few seconds at most).
"""

from __future__ import annotations

import contextlib
import threading
import time
from uuid import UUID

from prefect.artifacts import create_progress_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import ArtifactUpdate
from prefect.context import SettingsContext

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


class _Sender:
    """Sends progress updates from a daemon thread, the newest per artifact. Each update
    carries the settings (the API) of the run that posted it and goes out on a client of the
    thread's own: the run's client is closed when the run ends, and the thread outlives it
    (it ends when idle, the next update starts another)."""

    IDLE_S = 30.0

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._pending: dict[UUID, tuple[float, str, SettingsContext | None]] = {}
        self._sending = False
        self._thread: threading.Thread | None = None

    def post(self, artifact: UUID, value: float, description: str) -> None:
        with self._cond:
            self._pending[artifact] = (value, description, SettingsContext.get())
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="scanflow-progress", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()

    def _loop(self) -> None:
        while True:
            with self._cond:
                if not self._cond.wait_for(lambda: bool(self._pending), self.IDLE_S):
                    self._thread = None  # the next post starts another
                    return
                artifact, (value, description, settings) = self._pending.popitem()
                self._sending = True
            with contextlib.suppress(Exception):
                _send(artifact, value, description, settings)
            with self._cond:
                self._sending = False
                self._cond.notify_all()

    def flush(self, timeout: float) -> bool:
        """Until every posted update has been sent (or tried); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending and not self._sending, timeout)


def _send(artifact: UUID, value: float, description: str, settings: SettingsContext | None) -> None:
    with (
        settings.model_copy() if settings else contextlib.nullcontext(),
        get_client(sync_client=True) as client,
    ):
        client.update_artifact(artifact, ArtifactUpdate(data=value, description=description))


_SENDER = _Sender()
FLUSH_S = 5.0


def set_stage(progress_id: str | None, stage: str) -> None:
    if progress_id is not None:
        _SENDER.post(UUID(progress_id), STAGES[stage], stage)
        if stage == "done":
            _SENDER.flush(FLUSH_S)


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
        _SENDER.post(self.id, round(value, 1), f"decode {share:.0%}")
