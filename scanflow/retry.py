"""When a task is worth retrying: only for failures that are ours and may pass (storage,
network). A rejected scan fails the same way every time."""

from __future__ import annotations

from typing import Any

from cv.errors import Reason, ScanError

_TRANSIENT = frozenset({Reason.STORAGE_ERROR, Reason.INTERNAL_ERROR})


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry unless the error is a known, final one."""
    try:
        state.result()
    except ScanError as exc:
        return exc.reason in _TRANSIENT
    except Exception:  # noqa: BLE001 - an unknown error may be transient
        return True
    return False
