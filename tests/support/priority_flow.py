"""A flow that only sleeps, deployed by test_queue_priority.py to a process worker (imports
kept to the minimum so that the worker's subprocess starts it fast)."""

import os
import time

from prefect import flow


@flow(name="priority-sleep")
def priority_sleep(seconds: float = 5.0, gate: str | None = None) -> None:
    """Sleeps ``seconds``; with ``gate``, only once that file exists (at most 120 s on)."""
    deadline = time.monotonic() + 120
    while gate and not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(seconds)
