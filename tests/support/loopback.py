"""Real servers and clients on loopback for the production path's tests.

- ``FlakyProxy``: a real HTTP proxy in front of a server that answers 503 or drops the
  connection for the first requests of a script, then forwards;
- ``FakeLambdaContext``: the ``context`` the Lambda runtime passes (only its clock is read);
- ``AuthServer``: where the basic-auth Prefect server of conftest.py listens.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import httpx

from scanflow.local.loopback import free_port

__all__ = ["AuthServer", "FakeLambdaContext", "FlakyProxy", "free_port"]


@dataclass(frozen=True)
class AuthServer:
    api_url: str
    auth_string: str
    deployment: str
    deployment_id: str
    work_queue: str

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.api_url, auth=tuple(self.auth_string.split(":", 1)))  # type: ignore[arg-type]


class FlakyProxy:
    """A real HTTP proxy on loopback in front of ``upstream``.

    ``script`` lists what the next requests get, one entry each: ``"503"`` (an answer like
    a SQLite-backed server's "database is locked"), ``"drop"`` (the connection is closed
    without an answer) or ``"forward"``; when the script is used up, ``then`` applies.
    ``log`` records (method, path, outcome) for every request.
    """

    def __init__(self, upstream: str, script: list[str] | None = None, then: str = "forward"):
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.script = list(script or [])
        self.then = then
        self.log: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> FlakyProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _next(self) -> str:
        with self._lock:
            return self.script.pop(0) if self.script else self.then

    def outcomes(self, path_pattern: str = ".*") -> list[str]:
        return [outcome for _, path, outcome in self.log if re.search(path_pattern, path)]

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                action = proxy._next()
                if action == "drop":
                    proxy.log.append((self.command, self.path, "drop"))
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if action == "503":
                    proxy.log.append((self.command, self.path, "503"))
                    payload = json.dumps({"exception_message": "database is locked"}).encode()
                    self.send_response(503)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                conn = http.client.HTTPConnection(
                    proxy.upstream_host, proxy.upstream_port, timeout=30
                )
                headers = {
                    k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")
                }
                conn.request(self.command, self.path, body=body or None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                proxy.log.append((self.command, self.path, str(resp.status)))
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def finish(self) -> None:
                with contextlib.suppress(OSError):  # the connection was dropped on purpose
                    super().finish()

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _handle

        return Handler


@dataclass
class FakeLambdaContext:
    """What the Lambda runtime passes as ``context``: only the clock is read."""

    remaining_ms: int = 30_000
    aws_request_id: str = "test-request"

    def __post_init__(self) -> None:
        self._start = time.monotonic()

    def get_remaining_time_in_millis(self) -> int:
        return int(self.remaining_ms - (time.monotonic() - self._start) * 1000)
