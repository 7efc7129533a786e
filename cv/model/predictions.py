"""What the view classifier says about a scan's frames, without the model: per-frame
predictions and the views they cover. numpy only, so that code which only reads or
counts predictions (and the flow, which must start decoding before torch has loaded)
does not import torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

# The views the classifier names. The first five are the standard intraoral views that
# cv.synthetic renders; "other" is anything else (out of the mouth, dark, glare).
VIEW_LABELS = ("front", "left", "right", "upper_occlusal", "lower_occlusal", "other")

# Width of the backbone's frame embedding (MobileNetV2's last feature layer).
EMBEDDING_DIM = 1280


@dataclass(frozen=True)
class FramePredictions:
    """Per frame: the embedding, the predicted view (index into labels) and its probability."""

    embeddings: npt.NDArray[np.float32]
    views: npt.NDArray[np.int64]
    confidence: npt.NDArray[np.float32]


@dataclass(frozen=True)
class ViewCoverage:
    """Which views a scan's usable frames show, as the doctor's checklist needs it."""

    frames: dict[str, int]  # usable frames confidently predicted as each label
    uncertain: int  # usable frames whose best view is below the confidence threshold
    usable: int
    missing: tuple[str, ...]  # standard views with fewer than ``min_frames`` frames
    min_confidence: float
    min_frames: int


def view_coverage(
    views: npt.NDArray[np.int64],
    confidence: npt.NDArray[np.float32],
    usable: Sequence[bool],
    labels: Sequence[str],
    min_confidence: float = 0.5,
    min_frames: int = 1,
) -> ViewCoverage:
    """Count usable, confidently classified frames per view.

    Args:
        views: per kept frame, the predicted label index.
        confidence: per kept frame, that label's probability.
        usable: per kept frame, whether it passed the quality checks.
        labels: class names by index.
        min_confidence: below this a frame counts as uncertain, for no view.
        min_frames: a standard view with fewer frames is reported missing.
    Returns:
        Per-label counts and the standard views that are missing.
    """
    frames = dict.fromkeys(labels, 0)
    uncertain = n_usable = 0
    for v, c, ok in zip(views, confidence, usable, strict=True):
        if not ok:
            continue
        n_usable += 1
        if c < min_confidence:
            uncertain += 1
        else:
            frames[labels[int(v)]] += 1
    missing = tuple(
        v for v in VIEW_LABELS if v in frames and v != "other" and frames[v] < min_frames
    )
    return ViewCoverage(frames, uncertain, n_usable, missing, min_confidence, min_frames)
