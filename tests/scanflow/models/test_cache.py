"""scanflow.models.cache: the CPUs a process may use (its real affinity mask and, where the
machine has one, its cgroup v2 quota), the per-process classifier cache loading the shipped
model package for real, and the predictions file extract_frames hands to run_inference."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest

from cv.model.predictions import FramePredictions
from scanflow.contracts.stages import ModelInfo
from scanflow.models.cache import (
    classifier,
    classifier_for,
    cpu_threads,
    load_predictions,
    save_predictions,
)
from scanflow.models.registry import DEFAULT_PACKAGE

CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def test_cpu_threads_is_at_most_the_cpus_this_process_may_run_on() -> None:
    n = cpu_threads()
    assert 1 <= n <= len(os.sched_getaffinity(0))
    if CPU_MAX.is_file():
        quota, period = CPU_MAX.read_text().split()[:2]
        if quota != "max":
            assert n <= max(1, math.ceil(int(quota) / int(period)))


def test_cpu_threads_follows_a_narrowed_affinity_mask() -> None:
    """sched_setaffinity(0) changes the calling thread only: the test's, restored after."""
    allowed = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(allowed)})
        assert cpu_threads() == 1
        if len(allowed) > 1:
            os.sched_setaffinity(0, set(sorted(allowed)[:2]))
            assert cpu_threads() in (1, 2)  # 1 only under a one-CPU quota
    finally:
        os.sched_setaffinity(0, allowed)


def test_predictions_round_trip_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    pred = FramePredictions(
        rng.standard_normal((5, 576)).astype(np.float32),
        np.array([0, 3, 3, 1, 6], np.int64),
        np.array([0.9, 0.51, 0.49, 1.0, 0.0], np.float32),
    )
    path = tmp_path / "predictions.npz"
    save_predictions(pred, path)
    back = load_predictions(str(path))
    for name in ("embeddings", "views", "confidence"):
        got, sent = getattr(back, name), getattr(pred, name)
        assert got.dtype == sent.dtype and got.shape == sent.shape
        assert np.array_equal(got, sent)


def test_no_predictions_is_a_valid_file(tmp_path: Path) -> None:
    empty = FramePredictions(
        np.zeros((0, 576), np.float32), np.zeros(0, np.int64), np.zeros(0, np.float32)
    )
    save_predictions(empty, tmp_path / "none.npz")
    assert load_predictions(str(tmp_path / "none.npz")).embeddings.shape == (0, 576)


def test_a_predictions_file_with_pickled_objects_is_refused(tmp_path: Path) -> None:
    """The file lies in a work folder: loading it must never run a pickle."""
    path = tmp_path / "predictions.npz"
    np.savez(
        path,
        embeddings=np.zeros((1, 2), np.float32),
        views=np.array([{"not": "an index"}], dtype=object),
        confidence=np.ones(1, np.float32),
    )
    with pytest.raises(ValueError, match="allow_pickle"):
        load_predictions(str(path))


@pytest.mark.integration  # unpacks and loads the shipped package: up to ~1 s on a busy CI
def test_one_classifier_per_package_and_device_is_shared(tmp_path: Path) -> None:
    from cv.model.network import pick_device

    cache = str(tmp_path / "models")
    device = str(pick_device("auto"))
    first = classifier(DEFAULT_PACKAGE, cache, device)
    assert first.labels and first.identity.sha256 == DEFAULT_PACKAGE.sha256
    assert classifier(DEFAULT_PACKAGE.model_copy(), cache, device) is first
    assert classifier(DEFAULT_PACKAGE, cache, "auto") is first  # "auto" is what it resolves to
    info = ModelInfo(
        name="view-classifier",
        version="1.0.0",
        sha256=DEFAULT_PACKAGE.sha256,  # type: ignore[arg-type]
        device=device,
        uri=DEFAULT_PACKAGE.uri,
    )
    assert classifier_for(info, cache) is first  # the model load_model recorded
    unnamed = DEFAULT_PACKAGE.model_copy(update={"name": None, "version": None})
    assert classifier(unnamed, cache, device) is not first  # another reference, its own entry
