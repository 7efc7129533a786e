"""train_package: fit a view head on a labelled folder, in the Prefect UI as it goes
(flows/train_view_model.py composes it). Training itself is cv.model.training's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE


def training_key(name: str, version: str) -> str:
    """The key of a training run's per-epoch table (lowercase letters, digits, dashes)."""
    slug = "".join(c if c.isalnum() else "-" for c in f"{name}-{version}".lower())
    return f"training-{slug}"[:60].rstrip("-")


@task(name="train-view-package", cache_policy=NO_CACHE)
def train_package(
    data_dir: str,
    out: str,
    name: str,
    version: str,
    epochs: int,
    seed: int,
    heldout_fraction: float,
    threads: int | None,
) -> dict[str, Any]:
    """Embed the frames (on the GPU when there is one), fit the head, write the package;
    a table artifact gets a row of loss and accuracy every 5% of the epochs."""
    import torch

    from cv.model.heads import TrainConfig
    from cv.model.network import load_backbone
    from cv.model.training import train_view_package
    from scanflow.models.registry import BACKBONE, BACKBONE_IDENTITY, installed_backbone

    log = get_run_logger()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backbone = load_backbone(installed_backbone(), BACKBONE_IDENTITY, device)
    key = training_key(name, version)
    rows: list[dict[str, Any]] = []

    def progress(done: int, total: int) -> None:
        log.info("embedded %d of %d frames on %s", done, total, device)

    def report(epoch: int, loss: float, train_acc: float, heldout_acc: float | None) -> None:
        rows.append(
            {
                "epoch": epoch,
                "loss": round(loss, 4),
                "train accuracy": round(train_acc, 4),
                "held-out accuracy": None if heldout_acc is None else round(heldout_acc, 4),
            }
        )
        create_table_artifact(
            key=key, table=rows, description=f"{name} {version}: epoch {epoch} of {epochs}"
        )

    trained = train_view_package(
        Path(data_dir),
        Path(out),
        name=name,
        version=version,
        backbone_model=backbone,
        backbone=BACKBONE,
        config=TrainConfig(epochs=epochs, seed=seed),
        heldout_fraction=heldout_fraction,
        threads=threads,
        progress=progress,
        epoch_report=report,
    )
    return {
        "path": str(trained.path.resolve()),
        "sha256": trained.sha256,
        "labels": list(trained.labels),
        "train_frames": trained.train_frames,
        "evaluation": trained.evaluation.as_dict(),
        "epochs": rows,
        "device": str(device),
    }
