"""cv.errors: the reason codes (the contract in docs/design.md), which of them the patient can
fix, their causes (docs/design.md's table), the ScanError family with its ``[reason]
message`` text that survives pickling, and finding a reason in a state message. Plain
Python, no other parts needed."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import pytest

from cv.errors import (
    PATIENT_FIXABLE,
    Cause,
    ProcessingError,
    Reason,
    RejectedScan,
    ScanError,
    reason_from_message,
    scan_error,
)

DESIGN = Path(__file__).resolve().parents[2] / "docs" / "design.md"

REJECTED = {
    "too_large",
    "unreadable_video",
    "no_video_stream",
    "too_short",
    "too_long",
    "resolution_out_of_range",
    "too_few_usable_frames",
}
OURS = {
    "not_found",
    "access_denied",
    "model_error",
    "storage_error",
    "internal_error",
    "crashed",
    "stalled",
}


def test_the_reason_codes_are_the_ones_docs_design_lists_in_its_order() -> None:
    section = (
        DESIGN.read_text().split("## Reason codes", 1)[1].split("Those a new upload fixes", 1)[0]
    )
    listed = re.findall(r"`([a-z_]+)`", section)
    assert [r.value for r in Reason] == [c for c in listed if c != "cv/errors.py"]


def test_only_what_a_rescan_fixes_is_patient_fixable() -> None:
    assert {r.value for r in PATIENT_FIXABLE} == REJECTED
    assert {r.value for r in Reason if not r.is_patient_fixable} == OURS
    assert Reason.TOO_SHORT.is_patient_fixable and not Reason.MODEL_ERROR.is_patient_fixable


def _cause_table() -> dict[str, set[str]]:
    """docs/design.md's table: cause -> the reason codes it lists."""
    rows = re.findall(r"^\| `([a-z]+)` \| (.+?) \|", DESIGN.read_text(), flags=re.MULTILINE)
    return {cause: set(re.findall(r"`([a-z_]+)`", codes)) for cause, codes in rows}


def test_every_reason_has_the_cause_docs_design_gives_it() -> None:
    table = _cause_table()
    assert set(table) == {c.value for c in Cause}
    assert {r.value: r.cause.value for r in Reason} == {
        code: cause for cause, codes in table.items() for code in codes
    }


def test_the_patients_cause_is_exactly_the_rejections_and_only_model_and_bugs_page() -> None:
    assert {r for r in Reason if r.cause is Cause.PATIENT} == PATIENT_FIXABLE
    assert {c for c in Cause if c.pages_on_call} == {Cause.MODEL, Cause.INTERNAL}
    # a missing or forbidden upload is the integration's, not the patient's (schema 2)
    assert Reason.NOT_FOUND.cause is Cause.INTEGRATION
    assert not Reason.ACCESS_DENIED.is_patient_fixable


@pytest.mark.parametrize("reason", list(Reason))
def test_scan_error_builds_a_rejection_or_a_processing_error_by_reason(reason: Reason) -> None:
    err = scan_error(reason, "what happened", guidance="what to do")
    expected = RejectedScan if reason.value in REJECTED else ProcessingError
    assert type(err) is expected and isinstance(err, ScanError)
    assert (err.reason, err.message, err.guidance) == (reason, "what happened", "what to do")
    assert str(err) == f"[{reason.value}] what happened"


def test_a_reason_given_as_its_code_becomes_the_enum_and_an_unknown_code_is_refused() -> None:
    err = RejectedScan("too_long", "61 s is longer than 60 s")  # type: ignore[arg-type]
    assert err.reason is Reason.TOO_LONG
    assert str(err) == "[too_long] 61 s is longer than 60 s"
    with pytest.raises(ValueError, match="too_blue"):
        ScanError("too_blue", "no such reason")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "err",
    [
        RejectedScan(Reason.TOO_FEW_USABLE_FRAMES, "3 of 75 usable", guidance="hold still"),
        ProcessingError(Reason.STORAGE_ERROR, "S3 said 503"),
        ScanError(Reason.INTERNAL_ERROR, "bug"),
    ],
)
def test_pickling_keeps_class_reason_message_and_guidance(err: ScanError) -> None:
    """Prefect pickles a raised exception into the run's state; the copy must still say why."""
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is type(err)
    assert (back.reason, back.message, back.guidance) == (err.reason, err.message, err.guidance)
    assert str(back) == str(err)


def test_the_reason_is_found_in_a_state_message() -> None:
    message = (
        "Flow run encountered an exception: RejectedScan: [too_short] the scan lasts 0.8 s; "
        "at least 3 s are needed."
    )
    assert reason_from_message(message) is Reason.TOO_SHORT
    assert reason_from_message(str(scan_error(Reason.STALLED, "no heartbeat"))) is Reason.STALLED
    # the first code wins when a message quotes another
    assert reason_from_message("[model_error] retried after [storage_error]") is Reason.MODEL_ERROR


@pytest.mark.parametrize(
    "text",
    [
        None,
        "",
        "Flow run failed.",
        "too_short without brackets",
        "[too_blue] not a reason code",
        "[too_shortened] a longer word that starts with a code",
        "[TOO_SHORT] the enum's name, not its code",
    ],
)
def test_a_message_without_a_reason_code_gives_none(text: str | None) -> None:
    assert reason_from_message(text) is None
