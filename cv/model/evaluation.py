"""A view classifier measured on labelled frames: accuracy, per-view precision and recall,
the confusion matrix, and calibration (expected calibration error: how far the model's
confidence is from how often it is right).

Two packages measured on the same frames compare side by side (``scanflow model
evaluate``): what a candidate would change before it is promoted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from cv.model.heads import Classifier, Evaluation, classify_frames, evaluate
from cv.model.viewdata import load_image

CHUNK = 64  # images decoded at once


@dataclass(frozen=True)
class Measured:
    evaluation: Evaluation
    ece: float  # expected calibration error, 0 (calibrated) .. 1
    unknown: int  # frames of a class the package does not know (counted as wrong)

    def as_dict(self) -> dict[str, object]:
        return {**self.evaluation.as_dict(), "ece": self.ece, "unknown_class_frames": self.unknown}


def expected_calibration_error(
    confidence: npt.NDArray[np.float32], correct: npt.NDArray[np.bool_], bins: int = 10
) -> float:
    """Σ over equal-width confidence bins of (share of frames) × |accuracy − mean confidence|."""
    if len(confidence) == 0:
        return 0.0
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            gap = abs(float(correct[inside].mean()) - float(confidence[inside].mean()))
            total += float(inside.mean()) * gap
    return round(total, 4)


def measure(
    model: Classifier,
    frames: Sequence[tuple[Path, str]],
    batch_size: int = 16,
    threads: int | None = None,
) -> Measured:
    """Classify each (image, true label) and measure the result against the truth.

    A frame whose label the package does not know counts as wrong (it cannot be right)."""
    labels = list(model.labels)
    index = {lab: i for i, lab in enumerate(labels)}
    predicted = np.empty(len(frames), np.int64)
    confidence = np.empty(len(frames), np.float32)
    for start in range(0, len(frames), CHUNK):
        images = [load_image(p) for p, _ in frames[start : start + CHUNK]]
        out = classify_frames(model, images, batch_size, threads)
        predicted[start : start + len(images)] = out.views
        confidence[start : start + len(images)] = out.confidence
    known = np.array([lab in index for _, lab in frames], bool)
    truth = np.array([index.get(lab, -1) for _, lab in frames], np.int64)
    correct = known & (truth == predicted)
    evaluation = evaluate(truth[known], predicted[known], labels)
    accuracy = round(float(correct.mean()), 4) if len(frames) else 0.0
    evaluation = Evaluation(
        labels=evaluation.labels,
        frames=len(frames),
        accuracy=accuracy,
        per_class_recall=evaluation.per_class_recall,
        per_class_precision=evaluation.per_class_precision,
        confusion=evaluation.confusion,
    )
    return Measured(
        evaluation, expected_calibration_error(confidence, correct), int((~known).sum())
    )
