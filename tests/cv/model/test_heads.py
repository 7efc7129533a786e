"""The view head and the backbone's inference path, on synthetic frames with known views."""

from __future__ import annotations

import numpy as np
import torch

from cv.model.heads import TrainConfig, evaluate, predict, train_head
from cv.model.network import (
    INPUT_SIZE,
    MobileNetV2,
    embed_frames,
    fold_batchnorm,
    preprocess,
    to_input,
    torch_threads,
)
from cv.model.predictions import VIEW_LABELS, view_coverage
from scanflow.models.registry import installed_backbone


def _clusters(seed: int, n_per: int, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, 1280))
    x = np.concatenate([c + 0.3 * rng.normal(size=(n_per, 1280)) for c in centres])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), np.repeat(np.arange(k), n_per).astype(np.int64)


def test_head_separates_classes_it_was_not_trained_on_frames_of() -> None:
    x, y = _clusters(0, 30)
    head = train_head(x[::2], y[::2], 3, TrainConfig(epochs=100))
    predicted, confidence = predict(head, x[1::2])
    assert (predicted == y[1::2]).mean() == 1.0
    assert confidence.min() > 0.5


def test_training_is_deterministic_and_leaves_the_global_rng_alone() -> None:
    x, y = _clusters(1, 10)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = train_head(x, y, 3, TrainConfig(epochs=20, seed=7))
    after = torch.rand(1)
    b = train_head(x, y, 3, TrainConfig(epochs=20, seed=7))
    assert torch.equal(before, after)  # training drew nothing from the global generator
    assert torch.equal(a.linear.weight, b.linear.weight)


def test_evaluation_figures() -> None:
    truth = np.array([0, 0, 1, 1, 2], np.int64)
    pred = np.array([0, 1, 1, 1, 1], np.int64)
    ev = evaluate(truth, pred, ["a", "b", "c"])
    assert ev.accuracy == 0.6 and ev.frames == 5
    assert ev.confusion == ((1, 1, 0), (0, 2, 0), (0, 1, 0))
    assert ev.per_class_recall == {"a": 0.5, "b": 1.0, "c": 0.0}
    assert ev.per_class_precision == {"a": 1.0, "b": 0.5, "c": None}


def test_view_coverage_counts_usable_confident_frames_and_names_missing_views() -> None:
    labels = list(VIEW_LABELS)
    views = np.array([0, 0, 1, 2, 3, 5, 4], np.int64)
    conf = np.array([0.9, 0.8, 0.3, 0.9, 0.9, 0.9, 0.9], np.float32)
    usable = [True, True, True, True, True, True, False]
    cov = view_coverage(views, conf, usable, labels, min_confidence=0.5)
    assert cov.frames == {
        "front": 2,
        "left": 0,
        "right": 1,
        "upper_occlusal": 1,
        "lower_occlusal": 0,
        "other": 1,
    }
    assert cov.uncertain == 1 and cov.usable == 6
    assert cov.missing == ("left", "lower_occlusal")


def test_folding_batchnorm_keeps_the_embeddings() -> None:
    state = torch.load(installed_backbone(), map_location="cpu", weights_only=True)
    plain = MobileNetV2()
    plain.load_state_dict(state)
    plain.eval()
    folded = MobileNetV2()
    folded.load_state_dict(state)
    folded.eval()
    fold_batchnorm(folded)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(2, 3, 96, 96)
    with torch.inference_mode():
        torch.testing.assert_close(folded.embed(x), plain.embed(x), atol=1e-4, rtol=1e-4)


def test_preprocess_resizes_into_one_shared_uint8_buffer() -> None:
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in ((120, 160), (99, 77))]
    buf = np.zeros((4, INPUT_SIZE, INPUT_SIZE, 3), np.uint8)
    out = preprocess(frames, buf)
    assert out.shape == (2, INPUT_SIZE, INPUT_SIZE, 3) and out.dtype == np.uint8
    assert np.shares_memory(out, buf) and buf[:2].any() and not buf[2:].any()
    x = to_input(out, torch.device("cpu"))
    assert x.shape == (2, 3, INPUT_SIZE, INPUT_SIZE) and x.dtype == torch.float32
    assert x.is_contiguous(memory_format=torch.channels_last)
    # the centre crop of a 160-wide frame starts at column 20: a flat frame stays flat
    flat = np.full((120, 160, 3), 124, np.uint8)
    assert np.all(preprocess([flat]) == 124)


def test_thread_count_is_restored_after_a_call(backbone) -> None:  # type: ignore[no-untyped-def]
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    rng = np.random.default_rng(2)
    frames = [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(3)]
    one = embed_frames(backbone, frames, batch_size=2, threads=1)
    assert torch.get_num_threads() == before
    np.testing.assert_allclose(one, embed_frames(backbone, frames, batch_size=3), atol=1e-4)
