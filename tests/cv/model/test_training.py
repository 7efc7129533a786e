"""cv.model.training: train_view_package with the shipped backbone on the CPU (the session's
``backbone`` fixture). tests/cv/model/test_package.py checks the package the CLI trains on
the synthetic dataset (its members, card and accuracy); here: that a package loaded back by
the registry predicts exactly the held-out evaluation it records, what it records of its
data (split, counts per class, provenance, synthetic or not), the flat folder layout, a
dataset with nothing to hold out, and embedding files chunk by chunk."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from cv.images import encode_jpeg
from cv.model import training
from cv.model.heads import TrainConfig, classify_frames, evaluate
from cv.model.network import LoadedModel, embed_frames
from cv.model.training import embed_files, train_view_package
from cv.model.viewdata import load_image, read_dataset
from scanflow.contracts.options import ModelRef
from scanflow.models.registry import BACKBONE, load_package

CPU = torch.device("cpu")
COLOURS = {"front": (200, 60, 60), "left": (60, 60, 200), "other": (60, 180, 60)}


def _flat_dataset(root: Path, per_class: int) -> Path:
    """root/<label>/*.jpg: textured frames whose colour is the class."""
    rng = np.random.default_rng(0)
    for label, colour in COLOURS.items():
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            noise = rng.normal(0, 25, (48, 64, 3))
            rgb = np.clip(np.array(colour, np.float64) + noise, 0, 255).astype(np.uint8)
            (root / label / f"{i:03d}.jpg").write_bytes(encode_jpeg(rgb))
    return root


def _meta(archive: Path) -> dict:
    with zipfile.ZipFile(archive) as zf:
        return {
            "package": json.loads(zf.read("package.json")),
            "card": zf.read("MODEL_CARD.md").decode(),
        }


def _reevaluate(archive: Path, sha256: str, data_dir: Path, cache: Path, **split: object):
    """Load the archive as a run would and evaluate it on the dataset's held-out frames."""
    model = load_package(ModelRef(uri=archive.as_uri(), sha256=sha256), cache, CPU)
    heldout = read_dataset(data_dir, **split).heldout  # type: ignore[arg-type]
    pred = classify_frames(model, [load_image(p) for p, _ in heldout], batch_size=8)
    return evaluate(np.array([c for _, c in heldout]), pred.views, model.labels)


def test_a_package_from_a_flat_folder_loads_and_reproduces_its_evaluation(
    backbone: LoadedModel, tmp_path: Path
) -> None:
    data = _flat_dataset(tmp_path / "data", per_class=4)
    out = tmp_path / "pkg" / "colours-0.2.0.zip"
    config = TrainConfig(epochs=60, seed=3)
    trained = train_view_package(
        data,
        out,
        name="colours",
        version="0.2.0",
        backbone_model=backbone,
        backbone=BACKBONE,
        config=config,
        heldout_fraction=0.3,
    )
    assert trained.path == out and trained.labels == ("front", "left", "other")
    assert trained.train_frames == 9 and trained.evaluation.frames == 3  # 1 of 4 per class
    assert trained.evaluation.accuracy == 1.0
    again = _reevaluate(out, trained.sha256, data, tmp_path / "cache", heldout_fraction=0.3, seed=3)
    assert again == trained.evaluation

    meta = _meta(out)
    record = meta["package"]["training"]
    assert record["split"] == "30% of each class drawn at random (seed 3)"
    assert record["dataset"] == "data" and record["synthetic"] is False
    assert record["train_frames"] == 9 and record["heldout_frames"] == 3
    assert record["train_frames_per_class"] == {"front": 3, "left": 3, "other": 3}
    assert record["heldout_frames_per_class"] == {"front": 1, "left": 1, "other": 1}
    assert record["config"] == {
        "epochs": 60,
        "learning_rate": 0.05,
        "weight_decay": 1e-4,
        "seed": 3,
    }
    assert record["dataset_provenance"] == {}
    assert "synthetic" not in meta["card"].lower()


def test_synthetic_can_be_declared_for_a_dataset_without_provenance(
    backbone: LoadedModel, tmp_path: Path
) -> None:
    data = _flat_dataset(tmp_path / "renders", per_class=3)
    trained = train_view_package(
        data,
        tmp_path / "p.zip",
        name="renders",
        version="1",
        backbone_model=backbone,
        backbone=BACKBONE,
        config=TrainConfig(epochs=20),
        heldout_fraction=0.34,
        synthetic=True,
    )
    meta = _meta(trained.path)
    assert meta["package"]["training"]["synthetic"] is True
    assert "**Trained and evaluated on synthetic data only**" in meta["card"]


def test_a_dataset_with_nothing_to_hold_out_is_refused(
    backbone: LoadedModel, tmp_path: Path
) -> None:
    data = _flat_dataset(tmp_path / "tiny", per_class=1)  # one frame a class: all for training
    out = tmp_path / "never.zip"
    with pytest.raises(ValueError, match=f"{data} gives no held-out frames"):
        train_view_package(
            data, out, name="n", version="1", backbone_model=backbone, backbone=BACKBONE
        )
    assert not out.exists()


def test_files_are_embedded_chunk_by_chunk_with_progress(
    backbone: LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _flat_dataset(tmp_path / "data", per_class=4)
    paths = sorted(data.glob("*/*.jpg"))[:10]
    monkeypatch.setattr(training, "_CHUNK", 4)  # 4 images decoded at a time
    seen: list[tuple[int, int]] = []
    emb = embed_files(backbone, paths, batch_size=3, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(4, 10), (8, 10), (10, 10)]
    assert emb.shape == (10, 1280) and emb.dtype == np.float32
    whole = embed_frames(backbone, [load_image(p) for p in paths], batch_size=10)
    np.testing.assert_allclose(emb, whole, atol=1e-4)


@pytest.mark.integration
def test_the_cli_trained_package_records_its_synthetic_data_and_reproduces_its_evaluation(
    package: Path, view_dataset: Path, tmp_path: Path
) -> None:
    """The session's package (``scanflow model train`` on the synthetic dataset, which runs
    train_view_package): its record of the data matches the dataset's own dataset.json."""
    from cv.model.network import sha256_file

    provenance = json.loads((view_dataset / "dataset.json").read_text())
    record = _meta(package)["package"]["training"]
    assert record["synthetic"] is True  # from dataset.json: the CLI does not say
    assert record["split"] == "the heldout/ folder, as given"
    assert record["train_frames_per_class"] == provenance["frames"]["train"]
    assert record["heldout_frames_per_class"] == provenance["frames"]["heldout"]
    assert record["dataset_provenance"] == {k: v for k, v in provenance.items() if k != "frames"}
    recorded = json.loads(zipfile.ZipFile(package).read("evaluation.json"))
    again = _reevaluate(package, sha256_file(package), view_dataset, tmp_path / "cache")
    assert again.as_dict() == recorded
