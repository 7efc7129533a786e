"""The fault tests' harness, on top of tests/support/stack.py (receivers, stacks).

- :class:`FaultStack`: a NotifyStack whose runs can carry their own environment (an S3
  endpoint, a results root) and whose server and worker can be killed and started again;
- :func:`small_disk`: a small tmpfs (or loop-mounted) filesystem, filled up, unmounted
  afterwards whatever happens;
- ``FAULT_FIGURES``: the rows of the closing table, printed at the end of the run.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.stack import NotifyStack, kill


@dataclass(frozen=True)
class FaultFigure:
    case: str
    outcome: str
    to_final_s: float | None  # from the fault (or the run's start) to its final state
    to_platform_s: float | None  # from the final state to the first delivery at the platform
    note: str = ""


FAULT_FIGURES: list[FaultFigure] = []


class FaultStack(NotifyStack):
    """A local stack of its own whose runs may carry their own environment."""

    def up(self, attempts: int = 3) -> None:
        """Bring the stack up; every step is idempotent, so a step that lost a race with
        the server's own start-up (SQLite busy, block types not registered yet) is tried
        again."""
        for attempt in range(attempts):
            try:
                super().up()
                return
            except Exception:
                if attempt + 1 == attempts:
                    raise
                time.sleep(5.0)

    def submit_scan(
        self,
        scan_id: str,
        patient_id: str,
        video_uri: str,
        env: dict[str, str] | None = None,
    ) -> uuid.UUID:
        """A run of process-scan/local; ``env`` is added to the run's environment only
        (job variables; the deployment's own env, the heartbeat setting, stays)."""
        with self.client() as client:
            deployment = client.read_deployment_by_name("process-scan/local")
            run = client.create_flow_run_from_deployment(
                deployment.id,
                parameters={"scan_id": scan_id, "patient_id": patient_id, "video_uri": video_uri},
                name=scan_id,
                tags=["scanflow", "test", "faults"],
                job_variables={"env": env} if env else None,
            )
        return run.id  # type: ignore[no-any-return]

    def down(self) -> None:
        super().down()
        if not os.environ.get("SCANFLOW_KEEP_TEST_HOME"):
            time.sleep(1.0)  # a process that was ending may have written one last file
            shutil.rmtree(self.home, ignore_errors=True)

    # -- the server --------------------------------------------------------------------
    def server_pid(self) -> int:
        return int((self.home / "run" / "server.pid").read_text())

    def kill_server(self) -> float:
        """SIGKILL the server's process group (it runs in a session of its own)."""
        pid = self.server_pid()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while self.healthy() and time.monotonic() < deadline:
            time.sleep(0.2)
        return time.time()

    def start_server(self) -> float:
        out = self.cli("server", "start", timeout=180)
        assert out.returncode == 0, out.stdout + out.stderr
        return time.time()

    # -- the scan worker ---------------------------------------------------------------
    def kill_worker_and_runs(self, run_ids: list[uuid.UUID]) -> float:
        """SIGKILL the scan worker, then the processes of the runs it holds."""
        pids = [self.flow_process(run_id) for run_id in run_ids]
        kill(self.worker_pid())
        for pid in pids:
            kill(pid)
        return time.time()

    def start_worker(self) -> None:
        out = self.cli("up")  # starts what is not running: here, the scan worker
        assert out.returncode == 0, out.stdout + out.stderr
        assert "worker: started" in out.stdout, out.stdout

    # -- runs ------------------------------------------------------------------------
    def state_times(self, run_id: uuid.UUID) -> list[tuple[str, str, float]]:
        """(type, name, unix time) of every state the run went through, oldest first."""
        return sorted(
            ((s.type.value, s.name or "", s.timestamp.timestamp()) for s in self.states(run_id)),
            key=lambda item: item[2],
        )

    def first_state_at(self, run_id: uuid.UUID, state_type: str) -> float:
        return next(t for kind, _, t in self.state_times(run_id) if kind == state_type)

    def last_state_at(self, run_id: uuid.UUID, state_type: str) -> float:
        return [t for kind, _, t in self.state_times(run_id) if kind == state_type][-1]


# -- a full disk -------------------------------------------------------------------------


def _mount(args: list[str]) -> str | None:
    done = subprocess.run(args, capture_output=True, text=True, timeout=30)
    return None if done.returncode == 0 else (done.stderr.strip() or f"exit {done.returncode}")


def _unmount(mount: Path) -> None:
    for args in (["umount", str(mount)], ["umount", "-l", str(mount)]):
        if subprocess.run(args, capture_output=True, timeout=30).returncode == 0:
            return


@contextlib.contextmanager
def small_disk(size_kib: int, free_kib: int) -> Iterator[Path]:
    """A filesystem of ``size_kib`` with only ``free_kib`` left, mounted on a fresh folder
    and unmounted on the way out, whatever happened.

    A tmpfs needs mount rights (root, or CAP_SYS_ADMIN); failing that, an ext2 image on a
    loop device. Raises ``RuntimeError`` saying why when neither can be mounted.
    """
    mount = Path(tempfile.mkdtemp(prefix="scanflow-small-disk-"))
    image: Path | None = None
    try:
        why = _mount(
            ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k,mode=1777", "scanflow-faults"]
            + [str(mount)]
        )
        if why is not None and shutil.which("mkfs.ext2"):
            image = Path(tempfile.mkstemp(prefix="scanflow-small-disk-", suffix=".img")[1])
            with open(image, "wb") as f:
                f.truncate(size_kib * 1024)
            made = subprocess.run(
                ["mkfs.ext2", "-q", "-F", "-m", "0", str(image)], capture_output=True, timeout=60
            )
            loop_why = (
                _mount(["mount", "-o", "loop", str(image), str(mount)])
                if made.returncode == 0
                else made.stderr.decode(errors="replace").strip()
            )
            why = None if loop_why is None else f"tmpfs: {why}; loop: {loop_why}"
            if why is None:
                mount.chmod(0o1777)
        if why is not None:
            raise RuntimeError(f"cannot mount a small filesystem here ({why})")
        try:
            _fill(mount, free_kib)
            yield mount
        finally:
            _unmount(mount)
    finally:
        with contextlib.suppress(OSError):
            mount.rmdir()
        if image is not None:
            image.unlink(missing_ok=True)


def _fill(mount: Path, free_kib: int) -> None:
    """Write until the disk is full, then give back ``free_kib``."""
    filler = mount / "filler"
    block = b"\0" * 65536
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(block)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
    size = filler.stat().st_size
    os.truncate(filler, max(0, size - free_kib * 1024))


# -- small helpers -----------------------------------------------------------------------


def bodies(received: list[Any]) -> list[dict[str, Any]]:
    return [json.loads(r.body) for r in received]
