"""scanflow.retry.retry_transient: a task is retried for failures that may pass (storage,
unknown errors), never for a scan's own problem or a known final one. Judged on real Prefect
states, and once through Prefect's own retry machinery on the session's server."""

from __future__ import annotations

import pytest
from prefect import flow, task
from prefect.states import Completed, Failed

from cv.errors import PATIENT_FIXABLE, Reason, scan_error
from scanflow.retry import retry_transient


def _failed(exc: BaseException) -> object:
    return Failed(data=exc, message=str(exc))


@pytest.mark.parametrize("reason", [Reason.STORAGE_ERROR, Reason.INTERNAL_ERROR])
def test_transient_reasons_are_retried(reason: Reason) -> None:
    assert retry_transient(None, None, _failed(scan_error(reason, "s3 is down"))) is True


@pytest.mark.parametrize(
    "reason",
    sorted(PATIENT_FIXABLE) + [Reason.MODEL_ERROR, Reason.CRASHED, Reason.STALLED],
)
def test_final_reasons_are_not_retried(reason: Reason) -> None:
    assert retry_transient(None, None, _failed(scan_error(reason, "final"))) is False


def test_an_unknown_error_may_be_transient() -> None:
    assert retry_transient(None, None, _failed(ConnectionResetError("peer reset"))) is True
    assert retry_transient(None, None, _failed(RuntimeError("boom"))) is True


def test_a_state_without_an_error_is_not_retried() -> None:
    assert retry_transient(None, None, Completed(data=3)) is False


ATTEMPTS: dict[str, int] = {}


@task(retries=3, retry_delay_seconds=0, retry_condition_fn=retry_transient, persist_result=False)
def _fails_with(key: str, reason: Reason) -> None:
    ATTEMPTS[key] = ATTEMPTS.get(key, 0) + 1
    raise scan_error(reason, f"attempt {ATTEMPTS[key]}")


@flow(persist_result=False)
def _run_task(key: str, reason: Reason) -> None:
    _fails_with(key, reason)


@pytest.mark.integration
@pytest.mark.usefixtures("prefect_server")
def test_prefect_retries_a_storage_error_but_not_a_rejected_scan() -> None:
    for key, reason in (("storage", Reason.STORAGE_ERROR), ("short", Reason.TOO_SHORT)):
        state = _run_task(key, reason, return_state=True)
        assert state.is_failed()
    assert ATTEMPTS == {"storage": 4, "short": 1}
