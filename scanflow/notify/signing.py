"""Signing of platform webhooks, and the check the platform runs on receipt.

Every POST carries ``X-Scanflow-Signature: t=<unix seconds>,v1=<hex>`` where ``<hex>`` is
HMAC-SHA256 over ``f"{t}.".encode() + body`` with the shared secret. The platform verifies
it with :func:`verify_signature` before trusting the body: a wrong signature means the
request is not ours (or the body was changed); an old ``t`` means a replay.

This module uses the standard library only, so the platform team can copy it as is::

    from scanflow.notify.signing import SignatureError, verify_signature

    try:
        verify_signature(secret, request.headers["X-Scanflow-Signature"], raw_body)
    except SignatureError as exc:
        return 400, str(exc)            # never process the body
    event = json.loads(raw_body)
    if seen(event["event_id"]):         # retries and the second path repeat events
        return 200
    ...

    SignatureError            the request must be refused
     ├── MalformedSignature   no header, or not ``t=<int>,v1=<hex>``
     ├── StaleTimestamp       ``t`` is further than the tolerance from now (a replay)
     └── BadSignature         no ``v1`` matches (wrong secret, or a changed body)

Sign with one secret; several ``v1=`` values are accepted on receipt, and
``verify_signature`` takes several secrets, so a secret can be rotated without a gap.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Sequence

HEADER = "X-Scanflow-Signature"
DEFAULT_TOLERANCE_S = 300


class SignatureError(ValueError):
    """The webhook must be refused."""


class MalformedSignature(SignatureError):
    """The header is missing or not ``t=<unix>,v1=<hex>``."""


class StaleTimestamp(SignatureError):
    """The signed timestamp is too far from now: a replay, or a badly wrong clock."""


class BadSignature(SignatureError):
    """No signature matches: another secret, or the body was changed."""


def _digest(secret: str | bytes, timestamp: int, body: bytes) -> str:
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: str | bytes, body: bytes, timestamp: int | None = None) -> str:
    """The ``X-Scanflow-Signature`` value for ``body`` sent at ``timestamp`` (default: now)."""
    t = int(time.time()) if timestamp is None else int(timestamp)
    return f"t={t},v1={_digest(secret, t, body)}"


def verify_signature(
    secret: str | bytes | Sequence[str | bytes],
    header: str | None,
    body: bytes,
    *,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> int:
    """Check a webhook's signature; returns its timestamp, raises :class:`SignatureError`.

    Args:
        secret: the shared secret, or several while rotating one.
        header: the ``X-Scanflow-Signature`` header as received (None if absent).
        body: the raw request body, exactly as received (before any JSON parsing).
        tolerance_s: how far ``t`` may be from ``now``, either way.
        now: the current Unix time (default: the clock).
    """
    if not header:
        raise MalformedSignature(f"no {HEADER} header")
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            raise MalformedSignature(f"{HEADER} part {part.strip()!r} is not key=value")
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                raise MalformedSignature(
                    f"{HEADER} timestamp {value!r} is not an integer"
                ) from None
        elif key == "v1":
            candidates.append(value.strip().lower())
    if timestamp is None or not candidates:
        raise MalformedSignature(f"{HEADER} needs t=<unix seconds> and v1=<hex>")
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        raise StaleTimestamp(
            f"signed at {timestamp}, {current - timestamp:+.0f} s from now "
            f"(tolerance {tolerance_s:.0f} s): refused as a possible replay"
        )
    keys: list[str | bytes] = [secret] if isinstance(secret, str | bytes) else list(secret)
    for one in keys:
        expected = _digest(one, timestamp, body)
        if any(hmac.compare_digest(expected, c) for c in candidates):
            return timestamp
    raise BadSignature("no v1 signature matches the body with the configured secret(s)")
