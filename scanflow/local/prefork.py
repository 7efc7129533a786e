"""A warm parent for the local worker's flow runs: Prefect, the flows, torch and the model
are loaded once, and each flow run is a child forked from it.

The process worker starts a flow run as a fresh ``python -m prefect.engine``: about 3 s of
interpreter start and imports, and the model load, before its first task, on every run.
Here the work pool's command is instead the tiny client below (standard library only),
which asks the warm server to fork:

    worker --spawns--> python -m scanflow.local.prefork run --socket S     (the client)
                              |  its stdin/stdout/stderr, environment, cwd, argv
                              v
    python -m scanflow.local.prefork serve --socket S   (the warm server) --fork--> child
                                                                  runs prefect.engine

The child takes the client's stdio (passed over the Unix socket), environment, working
directory and arguments, refreshes Prefect's settings from that environment, and runs
``prefect.engine`` as ``__main__``, as the cold command would. To the worker the client is
the flow run's process: the client relays SIGTERM, SIGINT and SIGHUP to the child (the
worker's cancellation), and exits with the child's exit status (a signal's death
re-raised). If the client dies (SIGKILL), the server kills the child; if the server dies,
the children die with it (PR_SET_PDEATHSIG) and their clients exit 1.

Whenever the warm path cannot be trusted the client runs the cold command itself, so a run
never depends on the server: no server on the socket, a setting read at import time that
differs between the request and the server (``IMPORT_TIME_ENV``), or a source file of the
repository changed since the server loaded it (the server then restarts itself, with the
new code, once its children have exited).

Linux only (fork, SCM_RIGHTS, prctl); the stack uses it where ``fork`` exists.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import selectors
import shutil
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

# Settings read once, at import, by what the server preloads (torch's thread pools, the
# interpreter, Prefect's logging configuration): a run that sets them otherwise goes cold.
IMPORT_TIME_ENV = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "PYTHONPATH",
    "PYTHONHASHSEED",
    "PYTHONWARNINGS",
    "PREFECT_LOGGING_LEVEL",
    "PREFECT_LOGGING_SETTINGS_PATH",
    "PREFECT_LOGGING_EXTRA_LOGGERS",
    "CUDA_VISIBLE_DEVICES",
)
# What a run imports on its way that the flows' modules do not (seen in a forked run).
LAZY_IMPORTS = (
    "anyio._backends._asyncio",
    "anyio.streams.memory",
    "anyio.streams.stapled",
    "anyio.streams.tls",
    "prefect.task_engine",
    "prefect.concurrency._sync",
    "prefect.concurrency.services",
    "prefect._internal.states",
    "prefect.utilities.visualization",
    "numpy.ma",
    "encodings.idna",
    "rich._emoji_codes",
    "av.subtitles.stream",
)
RELAYED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_HEADER = struct.Struct("!I")
_MAX_REQUEST = 1 << 20
ENGINE = ["-m", "prefect.engine"]


def client_command(socket_path: Path) -> list[str]:
    return [sys.executable, "-m", "scanflow.local.prefork", "run", "--socket", str(socket_path)]


def socket_for(home: Path) -> Path:
    """The warm server's socket in a stack's home."""
    return home / "run" / "prefork.sock"


def runs_dir(socket_path: Path) -> Path:
    """Where the server names each flow run's forked process: a file per run, named by the
    run's id, holding the child's pid, while it lives. The worker knows only the client;
    what stops or kills the run's work (a test's SIGSTOP) needs the child."""
    return socket_path.parent / "prefork-runs"


def child_of(socket_path: Path, flow_run_id: str) -> int | None:
    try:
        return int((runs_dir(socket_path) / flow_run_id).read_text())
    except (OSError, ValueError):
        return None


def available() -> bool:
    return hasattr(os, "fork") and hasattr(socket, "send_fds") and sys.platform == "linux"


# -- the client: the flow run's process as the worker sees it ---------------------------


def _exit_like(status: int) -> int:
    """Exit as the child did: its code, or the signal that killed it."""
    if status < 0:
        sig = -status
        with contextlib.suppress(OSError, ValueError):  # SIGKILL's cannot be set
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
        return 128 + sig
    return status


def _run_cold(argv: list[str]) -> NoReturn:
    os.execv(sys.executable, [sys.executable, *ENGINE, *argv])


def _readline(sock: socket.socket, buf: bytearray) -> bytes | None:
    while b"\n" not in buf:
        try:
            chunk = sock.recv(256)
        except InterruptedError:  # pragma: no cover - PEP 475 retries
            continue
        if not chunk:
            return None
        buf += chunk
    line, _, rest = bytes(buf).partition(b"\n")
    buf[:] = rest
    return line


def run_client(socket_path: str, argv: list[str]) -> int:
    """Have the warm server fork this flow run; fall back to the cold command."""
    child: list[int] = []
    pending: list[int] = []

    def relay(sig: int, _frame: Any) -> None:
        if child:
            os.kill(child[0], sig)
        else:
            pending.append(sig)

    for sig in RELAYED:
        signal.signal(sig, relay)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(socket_path)
    except OSError:
        sock.close()
        _run_cold(argv)
    body = json.dumps({"argv": argv, "env": dict(os.environ), "cwd": os.getcwd()}).encode()
    socket.send_fds(sock, [_HEADER.pack(len(body))], [0, 1, 2])
    sock.sendall(body)
    buf = bytearray()
    first = _readline(sock, buf)
    if first is None or first == b"cold":
        sock.close()
        if pending:  # told to stop before anything started
            return _exit_like(-pending[0])
        _run_cold(argv)
    child.append(int(first.split()[1]))  # b"pid N"
    for early in pending:
        os.kill(child[0], early)
    last = _readline(sock, buf)
    if last is None:
        print("scanflow prefork: the warm server went away during the run", file=sys.stderr)
        return 1
    return _exit_like(int(last.split()[1]))  # b"exit S"


# -- the server ----------------------------------------------------------------------------


_torch_threads = 0  # torch's own default, restored in each run


def entrypoint_module(entrypoint: str) -> str:
    """The module of a deployment's entrypoint: ``flows/x.py:f`` or ``flows.x.f``."""
    if ":" in entrypoint:
        return ".".join(Path(entrypoint.split(":", 1)[0]).with_suffix("").parts)
    return entrypoint.rsplit(".", 1)[0]


