"""The human-readable parts of a model package: its model card and confusion figure."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np

from cv.model.heads import Evaluation
from cv.model.network import INPUT_SIZE, Backbone
from cv.model.predictions import EMBEDDING_DIM


def render_confusion(evaluation: Evaluation, cell: int = 56) -> bytes:
    """The confusion matrix as a PNG: rows are the truth, columns the prediction."""
    k = len(evaluation.labels)
    margin = 130
    img = np.full((margin + k * cell + 10, margin + k * cell + 10, 3), 255, np.uint8)
    cm = np.asarray(evaluation.confusion, np.float64)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    font = cv2.FONT_HERSHEY_SIMPLEX
    for i in range(k):
        for j in range(k):
            x0, y0 = margin + j * cell, margin + i * cell
            shade = int(255 - 200 * norm[i, j])
            colour = (shade, shade, 255) if i != j else (shade, 255, shade)
            cv2.rectangle(img, (x0, y0), (x0 + cell - 1, y0 + cell - 1), colour, -1)
            cv2.rectangle(img, (x0, y0), (x0 + cell - 1, y0 + cell - 1), (160, 160, 160), 1)
            text = str(int(cm[i, j]))
            cv2.putText(img, text, (x0 + 8, y0 + cell // 2 + 5), font, 0.45, (0, 0, 0), 1)
    for i, label in enumerate(evaluation.labels):
        short = label.replace("_occlusal", " occl.")
        y = margin + i * cell + cell // 2 + 4
        cv2.putText(img, short, (4, y), font, 0.4, (0, 0, 0), 1)
        col = np.full((cell, margin - 10, 3), 255, np.uint8)
        cv2.putText(col, short, (2, cell // 2 + 4), font, 0.4, (0, 0, 0), 1)
        rot = cv2.rotate(col, cv2.ROTATE_90_COUNTERCLOCKWISE)
        img[0 : margin - 10, margin + i * cell : margin + (i + 1) * cell] = rot
    cv2.putText(img, "truth \\ predicted", (4, 16), font, 0.4, (90, 90, 90), 1)
    cv2.putText(img, f"accuracy {evaluation.accuracy:.1%}", (4, 34), font, 0.4, (0, 0, 0), 1)
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise ValueError("PNG encoding failed")
    return bytes(buf)


def model_card(
    name: str,
    version: str,
    backbone: Backbone,
    labels: Sequence[str],
    training: Mapping[str, Any],
    evaluation: Evaluation,
    created_at: str,
    package_format: str,
    preprocessing: Mapping[str, Any],
) -> str:
    """MODEL_CARD.md text: written from the package's own facts, nothing claimed beyond."""
    synthetic = bool(training.get("synthetic"))
    data_line = (
        "**Trained and evaluated on synthetic data only**: frames rendered by "
        "`cv/synthetic.py`, a cartoon of a mouth (pink gums, white rectangles and discs for "
        "teeth) swept by a virtual scope. It has never seen a real mouth."
        if synthetic
        else "Trained on the labelled frames described below."
    )
    rows = [
        f"| {lab} | {training.get('train_frames_per_class', {}).get(lab, 0)} | "
        f"{training.get('heldout_frames_per_class', {}).get(lab, 0)} | "
        f"{_pct(evaluation.per_class_recall.get(lab))} | "
        f"{_pct(evaluation.per_class_precision.get(lab))} |"
        for lab in labels
    ]
    return "\n".join(
        [
            f"# Model card: {name} {version}",
            "",
            f"Created {created_at}. Package format `{package_format}`.",
            "",
            "## What it does",
            "",
            "Names the camera view of each kept frame of an intraoral scan video: "
            + ", ".join(f"`{lab}`" for lab in labels)
            + ". The flow stores the per-frame views next to the frame embeddings and "
            "reports view coverage in the manifest.",
            "",
            "**Not a medical device. No claim of clinical performance is made.** Use it to "
            "organise frames and to prompt a re-scan, never to diagnose.",
            "",
            "## Training data",
            "",
            data_line,
            "",
            f"- dataset: `{training.get('dataset', '?')}`",
            *(
                [f"- rendered with: `{json.dumps(prov.get('spec'))}`"]
                if (prov := training.get("dataset_provenance") or {}).get("spec")
                else []
            ),
            f"- split: {training.get('split', '?')}",
            f"- frames: {training.get('train_frames', '?')} for training, "
            f"{evaluation.frames} held out",
            "",
            "## Held-out evaluation",
            "",
            f"Accuracy on {evaluation.frames} held-out frames: **{evaluation.accuracy:.1%}**"
            + (
                " (synthetic frames from scans not used in training; real scans will differ)."
                if synthetic
                else "."
            ),
            "",
            "| view | train frames | held-out frames | recall | precision |",
            "| --- | --- | --- | --- | --- |",
            *rows,
            "",
            "Confusion matrix: `confusion.png`; all figures: `evaluation.json`.",
            "",
            "## Architecture and preprocessing",
            "",
            f"MobileNetV2 (width 1.0) → global average pool → L2-normalised {EMBEDDING_DIM}-d "
            f"embedding → one linear layer → softmax over {len(labels)} views. Frames: RGB, "
            f"centre square crop, area resize to {INPUT_SIZE} px, (x − mean) / std with "
            f"ImageNet mean {preprocessing['mean']} and std {preprocessing['std']} on 0..255.",
            _training_line(training.get("config", {})),
            "",
            "## Backbone and licence",
            "",
            f"- weights: {backbone.name} {backbone.version}, sha256 `{backbone.sha256}`",
            f"- source: {backbone.source or 'not recorded'}",
            f"- licence: {backbone.licence or 'not recorded'}",
            "",
            "## Limitations",
            "",
            "- Synthetic training data: expect lower accuracy on real scans until it is "
            "retrained on labelled real frames (`scanflow model train DATA_DIR`)."
            if synthetic
            else "- Accuracy holds only for frames like the training data.",
            "- Frames between two views carry the label of the view at their centre.",
            *(
                [
                    "- `cv/synthetic.py` draws the left and right views alike (the same six "
                    "teeth in a row), so only what shows at a frame's edges tells them apart: "
                    "expect those two to be confused more than the others."
                ]
                if synthetic
                else []
            ),
            "- The head is linear on a frozen ImageNet backbone; it cannot learn what the "
            "backbone does not see.",
            "",
        ]
    )


def _training_line(config: Mapping[str, Any]) -> str:
    if not config:
        return ""
    return (
        f"Head training: {config.get('epochs')} epochs of full-batch Adam (learning rate "
        f"{config.get('learning_rate')}, weight decay {config.get('weight_decay')}) on "
        f"class-balanced cross-entropy, seed {config.get('seed')}; the backbone is frozen."
    )


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{v:.1%}"
