"""The run's model in this process: what the manifest records of it, and the loaded
classifier, cached so that every task and every run in the process shares one copy.

Importing this module does not import torch (loading a model does): the flow starts
decoding while its model loads.
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cv.errors import Reason, scan_error
from cv.model.predictions import FramePredictions
from scanflow.contracts.options import ModelRef
from scanflow.contracts.stages import ModelInfo

if TYPE_CHECKING:
    from cv.model.heads import Classifier


def cpu_threads() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 CPU quota.

    torch defaults to the cores it can see, which in a container with a CPU quota (ECS,
    Fargate, Kubernetes) is the host's: too many threads, each throttled.
    """
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


@functools.lru_cache(maxsize=2)
def _classifier(
    ref: tuple[str, str, str | None, str | None], cache_dir: str, device: str
) -> Classifier:
    from cv.model.network import pick_device
    from scanflow.models.registry import load_package

    uri, sha256, name, version = ref
    return load_package(
        ModelRef(uri=uri, sha256=sha256, name=name, version=version),
        Path(cache_dir),
        pick_device(device),
    )


def _key(ref: ModelRef) -> tuple[str, str, str | None, str | None]:
    if ref.uri is None or ref.sha256 is None:
        raise scan_error(
            Reason.MODEL_ERROR,
            f"a pinned model needs a uri and a sha256; got uri={ref.uri!r}, sha256={ref.sha256!r}",
        )
    return (ref.uri, ref.sha256, ref.name, ref.version)


def classifier(ref: ModelRef, cache_dir: str, device: str) -> Classifier:
    """The package ``ref`` loaded on ``device``, once per process and device ("auto" and
    the device it resolves to are one entry)."""
    from cv.model.network import pick_device

    return _classifier(_key(ref), cache_dir, str(pick_device(device)))


def classifier_for(model: ModelInfo, cache_dir: str) -> Classifier:
    """The classifier ``load_model`` loaded for this run."""
    ref = ModelRef(uri=model.uri, sha256=model.sha256, name=model.name, version=model.version)
    return classifier(ref, cache_dir, model.device)


def save_predictions(pred: FramePredictions, path: Path) -> None:
    """Per kept frame: embedding, view and confidence, in one local .npz."""
    np.savez(path, embeddings=pred.embeddings, views=pred.views, confidence=pred.confidence)


def load_predictions(path: str) -> FramePredictions:
    with np.load(path, allow_pickle=False) as z:
        return FramePredictions(z["embeddings"], z["views"], z["confidence"])