def preload(entrypoints: list[str]) -> None:
    """Import the flows the pool runs (their deployments' entrypoints) and what their runs
    import on the way, and load the default model, without starting a thread (a fork keeps
    only the forking thread) or torch's thread pool (OpenMP's is not fork-safe once used:
    the parent stays on one intra-op thread)."""
    import torch

    global _torch_threads
    _torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    import prefect.engine  # noqa: F401
    import prefect.flow_engine  # noqa: F401

    for entrypoint in entrypoints:
        importlib.import_module(entrypoint_module(entrypoint))
    for name in LAZY_IMPORTS:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    from scanflow.models.cache import classifier
    from scanflow.models.registry import DEFAULT_PACKAGE
    from scanflow.settings import Settings

    classifier(DEFAULT_PACKAGE, str(Settings().models_dir), "auto")


def _sources(root: Path) -> dict[str, int]:
    """Modification times of the repository's modules loaded in this process."""
    found = {}
    for module in list(sys.modules.values()):
        name = getattr(module, "__file__", None)
        if name and Path(name).is_relative_to(root) and "site-packages" not in name:
            try:
                found[name] = os.stat(name).st_mtime_ns
            except OSError:
                continue
    return found


def _changed(sources: dict[str, int]) -> str | None:
    for name, mtime in sources.items():
        try:
            if os.stat(name).st_mtime_ns != mtime:
                return name
        except OSError:
            return name
    return None


PR_SET_PDEATHSIG = 1  # the signal this process gets when its parent dies
PR_SET_NAME = 15  # its name in ps -o comm, top (15 bytes)


def _prctl(option: int, arg: int | bytes) -> None:
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(option, arg, 0, 0, 0)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("client closed mid-request")
        data += chunk
    return bytes(data)


