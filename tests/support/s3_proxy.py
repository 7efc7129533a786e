"""A fault-injecting HTTP proxy on loopback in front of moto's S3 server.

boto3 reaches it through ``AWS_ENDPOINT_URL_S3``; it forwards every request to moto
unchanged, except those its rules pick, which it answers itself with the errors S3 sends
when it is unwell: ``500 InternalError``, ``503 SlowDown`` (throttling) and
``503 ServiceUnavailable``. Nothing in boto3 is patched: the client's own retries, backoff
and adaptive rate limiting are what is tested.

Rules (a request gets the first fault any rule returns):

- :class:`FirstAttemptFails`: the first attempt of every distinct request (method, path and
  query) fails, so every call has to be retried to succeed;
- :class:`Outage`: every request fails for ``seconds`` from the first request a predicate
  picks (``seconds=None``: for good);
- :class:`Answer`: the requests a predicate picks get a given answer (a 403, a 400);
- :class:`Hold`: the requests a predicate picks wait until the test releases them (a slow
  store), then go through: a run reading its upload stays in flight, however fast the
  machine, for as long as a test needs to kill, stop or cancel it.

``log`` records every exchange, so a test can check what was retried and in which order
objects were written.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Protocol
from urllib.parse import unquote, urlsplit


@dataclass(frozen=True)
class Fault:
    status: int
    code: str
    message: str

    def body(self, resource: str) -> bytes:
        request_id = uuid.uuid4().hex[:16].upper()
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{self.code}</Code><Message>{self.message}</Message>"
            f"<Resource>{resource}</Resource><RequestId>{request_id}</RequestId></Error>"
        ).encode()


INTERNAL_ERROR = Fault(500, "InternalError", "We encountered an internal error. Please try again.")
SLOW_DOWN = Fault(503, "SlowDown", "Please reduce your request rate.")
UNAVAILABLE = Fault(503, "ServiceUnavailable", "Service is unable to handle request.")
S3_FAULTS = (INTERNAL_ERROR, SLOW_DOWN, UNAVAILABLE)


@dataclass(frozen=True)
class Request:
    at: float  # time.time()
    method: str
    path: str  # unquoted, without the query
    query: str

    @property
    def key(self) -> str:
        """``bucket/key`` of the object (path-style addressing)."""
        return self.path.lstrip("/")


@dataclass(frozen=True)
class Exchange:
    request: Request
    status: int
    injected: str | None  # the fault's code when the proxy answered itself


class Rule(Protocol):
    def __call__(self, request: Request) -> Fault | None: ...


@dataclass
class FirstAttemptFails:
    """The first attempt of every distinct request fails, cycling through ``faults``."""

    faults: tuple[Fault, ...] = S3_FAULTS
    seen: set[tuple[str, str, str]] = field(default_factory=set)
    _cycle: itertools.cycle[Fault] = field(init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._cycle = itertools.cycle(self.faults)

    def __call__(self, request: Request) -> Fault | None:
        ident = (request.method, request.path, request.query)
        with self._lock:
            if ident in self.seen:
                return None
            self.seen.add(ident)
            return next(self._cycle)


@dataclass
class Outage:
    """Every request fails for ``seconds`` (None: for good) from the first one ``starts``
    picks, cycling through ``faults``."""

    starts: Callable[[Request], bool]
    seconds: float | None
    faults: tuple[Fault, ...] = S3_FAULTS
    began: float | None = None
    _cycle: itertools.cycle[Fault] = field(init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._cycle = itertools.cycle(self.faults)

    @property
    def ended(self) -> float | None:
        if self.began is None or self.seconds is None:
            return None
        return self.began + self.seconds

    def __call__(self, request: Request) -> Fault | None:
        with self._lock:
            if self.began is None and self.starts(request):
                self.began = request.at
            if self.began is None or request.at < self.began:
                return None
            if self.seconds is not None and request.at >= self.began + self.seconds:
                return None
            return next(self._cycle)


@dataclass
class Answer:
    """Every request ``when`` picks gets ``fault`` (for answers S3 gives for good)."""

    fault: Fault
    when: Callable[[Request], bool]

    def __call__(self, request: Request) -> Fault | None:
        return self.fault if self.when(request) else None


@dataclass
class Hold:
    """Requests ``when`` picks wait until :meth:`release` (or ``limit`` seconds, a test that
    forgot), then go through unchanged. ``held`` is set once one waits. A read held past
    boto3's 60 s timeout is asked again, and that one waits too: the run stays in flight."""

    when: Callable[[Request], bool]
    limit: float = 600.0
    held: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)

    def __call__(self, request: Request) -> Fault | None:
        if self.when(request) and not self.released.is_set():
            self.held.set()
            self.released.wait(self.limit)
        return None

    def release(self) -> None:
        self.released.set()


class S3FaultProxy:
    """A real HTTP proxy on loopback in front of ``upstream`` (moto's S3 server)."""

    def __init__(self, upstream: str, *rules: Rule) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.rules = list(rules)
        self.log: list[Exchange] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> S3FaultProxy:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def exchanges(self, predicate: Callable[[Exchange], bool] = lambda e: True) -> list[Exchange]:
        with self._lock:
            return [e for e in self.log if predicate(e)]

    def _fault(self, request: Request) -> Fault | None:
        for rule in self.rules:
            fault = rule(request)
            if fault is not None:
                return fault
        return None

    def _record(self, exchange: Exchange) -> None:
        with self._lock:
            self.log.append(exchange)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, and "Expect: 100-continue" answered

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass  # trailers
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _handle(self) -> None:
                body = self._body()
                target = urlsplit(self.path)
                request = Request(time.time(), self.command, unquote(target.path), target.query)
                fault = proxy._fault(request)
                if fault is not None:
                    # recorded before the client can see the answer: a test that reads the
                    # log once the client's call returned finds every exchange in it
                    proxy._record(Exchange(request, fault.status, fault.code))
                    payload = fault.body(request.path) if self.command != "HEAD" else b""
                    self.send_response(fault.status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload) or 0))
                    self.send_header("x-amz-request-id", uuid.uuid4().hex[:16].upper())
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in ("connection", "transfer-encoding", "expect")
                }
                if body or self.command in ("PUT", "POST"):
                    headers["Content-Length"] = str(len(body))
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    response = conn.getresponse()
                    data = response.read()
                finally:
                    conn.close()
                proxy._record(Exchange(request, response.status, None))
                self.send_response(response.status)
                for k, v in response.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                if self.command == "HEAD":
                    self.send_header("Content-Length", response.getheader("Content-Length", "0"))
                else:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def finish(self) -> None:
                with contextlib.suppress(OSError):
                    super().finish()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        return Handler
