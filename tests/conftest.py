"""Test fixtures: real parts on loopback.

- a Prefect server (SQLite) started once per test session by the project's own LocalStack,
  in a temporary home; the test process and any worker talk to it through PREFECT_API_URL;
- moto's standalone S3 server, a real HTTP endpoint that boto3 reaches through
  AWS_ENDPOINT_URL_S3;
- small synthetic scans rendered by cv.synthetic.

The environment is set when this root conftest is imported, before any other conftest or
test module imports Prefect, because Prefect reads its settings when it is imported (and
pytest imports the conftests of the paths it is given before pytest_configure).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cv.synthetic import ScanSpec, SyntheticScan, render_scan
from scanflow.local.loopback import free_port

# fixtures shared across the tree: models (weights, backbone, a trained package)
# and the tables of figures printed at the end of a run (tests.support.report)
pytest_plugins = ["tests.support.models", "tests.support.report"]

_STATE: dict[str, object] = {}


def _configure_environment() -> None:
    home = Path(tempfile.mkdtemp(prefix="scanflow-test-"))
    port, s3_port = free_port(), free_port()
    _STATE.update(home=home, port=port, s3_port=s3_port)
    os.environ.update(
        {
            "SCANFLOW_HOME": str(home),
            "SCANFLOW_SERVER_PORT": str(port),
            "SCANFLOW_WORKER_QUERY_SECONDS": "1",
            "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
            "PREFECT_HOME": str(home / "prefect"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            "PREFECT_LOGGING_LEVEL": "WARNING",
            "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{s3_port}",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            # scans are rendered under the temporary folder (tests/system/hostile checks the
            # default roots and the refusals)
            "SCANFLOW_INPUT_ROOTS": Path(tempfile.gettempdir()).resolve().as_uri(),
        }
    )
    os.environ.pop("SCANFLOW_RESULTS_URI", None)
    os.environ.pop("PREFECT_API_KEY", None)


_configure_environment()


def pytest_unconfigure(config: pytest.Config) -> None:
    stack = _STATE.get("stack")
    if stack is not None:
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=5)  # ship queued run logs before the server goes away
        stack.down()  # type: ignore[attr-defined]
    moto = _STATE.get("moto")
    if moto is not None:
        moto.terminate()  # type: ignore[attr-defined]
    home = _STATE.get("home")
    if isinstance(home, Path) and not os.environ.get("SCANFLOW_KEEP_TEST_HOME"):
        shutil.rmtree(home, ignore_errors=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip)
    # The files with slow tests first (the order is kept within a file): in several
    # processes (make test), the long ones start early instead of ending the run alone.
    slow_files = {item.path for item in items if "slow" in item.keywords}
    items.sort(key=lambda item: item.path not in slow_files)


@pytest.fixture(scope="session")
def test_home() -> Path:
    return _STATE["home"]  # type: ignore[return-value]


@pytest.fixture(scope="session")
def prefect_server() -> str:
    """A real Prefect server on SQLite, started by the project's own LocalStack."""
    from scanflow.local.stack import LocalStack
    from scanflow.settings import Settings

    stack = LocalStack(Settings())
    _STATE["stack"] = stack
    stack.start_server()
    return os.environ["PREFECT_API_URL"]


@pytest.fixture(scope="session")
def local_stack(prefect_server: str):  # type: ignore[no-untyped-def]
    """Server, process pool, the local deployment from prefect.yaml and a worker."""
    stack = _STATE["stack"]
    stack.up()  # type: ignore[attr-defined]
    return stack


@pytest.fixture(scope="session")
def s3_endpoint() -> str:
    """moto's standalone S3 server on loopback."""
    port = _STATE["s3_port"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _STATE["moto"] = proc
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", int(port)), timeout=0.5):  # type: ignore[call-overload]
                return url
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("moto server did not start")


@pytest.fixture(scope="session")
def scans_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("scans")


@pytest.fixture(scope="session")
def good_scan(scans_dir: Path) -> SyntheticScan:
    """A 6 s 320x240 scan with known blurred, dark and glaring frames."""
    return render_scan(
        scans_dir / "good.mp4",
        ScanSpec(
            duration_s=6.0,
            fps=15.0,
            seed=1,
            blurred=frozenset(range(20, 30)),
            dark=frozenset(range(40, 44)),
            glare=frozenset(range(50, 54)),
        ),
    )


@pytest.fixture(scope="session")
def later_scan(scans_dir: Path) -> SyntheticScan:
    """The same mouth scanned again later."""
    return render_scan(scans_dir / "later.mp4", ScanSpec(duration_s=6.0, fps=15.0, seed=1))


@pytest.fixture
def results_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh results root for one test (settings are read when a flow run starts)."""
    root = tmp_path / "results"
    monkeypatch.setenv("SCANFLOW_RESULTS_URI", root.as_uri())
    yield root