class Server:
    def __init__(
        self,
        socket_path: Path,
        root: Path,
        entrypoints: list[str],
        log: Callable[[str], None],
    ) -> None:
        self.path = socket_path
        self.entrypoints = entrypoints
        self.root = root
        self.log = log
        self.env = dict(os.environ)
        self.sources: dict[str, int] = {}
        self.children: dict[int, socket.socket] = {}
        self.runs: dict[int, Path] = {}  # child -> its file in runs_dir
        self.stale: str | None = None
        self.stopping = False
        self.sel = selectors.DefaultSelector()
        self.pid = os.getpid()

    # The child: becomes the flow run's process, never returns.
    def _become_run(self, request: dict[str, Any], fds: list[int], keep_out: list[int]) -> None:
        code = 1
        try:
            os.setpgid(0, 0)  # the server's killpg reaches what the run starts
            _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            _prctl(PR_SET_NAME, b"scanflow-run")  # its command line is the server's
            if os.getppid() != self.pid:  # the server died before that took
                os._exit(1)
            for sig in (*RELAYED, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            signal.set_wakeup_fd(-1)
            for fd in keep_out:
                os.close(fd)
            for target, fd in enumerate(fds):
                os.dup2(fd, target)
                os.close(fd)
            os.chdir(request["cwd"])
            os.environ.clear()
            os.environ.update(request["env"])
            sys.argv = ["prefect.engine", *request["argv"]]
            code = _run_engine()
        except BaseException:  # noqa: BLE001 - the child must never return into the server
            import traceback

            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)

    def _refusal(self, request: dict[str, Any]) -> str | None:
        for key in IMPORT_TIME_ENV:
            if request["env"].get(key) != self.env.get(key):
                return f"{key} differs from the warm server's"
        changed = _changed(self.sources)
        if changed is not None:
            self.stale = changed
            return f"{changed} changed since the warm server loaded it"
        return None

    def _accept(self, listener: socket.socket, keep_out: list[int]) -> None:
        conn, _ = listener.accept()
        conn.settimeout(10)
        fds: list[int] = []
        try:
            header, fds, _flags, _addr = socket.recv_fds(conn, _HEADER.size, 3)
            (size,) = _HEADER.unpack(header)
            if len(fds) != 3 or size > _MAX_REQUEST:
                raise ValueError(f"bad request: {len(fds)} fds, {size} bytes")
            request = json.loads(_recv_exact(conn, size))
            refusal = self._refusal(request)
            if refusal is not None:
                self.log(f"cold run: {refusal}")
                conn.sendall(b"cold\n")
                conn.close()
                return
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                self._become_run(request, fds, [*keep_out, conn.fileno()])
            conn.sendall(f"pid {pid}\n".encode())
            conn.settimeout(None)
            self.children[pid] = conn
            self.sel.register(conn, selectors.EVENT_READ, "client")
            run_id = request["env"].get("PREFECT__FLOW_RUN_ID")
            self.log(f"forked {pid} for flow run {run_id}")
            if run_id:
                self.runs[pid] = runs_dir(self.path) / str(run_id)
                self.runs[pid].write_text(str(pid))
        except (OSError, ValueError, ConnectionError) as exc:
            self.log(f"refused a request: {exc}")
            conn.close()
        finally:
            for fd in fds:
                os.close(fd)

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = self.children.pop(pid, None)
            with contextlib.suppress(KeyError, OSError):
                self.runs.pop(pid).unlink()
            code = os.waitstatus_to_exitcode(status)
            self.log(f"child {pid} exited {code}")
            if conn is not None:
                with contextlib.suppress(KeyError):  # unless its client is gone
                    self.sel.unregister(conn)
                with contextlib.suppress(OSError):
                    conn.sendall(f"exit {code}\n".encode())
                conn.close()

    def _client_gone(self, conn: socket.socket) -> None:
        """The client closed its end before its child exited: it was killed."""
        self.sel.unregister(conn)
        for pid, c in self.children.items():
            if c is conn:
                self.log(f"the client of child {pid} is gone: killing it")
                _kill_group(pid, signal.SIGKILL)
                return

    def serve(self) -> int:
        preload(self.entrypoints)
        self.sources = _sources(self.root)
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)

        def on_stop(_sig: int, _frame: Any) -> None:
            self.stopping = True

        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)
        shutil.rmtree(runs_dir(self.path), ignore_errors=True)
        runs_dir(self.path).mkdir()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.path))
        os.chmod(self.path, 0o600)
        listener.listen(64)
        self.log(f"warm on {self.path} ({len(self.sources)} repository modules loaded)")
        self.sel.register(listener, selectors.EVENT_READ, "accept")
        self.sel.register(wake_r, selectors.EVENT_READ, "wake")
        while not self.stopping:
            for key, _ in self.sel.select(timeout=1.0):
                if key.data == "accept":
                    keep_out = [listener.fileno(), wake_r, wake_w, self.sel.fileno()]
                    keep_out += [c.fileno() for c in self.children.values()]
                    self._accept(listener, keep_out)
                elif key.data == "wake":
                    _drain(wake_r)
                else:  # a client: it sends nothing, so readable means closed
                    conn = key.fileobj
                    assert isinstance(conn, socket.socket)
                    try:
                        data = conn.recv(64)
                    except OSError:
                        data = b""
                    if not data:
                        self._client_gone(conn)
            self._reap()
            if self.stale is not None and not self.children:
                self.log(f"restarting with the new code ({self.stale} changed)")
                listener.close()
                self.path.unlink(missing_ok=True)
                os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
        return self._shutdown(listener)

    def _shutdown(self, listener: socket.socket) -> int:
        listener.close()
        self.path.unlink(missing_ok=True)
        for pid in list(self.children):
            _kill_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while self.children and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.1)
        for pid in list(self.children):
            _kill_group(pid, signal.SIGKILL)
        self._reap()
        self.log("stopped")
        return 0


