"""The verification helper the platform team uses: it accepts our signatures and refuses
forged, altered, malformed and replayed ones."""

from __future__ import annotations

import time

import pytest

from scanflow.notify.signing import (
    BadSignature,
    MalformedSignature,
    StaleTimestamp,
    sign,
    verify_signature,
)

SECRET = "whsec-unit"
BODY = b'{"event_id":"0f0c","type":"scan.completed"}'


def test_a_fresh_signature_verifies_and_returns_its_timestamp() -> None:
    now = int(time.time())
    header = sign(SECRET, BODY, now)
    assert header.startswith(f"t={now},v1=")
    assert verify_signature(SECRET, header, BODY) == now


def test_the_signature_covers_timestamp_and_body() -> None:
    now = int(time.time())
    header = sign(SECRET, BODY, now)
    with pytest.raises(BadSignature):
        verify_signature(SECRET, header, BODY.replace(b"completed", b"rejected"))
    forged_t = header.replace(f"t={now}", f"t={now + 1}")  # same digest, another time
    with pytest.raises(BadSignature):
        verify_signature(SECRET, forged_t, BODY)
    with pytest.raises(BadSignature):
        verify_signature("another-secret", header, BODY)


def test_stale_and_future_timestamps_are_refused_as_replays() -> None:
    old = int(time.time()) - 301
    with pytest.raises(StaleTimestamp):
        verify_signature(SECRET, sign(SECRET, BODY, old), BODY)
    future = int(time.time()) + 301
    with pytest.raises(StaleTimestamp):
        verify_signature(SECRET, sign(SECRET, BODY, future), BODY)
    # the tolerance is the receiver's choice
    assert verify_signature(SECRET, sign(SECRET, BODY, old), BODY, tolerance_s=600) == old


@pytest.mark.parametrize(
    "header",
    [None, "", "v1=abc", "t=123", "t=abc,v1=00", "t=123;v1=00", "garbage"],
)
def test_malformed_headers_are_refused(header: str | None) -> None:
    with pytest.raises(MalformedSignature):
        verify_signature(SECRET, header, BODY)


def test_secret_rotation_accepts_either_secret_and_several_signatures() -> None:
    now = int(time.time())
    new = sign("new-secret", BODY, now)
    assert verify_signature(["old-secret", "new-secret"], new, BODY) == now
    both = f"{sign('old-secret', BODY, now)},v1={new.split('v1=')[1]}"
    assert verify_signature("new-secret", both, BODY) == now
