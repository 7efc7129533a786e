"""Training a view head on a folder-per-class dataset and writing it as a model package."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cv.model.heads import EpochReport, Evaluation, TrainConfig, evaluate, predict, train_head
from cv.model.network import Backbone, LoadedModel, embed_frames, sha256_file
from cv.model.package import write_package
from cv.model.predictions import EMBEDDING_DIM
from cv.model.viewdata import LabelledFrames, load_image, read_dataset

_CHUNK = 64  # images decoded at once while embedding: bounds memory on big datasets


@dataclass(frozen=True)
class TrainedPackage:
    """Where the package went and how it did."""

    path: Path
    sha256: str
    labels: tuple[str, ...]
    evaluation: Evaluation
    train_frames: int


def embed_files(
    model: LoadedModel,
    paths: Sequence[Path],
    batch_size: int = 16,
    threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> npt.NDArray[np.float32]:
    """Embeddings of image files, decoded a chunk at a time."""
    out = np.empty((len(paths), EMBEDDING_DIM), np.float32)
    for start in range(0, len(paths), _CHUNK):
        images = [load_image(p) for p in paths[start : start + _CHUNK]]
        out[start : start + len(images)] = embed_frames(model, images, batch_size, threads)
        if progress is not None:
            progress(start + len(images), len(paths))
    return out


def train_view_package(
    data_dir: Path,
    out: Path,
    *,
    name: str,
    version: str,
    backbone_model: LoadedModel,
    backbone: Backbone,
    config: TrainConfig | None = None,
    heldout_fraction: float = 0.2,
    synthetic: bool | None = None,
    threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    epoch_report: EpochReport | None = None,
) -> TrainedPackage:
    """Fit a view head on a dataset's training frames, evaluate it on the held-out ones,
    and write the model package.

    Args:
        data_dir: a folder-per-class dataset (see cv.model.viewdata).
        out: the package archive to write.
        name: model name.
        version: model version.
        backbone_model: the loaded backbone that embeds the frames.
        backbone: its identity, source and licence, recorded in the package.
        config: head training settings.
        heldout_fraction: used only when the dataset has no split folders.
        synthetic: the frames are synthetic renders (the model card says so); None: as
            the dataset's dataset.json says.
        threads: CPU threads for embedding.
        progress: called with (frames embedded, total).
        epoch_report: called as training goes (cv.model.heads.train_head's ``report``).
    Returns:
        The archive's path and sha256, the labels and the held-out evaluation.
    Raises:
        ValueError: when the dataset has fewer than two classes or no held-out frames.
    """
    data: LabelledFrames = read_dataset(data_dir, heldout_fraction, config.seed if config else 0)
    if not data.heldout:
        raise ValueError(f"{data_dir} gives no held-out frames to evaluate on")
    paths = [p for p, _ in data.train] + [p for p, _ in data.heldout]
    emb = embed_files(backbone_model, paths, threads=threads, progress=progress)
    n_train = len(data.train)
    y_train = np.array([c for _, c in data.train], np.int64)
    y_held = np.array([c for _, c in data.heldout], np.int64)
    config = config or TrainConfig()
    head = train_head(
        emb[:n_train],
        y_train,
        len(data.labels),
        config,
        heldout=(emb[n_train:], y_held),
        report=epoch_report,
    )
    predicted, _ = predict(head, emb[n_train:])
    evaluation = evaluate(y_held, predicted, data.labels)
    training: Mapping[str, Any] = {
        "dataset": data_dir.name,
        "dataset_sha256": fingerprint(data),
        "synthetic": bool(data.provenance.get("synthetic")) if synthetic is None else synthetic,
        "dataset_provenance": {k: v for k, v in data.provenance.items() if k != "frames"},
        "split": data.split,
        "train_frames": n_train,
        "heldout_frames": len(data.heldout),
        "train_frames_per_class": _per_class(y_train, data.labels),
        "heldout_frames_per_class": _per_class(y_held, data.labels),
        "config": asdict(config),
    }
    sha = write_package(
        out,
        name=name,
        version=version,
        labels=data.labels,
        head=head,
        backbone=backbone,
        training=training,
        evaluation=evaluation,
    )
    return TrainedPackage(out, sha, data.labels, evaluation, n_train)


def fingerprint(data: LabelledFrames) -> str:
    """The dataset's identity: a sha256 over every frame's split, label and content."""
    digest = hashlib.sha256()
    for split, pairs in (("train", data.train), ("heldout", data.heldout)):
        for path, label in pairs:
            digest.update(f"{split}/{data.labels[label]}/{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def _per_class(y: npt.NDArray[np.int64], labels: Sequence[str]) -> dict[str, int]:
    counts = Counter(int(v) for v in y)
    return {lab: counts.get(i, 0) for i, lab in enumerate(labels)}
