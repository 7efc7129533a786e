"""JSON over HTTP with retries inside a time budget (standard library only).

A retry is safe for every call the trigger makes: lookups are reads, and a flow run is
created with an idempotency key. What is retried: 429, 502, 503 and 504 answers (a
SQLite-backed Prefect server answers 503 "database is locked" under bursts), dropped or
refused connections and timeouts. Waits grow exponentially with full jitter, honour
``Retry-After``, and never run past the deadline.
"""

from __future__ import annotations

import http.client
import json
import random
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError, UnavailableError

RETRY_STATUSES = frozenset({429, 502, 503, 504})
USER_AGENT = "scanflow-trigger/1.0 (python urllib)"


@dataclass(frozen=True)
class Deadline:
    """The monotonic instant by which the invocation must have answered."""

    at: float

    @classmethod
    def within(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + seconds)

    def left(self) -> float:
        return self.at - time.monotonic()


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    def text(self, limit: int = 300) -> str:
        return self.body[:limit].decode("utf-8", "replace")


@dataclass
class RetryPolicy:
    base_s: float = 0.2
    cap_s: float = 4.0
    max_attempts: int = 12
    min_request_s: float = 0.3  # a request with less time than this left is not started
    sleep: Callable[[float], None] = time.sleep

    def backoff(self, attempt: int, retry_after: float | None) -> float:
        wait = random.uniform(0, min(self.cap_s, self.base_s * 2**attempt))
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.cap_s * 2))
        return wait


def request(
    method: str,
    url: str,
    *,
    deadline: Deadline,
    timeout_s: float,
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    policy: RetryPolicy | None = None,
) -> Response:
    """Send one request, retrying transient failures until ``deadline``.

    Returns the first non-retryable response (any status: the caller judges it). Raises
    UnavailableError when only transient failures were seen and the time is up.
    """
    policy = policy or RetryPolicy()
    all_headers = {"User-Agent": USER_AGENT, "Accept": "application/json", **(headers or {})}
    last = "no attempt was made"
    for attempt in range(policy.max_attempts):
        left = deadline.left()
        if left < policy.min_request_s:
            break
        retry_after: float | None = None
        try:
            response = _send(method, url, all_headers, body, min(timeout_s, left))
        except _TRANSIENT as exc:
            last = f"{type(exc).__name__}: {exc}"
        else:
            if response.status not in RETRY_STATUSES:
                return response
            last = f"HTTP {response.status} {response.text(120)}"
            retry_after = _retry_after(response.headers)
        wait = policy.backoff(attempt, retry_after)
        if deadline.left() - wait < policy.min_request_s:
            break
        policy.sleep(wait)
    raise UnavailableError(
        f"{method} {url} still failing when the time budget ran out ({last})",
        status=None,
    )


def _send(
    method: str, url: str, headers: Mapping[str, str], body: bytes | None, timeout: float
) -> Response:
    req = urllib.request.Request(url, data=body, headers=dict(headers), method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - URL from config
            return Response(resp.status, dict(resp.headers.items()), resp.read())
    except urllib.error.HTTPError as exc:  # a real answer with a 4xx/5xx status
        with exc:
            return Response(exc.code, dict(exc.headers.items()), exc.read())
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, ssl.SSLCertVerificationError):
            # a wrong certificate or URL does not heal by retrying
            raise ConfigError(f"TLS verification failed for {url}: {exc.reason}") from exc
        raise _Dropped(str(exc.reason)) from exc


class _Dropped(ConnectionError):
    """The connection was refused, reset or closed before an answer."""


# http.client.RemoteDisconnected and IncompleteRead: the server closed mid-answer.
_TRANSIENT = (
    _Dropped,
    ConnectionError,
    TimeoutError,
    socket.timeout,
    http.client.HTTPException,
)


def _retry_after(headers: Mapping[str, str]) -> float | None:
    for name, value in headers.items():
        if name.lower() == "retry-after":
            try:
                return max(0.0, float(value))
            except ValueError:
                return None
    return None
