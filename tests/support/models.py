"""Model fixtures (a pytest plugin of the root conftest): the shipped backbone's weights and
the backbone loaded on the CPU, a small synthetic view dataset, a package trained on it
(cv.model.training, as the train-view-model flow trains: tests/flows/test_train_view_model.py
runs the flow itself), and a way to build broken packages from it."""

from __future__ import annotations

import json
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from cv.model.network import LoadedModel, load_backbone, sha256_file
from scanflow.cli.main import main
from scanflow.models.registry import BACKBONE_IDENTITY, installed_backbone

Edit = Callable[[Path], None]


@pytest.fixture(scope="session")
def weights() -> Path:
    return installed_backbone()


@pytest.fixture(scope="session")
def backbone(weights: Path) -> LoadedModel:
    return load_backbone(weights, BACKBONE_IDENTITY, torch.device("cpu"))


@pytest.fixture(scope="session")
def view_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 training scans and 1 held-out scan, 320x240, 4 frames a second for 6 s."""
    root = tmp_path_factory.mktemp("views") / "data"
    args = ["--train-scans", "3", "--heldout-scans", "1", "--width", "320", "--height", "240"]
    assert main(["model", "dataset", str(root), *args, "--fps", "4", "--seconds", "6"]) == 0
    return root


@pytest.fixture(scope="session")
def package(
    view_dataset: Path, backbone: LoadedModel, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A view package trained on the small dataset (no Prefect server needed)."""
    from cv.model.heads import TrainConfig
    from cv.model.training import train_view_package
    from scanflow.models.registry import BACKBONE

    out = tmp_path_factory.mktemp("packages") / "test-views-0.1.0.zip"
    trained = train_view_package(
        view_dataset,
        out,
        name="test-views",
        version="0.1.0",
        backbone_model=backbone,
        backbone=BACKBONE,
        config=TrainConfig(epochs=200),
    )
    assert out.is_file() and trained.sha256 == sha256_file(out)
    return out


def repack(src: Path, dst: Path, edit: Edit, rehash: bool = True) -> Path:
    """Unzip a package, let ``edit`` change the folder, and zip it again.

    With ``rehash`` the member hashes in package.json are recomputed, so the package is
    self-consistent and only what ``edit`` did is wrong with it.
    """
    work = dst.parent / f"{dst.stem}-work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    with zipfile.ZipFile(src) as zf:
        zf.extractall(work)
    edit(work)
    meta_path = work / "package.json"
    if rehash and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        meta["files"] = {
            p.name: sha256_file(p)
            for p in sorted(work.iterdir())
            if p.is_file() and p.name != "package.json"
        }
        meta_path.write_text(json.dumps(meta, indent=2))
    with zipfile.ZipFile(dst, "w") as zf:
        for p in sorted(work.iterdir()):
            zf.write(p, p.name)
    shutil.rmtree(work)
    return dst


@pytest.fixture
def make_package(package: Path, tmp_path: Path) -> Callable[..., Path]:
    """A copy of the trained package with ``edit`` applied (see ``repack``)."""

    def make(name: str, edit: Edit, rehash: bool = True) -> Path:
        return repack(package, tmp_path / f"{name}.zip", edit, rehash)

    return make
