"""process-scan and its model: the default, a promoted one, a pinned one, and bad ones that
fail the run with model_error before any frame is classified or stored (real Prefect
server)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.variables import Variable

from cv.model.network import sha256_file
from cv.synthetic import SyntheticScan
from flows.process_scan import process_scan
from scanflow.contracts.manifest import Manifest
from scanflow.contracts.options import ModelRef, ScanOptions
from scanflow.models.registry import DEFAULT_PACKAGE, PRODUCTION_VARIABLE
from tasks.inference import load_views

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_server")]


@pytest.fixture
def no_production_model() -> Iterator[None]:
    Variable.unset(PRODUCTION_VARIABLE)
    yield
    Variable.unset(PRODUCTION_VARIABLE)


def _manifest(uri: str) -> Manifest:
    return Manifest.model_validate_json(Path(uri.removeprefix("file://")).read_text())


async def _task_states(flow_run_id: str) -> dict[str, str]:
    """Task run name (without its suffix) → the name of its final state."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async with get_client() as client:
        runs = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return {r.name.rsplit("-", 1)[0]: r.state.name if r.state else "?" for r in runs}


def test_default_model_names_views_next_to_the_embeddings(
    good_scan: SyntheticScan, results_dir: Path, no_production_model: None
) -> None:
    m = _manifest(process_scan("views-a", "patient-m1", good_scan.path.as_uri()))
    assert (m.model.name, m.model.version, m.model.sha256) == (
        DEFAULT_PACKAGE.name,
        DEFAULT_PACKAGE.version,
        DEFAULT_PACKAGE.sha256,
    )
    assert m.model.source and "default" in m.model.source
    assert m.model.labels[-1] == "other" and m.model.backbone_sha256
    assert "load_model" in m.timings_s
    assert m.views is not None and m.artifacts.views is not None
    labels, rows = load_views(m.artifacts.views)
    assert labels == m.model.labels
    kept = sorted((results_dir / "patient-m1" / "views-a" / "frames").glob("*.jpg"))
    assert [r["frame_index"] for r in rows] == [int(p.stem) for p in kept]
    assert [r["kept_index"] for r in rows] == list(range(len(kept)))
    doc = json.loads(Path(m.artifacts.views.removeprefix("file://")).read_text())
    assert doc["model"]["sha256"] == m.model.sha256
    n_usable = sum(r["usable"] for r in rows)
    assert m.views.usable == n_usable
    assert sum(m.views.frames.values()) + m.views.uncertain == n_usable
    # the synthetic scan sweeps every view: front, buccal (left, right) and occlusal are seen
    f = m.views.frames
    assert f["front"] > 0 and f["left"] + f["right"] > 0
    assert f["upper_occlusal"] + f["lower_occlusal"] > 0


def test_a_run_uses_the_promoted_model_unless_it_pins_another(
    good_scan: SyntheticScan,
    results_dir: Path,
    package: Path,
    no_production_model: None,
) -> None:
    sha = sha256_file(package)
    Variable.set(
        PRODUCTION_VARIABLE,
        {"uri": package.as_uri(), "name": "test-views", "version": "0.1.0", "sha256": sha},
        overwrite=True,
    )
    promoted = _manifest(process_scan("views-b", "patient-m2", good_scan.path.as_uri()))
    assert (promoted.model.name, promoted.model.sha256) == ("test-views", sha)
    assert "production" in (promoted.model.source or "")
    pinned = _manifest(
        process_scan(
            "views-c",
            "patient-m2",
            good_scan.path.as_uri(),
            options=ScanOptions(model=DEFAULT_PACKAGE),
        )
    )
    assert pinned.model.sha256 == DEFAULT_PACKAGE.sha256
    assert "pinned" in (pinned.model.source or "")


def _truncate(package: Path, dst: Path) -> tuple[Path, str]:
    dst.write_bytes(package.read_bytes()[:5000])
    return dst, sha256_file(package)  # the reference still carries the real package's hash


@pytest.mark.parametrize("defect", ["wrong_hash", "truncated", "wrong_architecture", "no_labels"])
def test_a_bad_model_fails_the_run_before_any_frame_is_classified_or_stored(
    defect: str,
    good_scan: SyntheticScan,
    results_dir: Path,
    package: Path,
    make_package: Callable[..., Path],
    tmp_path: Path,
) -> None:
    import torch

    from cv.model.heads import ViewHead

    if defect == "wrong_hash":
        archive, sha = package, "f" * 64
    elif defect == "truncated":
        archive, sha = _truncate(package, tmp_path / "cut.zip")
    elif defect == "wrong_architecture":
        archive = make_package(
            "arch", lambda d: torch.save(ViewHead(3, in_dim=64).state_dict(), d / "head.pt")
        )
        sha = sha256_file(archive)
    else:
        archive = make_package("labels", lambda d: (d / "labels.json").unlink())
        sha = sha256_file(archive)
    options = ScanOptions(model=ModelRef(uri=archive.as_uri(), sha256=sha))
    state = process_scan(
        f"bad-{defect}".replace("_", "-"),
        "patient-m3",
        good_scan.path.as_uri(),
        options=options,
        return_state=True,
    )
    assert state.is_failed()
    assert (state.message or "").count("[model_error]") >= 1, state.message
    # decoding started beside the load, but nothing was stored: the stage waited for the
    # model, and failed with its error; no later stage ran
    assert not (results_dir / "patient-m3" / f"bad-{defect}".replace("_", "-")).exists()
    tasks = asyncio.run(_task_states(str(state.state_details.flow_run_id)))
    assert tasks.get("load-model") == "Failed", tasks
    assert tasks.get("extract-frames") in (None, "Failed"), tasks
    assert not {"run-inference", "render-summary", "publish-manifest"} & set(tasks), tasks
