"""train-view-model: a view classifier trained from a labelled folder, where people can see
it. The run's page shows the parameters, the dataset's fingerprint and class counts, loss
and accuracy per epoch (a table artifact updated as training goes), the held-out confusion
matrix as a picture and the model card. ``scanflow model train`` runs it; the
``train-gpu`` deployment runs it on the GPU pool.
"""

from __future__ import annotations

import base64
import json
import zipfile
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from scanflow.models.registry import publish_package
from tasks.training import train_package, training_key


@flow(name="train-view-model", flow_run_name="{name}-{version}", persist_result=False)
def train_view_model(
    data_dir: str,
    name: str = "view-classifier",
    version: str = "1.0.0",
    out: str | None = None,
    epochs: int = 300,
    seed: int = 0,
    heldout_fraction: float = 0.2,
    threads: int | None = None,
    publish: str | None = None,
    replace: bool = False,
) -> dict[str, Any]:
    """Train, describe, and publish to ``publish`` (a registry URI) when given."""
    target = out or str(Path(f"{name}-{version}.zip").resolve())
    result = train_package(data_dir, target, name, version, epochs, seed, heldout_fraction, threads)
    _describe(result, data_dir, epochs, seed)
    if publish:
        result["published"] = publish_package(Path(target), publish, replace=replace).uri
    return result


def _describe(result: dict[str, Any], data_dir: str, epochs: int, seed: int) -> None:
    with zipfile.ZipFile(result["path"]) as zf:
        meta = json.loads(zf.read("package.json"))
        card = zf.read("MODEL_CARD.md").decode()
        confusion = base64.b64encode(zf.read("confusion.png")).decode()
    training = meta.get("training", {})
    ev = result["evaluation"]
    counts = training.get("train_frames_per_class", {})
    held = training.get("heldout_frames_per_class", {})
    lines = [
        f"## {meta.get('name')} {meta.get('version')}: held-out accuracy {ev['accuracy']:.1%}",
        "",
        "| parameter | value |",
        "| --- | --- |",
        f"| dataset | `{data_dir}` |",
        f"| dataset sha256 | `{training.get('dataset_sha256', '?')}` |",
        f"| synthetic frames | {training.get('synthetic')} |",
        f"| split | {training.get('split')} |",
        f"| epochs, seed | {epochs}, {seed} |",
        f"| embedded on | {result['device']} |",
        f"| package sha256 | `{result['sha256']}` |",
        "",
        "| view | training frames | held-out frames | recall | precision |",
        "| --- | --- | --- | --- | --- |",
    ]
    for label in result["labels"]:
        recall, precision = ev["per_class_recall"].get(label), ev["per_class_precision"].get(label)
        lines.append(
            f"| {label} | {counts.get(label, 0)} | {held.get(label, 0)} | "
            f"{'-' if recall is None else f'{recall:.0%}'} | "
            f"{'-' if precision is None else f'{precision:.0%}'} |"
        )
    lines += [
        "",
        f"![held-out confusion matrix](data:image/png;base64,{confusion})",
        "",
        "---",
        "",
        card,
    ]
    create_markdown_artifact(
        key=f"{training_key(str(meta.get('name')), str(meta.get('version')))}-card",
        markdown="\n".join(lines),
        description="the trained package: figures, confusion matrix and model card",
    )
