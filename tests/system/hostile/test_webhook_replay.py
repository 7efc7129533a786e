"""The platform's side of the webhook, end to end: a delivery captured from a real run is
sent again to a receiver that verifies it with scanflow/notify/signing.py. Within the
tolerance it is accepted and carries the same event id (the platform drops it as a
duplicate); later, or changed, or signed with another key, it is refused.

tests/scanflow/notify covers signing and verification as functions (stale, forged, malformed, key
rotation) and that live deliveries verify; this adds the replay of a captured request.
"""

from __future__ import annotations

import httpx
import pytest

from scanflow.local.loopback import Received, Receiver
from scanflow.notify.signing import HEADER, StaleTimestamp, sign, verify_signature
from tests.system.hostile.leak_world import SIGNING_SECRET, LeakWorld

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FORWARDED = (HEADER, "Content-Type", "X-Scanflow-Event-Id", "X-Scanflow-Event-Type")


def _captured(world: LeakWorld) -> Received:
    done = [r for r in world.platform.records if r.json.get("type") == "scan.completed"]
    assert done, "no scan.completed delivery was captured"
    return done[0]


def _header(record: Received, name: str) -> str:
    return next(v for k, v in record.headers.items() if k.lower() == name.lower())


def _replay(
    receiver: Receiver, captured: Received, body: bytes | None = None, **headers: str
) -> tuple[int, Received]:
    sent = {k: _header(captured, k) for k in FORWARDED} | headers
    response = httpx.post(
        receiver.url + captured.path, content=captured.body if body is None else body, headers=sent
    )
    return response.status_code, receiver.records[-1]


def test_a_captured_delivery_replayed_later_is_refused(leak_world: LeakWorld) -> None:
    captured = _captured(leak_world)
    # The receiver's clock starts at the capture's arrival: the stack's runs may have ended
    # minutes before this test runs (a shared stack, a loaded machine), and "at once" means
    # at once after the original delivery, not after the test starts.
    arrived = captured.at
    signed_at = verify_signature(
        SIGNING_SECRET, _header(captured, HEADER), captured.body, now=arrived
    )
    now = [arrived]
    platform = Receiver(secret=SIGNING_SECRET, clock=lambda: now[0]).start()
    try:
        # at once: accepted, and the same event id as the original (a duplicate to drop)
        status, got = _replay(platform, captured)
        assert (status, got.verified) == (200, "ok")
        assert got.json["event_id"] == captured.json["event_id"]
        assert _header(got, "X-Scanflow-Event-Id") == captured.json["event_id"]
        # ten minutes later (tolerance: five): refused as a replay
        now[0] = signed_at + 600
        status, got = _replay(platform, captured)
        assert status == 400 and got.verified.startswith("StaleTimestamp"), got.verified
        # ...and moving the timestamp forward breaks the signature
        fresh = _header(captured, HEADER).replace(f"t={signed_at}", f"t={int(now[0])}")
        status, got = _replay(platform, captured, **{HEADER: fresh})
        assert status == 400 and got.verified.startswith("BadSignature"), got.verified
        # in time, but the body changed: refused
        now[0] = arrived
        changed = captured.body.replace(b'"scan.completed"', b'"scan.rejected"')
        assert changed != captured.body
        status, got = _replay(platform, captured, body=changed)
        assert status == 400 and got.verified.startswith("BadSignature"), got.verified
        # signed afresh (at the receiver's now) by someone without the key: refused
        forged = sign("guess", captured.body, timestamp=int(now[0]))
        status, got = _replay(platform, captured, **{HEADER: forged})
        assert status == 400 and got.verified.startswith("BadSignature"), got.verified
    finally:
        platform.stop()
    with pytest.raises(StaleTimestamp):
        verify_signature(
            SIGNING_SECRET, _header(captured, HEADER), captured.body, now=signed_at + 301
        )