def _kill_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def _drain(fd: int) -> None:
    while True:
        try:
            if not os.read(fd, 512):
                return
        except BlockingIOError:
            return


def skip_heartbeat_join() -> None:
    """End the run without waiting for the heartbeat thread to wake.

    Prefect's sync engine joins its heartbeat thread when the flow ends, and the thread
    sleeps in 1 s steps: up to a second between the final state and the process's exit,
    during which the run holds its slot in the pool. Its async engine does not join; the
    thread checks for a final state before each heartbeat, and dies with the process.
    The worker's runs call this; so does bench/orchestration.py, which runs the flow in its
    own process and measures what a run costs where production runs it.
    """
    import functools
    import inspect

    import prefect.flow_engine as engine

    send = getattr(engine, "_send_heartbeats", None)
    if isinstance(send, functools.partial):
        return  # done already
    if send is not None and "join_on_exit" in inspect.signature(send).parameters:
        engine._send_heartbeats = functools.partial(send, join_on_exit=False)


def _run_engine() -> int:
    """``python -m prefect.engine`` in this (forked) process, with this environment."""
    import atexit
    import runpy

    import prefect.context

    atexit._clear()  # the server's exit handlers are not the run's
    if _torch_threads:
        import torch

        torch.set_num_threads(_torch_threads)
    prefect.context.refresh_global_settings_context()
    skip_heartbeat_join()
    code: int = 0
    try:
        runpy.run_module("prefect.engine", run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        atexit._run_exitfuncs()  # Prefect's log and event workers drain here
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scanflow.local.prefork")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="the warm server")
    serve.add_argument("--socket", required=True)
    serve.add_argument(
        "--preload", action="append", default=[], help="a deployment's entrypoint (repeatable)"
    )
    sub.add_parser("run", help="a flow run's process (the client)").add_argument(
        "--socket", required=True
    )
    args, rest = parser.parse_known_args(argv)
    if args.command == "run":
        return run_client(args.socket, rest)

    from scanflow.settings import REPO_ROOT

    def log(msg: str) -> None:
        now = time.time()
        stamp = time.strftime("%H:%M:%S", time.localtime(now))
        print(f"{stamp}.{int(now % 1 * 1000):03d} prefork: {msg}", flush=True)

    return Server(Path(args.socket), REPO_ROOT, args.preload, log).serve()


if __name__ == "__main__":
    sys.exit(main())
