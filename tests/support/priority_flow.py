"""A flow that only sleeps, deployed by test_queue_priority.py to a process worker (imports
kept to the minimum so that the worker's subprocess starts it fast)."""

import time

from prefect import flow


@flow(name="priority-sleep")
def priority_sleep(seconds: float = 5.0) -> None:
    time.sleep(seconds)
