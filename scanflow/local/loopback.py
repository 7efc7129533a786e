"""Real servers on loopback standing in for what production talks to: AWS (moto's
standalone server), the platform's webhook endpoint and Slack (a receiver that verifies
signatures), and free ports for them. The tests, the rehearsal and the benchmarks use these,
and no other copies.

moto's ECS adds up a task's container ``memory`` to place it and fails with a TypeError (an
HTTP 500 to the caller) when a container has none, as in every Fargate task definition
(Fargate sizes the task, not the container; AWS accepts it). ``python -m
scanflow.local.loopback --port N`` runs moto's server with that sum treating a
missing value as 0: a fix to the stand-in, so that RunTask requests for Fargate, exactly as
Prefect renders them, can be made and read back.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from scanflow.notify.signing import HEADER, SignatureError, verify_signature


def ephemeral_port_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port() -> int:
    """A port nothing listens on, for a server started next. Taken at random below the
    kernel's ephemeral range: a port the kernel hands out (bind to 0) is also handed to
    outgoing connections, and on a busy machine one may take it before our server binds
    it (the server then exits: address in use)."""
    candidates = range(10000, ephemeral_port_range()[0])
    for port in random.sample(candidates, min(200, len(candidates))):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # nothing free below the range: let the kernel choose
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MotoServer:
    """moto's standalone server (every AWS service at one URL) in a child process, with
    AWS's managed IAM policies loaded (roles attach them by ARN)."""

    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> MotoServer:
        env = {**os.environ, "MOTO_IAM_LOAD_MANAGED_POLICIES": "true"}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "scanflow.local.loopback", "--port", str(self.port)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.2)
        raise RuntimeError(f"moto did not start; see {self.log}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@dataclass
class Received:
    """One POST as the receiver got it, and what it answered."""

    at: float  # time.time() on arrival
    path: str
    headers: dict[str, str]
    body: bytes
    status: int
    verified: str  # "ok", "unchecked" (no secret), or why the signature was refused

    @property
    def json(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.body))
        except ValueError:
            return {}


Policy = Callable[[dict[str, Any]], "int | None"]


@dataclass
class Receiver:
    """An HTTP endpoint on loopback standing in for the platform's webhook (or Slack): it
    records every POST, verifies its signature with ``secret`` as the platform does (400 if
    refused; ``clock`` may run ahead to receive a replay later), and otherwise answers 200
    or what a policy says (e.g. 503 while the platform is "down")."""

    name: str = "platform"
    secret: str | None = None
    clock: Callable[[], float] = time.time
    records: list[Received] = field(default_factory=list)
    policies: list[Policy] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    payload = json.loads(body)
                except ValueError:
                    payload = {}
                status = 200
                for policy in list(receiver.policies):
                    status = policy(payload) or status
                verified = "unchecked"
                if receiver.secret is not None:
                    try:
                        verify_signature(
                            receiver.secret, self.headers.get(HEADER), body, now=receiver.clock()
                        )
                        verified = "ok"
                    except SignatureError as exc:
                        verified, status = f"{type(exc).__name__}: {exc}", 400
                with receiver.lock:
                    receiver.records.append(
                        Received(time.time(), self.path, dict(self.headers), body, status, verified)
                    )
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"ok" if status < 300 else b"unavailable")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def delivered(self, predicate: Callable[[dict[str, Any]], bool]) -> list[Received]:
        """What it accepted (2xx) and ``predicate`` picks."""
        with self.lock:
            return [r for r in self.records if r.status < 300 and predicate(r.json)]

    def all(self, predicate: Callable[[dict[str, Any]], bool]) -> list[Received]:
        with self.lock:
            return [r for r in self.records if predicate(r.json)]

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float, count: int = 1
    ) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.delivered(predicate)
            if len(found) >= count:
                return found
            time.sleep(0.2)
        return self.delivered(predicate)

    def events(self, source: str | None = None) -> list[dict[str, Any]]:
        """The signed events it accepted, from one path (``hook``, ``automation``) or all."""
        return [
            r.json
            for r in self.delivered(lambda e: source is None or e.get("source") == source)
            if r.verified == "ok"
        ]


def _serve_moto(argv: list[str]) -> None:
    from moto import server
    from moto.ecs import models

    original = models.EC2ContainerServiceBackend._calculate_task_resource_requirements

    def tolerant(task_definition: Any) -> dict[str, Any]:
        # the sum reads only container_definitions: hand it copies, the stored ones stay
        containers = [
            c if c.get("memory") or c.get("memoryReservation") else {**c, "memory": 0}
            for c in task_definition.container_definitions
        ]
        view: Any = SimpleNamespace(container_definitions=containers)
        return original(view)

    models.EC2ContainerServiceBackend._calculate_task_resource_requirements = staticmethod(  # type: ignore[method-assign]
        tolerant
    )
    server.main(["-H", "127.0.0.1", *argv])


if __name__ == "__main__":
    _serve_moto(sys.argv[1:])
