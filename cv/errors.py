"""Why a scan could not be processed, as a reason code the platform can act on, and whose
the cause is.

    ScanError                 (every failure of a scan carries one Reason)
     ├── RejectedScan         the patient's to fix: re-scan (scan.rejected, cause patient)
     └── ProcessingError      ours to fix (scan.failed; cause infrastructure, integration,
                              model or internal)

The reason codes and their causes are the contract listed in docs/design.md. Third-party
errors (PyAV, boto3, torch) are mapped to these at the edge with ``raise ... from exc``.
"""

from __future__ import annotations

import enum
import re


class Reason(enum.StrEnum):
    NOT_FOUND = "not_found"
    ACCESS_DENIED = "access_denied"
    TOO_LARGE = "too_large"
    UNREADABLE_VIDEO = "unreadable_video"
    NO_VIDEO_STREAM = "no_video_stream"
    TOO_SHORT = "too_short"
    TOO_LONG = "too_long"
    RESOLUTION_OUT_OF_RANGE = "resolution_out_of_range"
    TOO_FEW_USABLE_FRAMES = "too_few_usable_frames"
    MODEL_ERROR = "model_error"
    STORAGE_ERROR = "storage_error"
    INTERNAL_ERROR = "internal_error"
    CRASHED = "crashed"
    STALLED = "stalled"

    @property
    def is_patient_fixable(self) -> bool:
        """True for the reasons a re-scan fixes (reported as ``scan.rejected``)."""
        return self in PATIENT_FIXABLE

    @property
    def cause(self) -> Cause:
        return CAUSES[self]


class Cause(enum.StrEnum):
    """Whose the failure is, and so who acts on it."""

    PATIENT = "patient"  # the upload: the platform asks for a re-scan
    INFRASTRUCTURE = "infrastructure"  # storage, capacity, a worker that died: retried
    INTEGRATION = "integration"  # what the platform or trigger sent us: not there, not ours
    MODEL = "model"  # the model would not load or run: on-call
    INTERNAL = "internal"  # a bug of ours: on-call

    @property
    def pages_on_call(self) -> bool:
        return self in ON_CALL


ON_CALL = frozenset({Cause.MODEL, Cause.INTERNAL})

PATIENT_FIXABLE = frozenset(
    {
        Reason.TOO_LARGE,
        Reason.UNREADABLE_VIDEO,
        Reason.NO_VIDEO_STREAM,
        Reason.TOO_SHORT,
        Reason.TOO_LONG,
        Reason.RESOLUTION_OUT_OF_RANGE,
        Reason.TOO_FEW_USABLE_FRAMES,
    }
)

CAUSES: dict[Reason, Cause] = {
    **dict.fromkeys(PATIENT_FIXABLE, Cause.PATIENT),
    Reason.NOT_FOUND: Cause.INTEGRATION,
    Reason.ACCESS_DENIED: Cause.INTEGRATION,
    Reason.MODEL_ERROR: Cause.MODEL,
    Reason.STORAGE_ERROR: Cause.INFRASTRUCTURE,
    Reason.CRASHED: Cause.INFRASTRUCTURE,
    Reason.STALLED: Cause.INFRASTRUCTURE,
    Reason.INTERNAL_ERROR: Cause.INTERNAL,
}


class ScanError(Exception):
    """A scan failed for a known reason; ``str()`` reads ``[reason] message``."""

    def __init__(self, reason: Reason, message: str, *, guidance: str | None = None) -> None:
        self.reason = Reason(reason)
        self.message = message
        self.guidance = guidance
        super().__init__(f"[{self.reason.value}] {message}")

    def __reduce__(self) -> tuple[object, ...]:
        # Keep reason and guidance when Prefect pickles the exception into a state.
        return (_rebuild, (self.__class__, self.reason.value, self.message, self.guidance))


def _rebuild(cls: type[ScanError], reason: str, message: str, guidance: str | None) -> ScanError:
    return cls(Reason(reason), message, guidance=guidance)


class RejectedScan(ScanError):
    """The upload itself is the problem: the patient should re-scan."""


class ProcessingError(ScanError):
    """Our side failed (model, storage, a bug): the scan itself may be fine."""


def scan_error(reason: Reason, message: str, *, guidance: str | None = None) -> ScanError:
    """Build the right subclass for ``reason``."""
    cls = RejectedScan if reason.is_patient_fixable else ProcessingError
    return cls(reason, message, guidance=guidance)


_REASON_IN_TEXT = re.compile(r"\[(" + "|".join(r.value for r in Reason) + r")\]")


def reason_from_message(text: str | None) -> Reason | None:
    """Find the reason code in a state message such as ``... ScanError: [too_short] ...``."""
    if not text:
        return None
    match = _REASON_IN_TEXT.search(text)
    return Reason(match.group(1)) if match else None
