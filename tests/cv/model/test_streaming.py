"""cv.model.streaming.StreamingClassifier with a real classifier: the shipped backbone (the
session's ``backbone`` fixture, on the CPU) under a small seeded view head. What
tests/cv/model/test_package.py does not already check: the callback after each batch, a
stream given no frames, ``wait_loaded`` (blocking, and raising what the load raised), pushes
that wait for the load once the queue is full, and torch's thread count after a stream."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
import pytest
import torch

from cv.errors import ProcessingError, Reason
from cv.model.heads import Classifier, ViewHead, classify_frames
from cv.model.network import LoadedModel, ModelIdentity
from cv.model.predictions import EMBEDDING_DIM, VIEW_LABELS
from cv.model.streaming import StreamingClassifier


@pytest.fixture(scope="module")
def model(backbone: LoadedModel) -> Classifier:
    head = ViewHead(len(VIEW_LABELS))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        head.linear.weight.copy_(torch.randn(head.linear.weight.shape, generator=gen) * 3)
    return Classifier(ModelIdentity("test", "0", "0" * 64), backbone, head.eval(), VIEW_LABELS)


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    return [rng.integers(0, 256, (48, 64, 3), np.uint8) for _ in range(9)]


def _gated(model: Classifier) -> tuple[threading.Event, Callable[[], Classifier]]:
    gate = threading.Event()

    def load() -> Classifier:
        assert gate.wait(10)
        return model

    return gate, load


def _wait_until(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_after_batch_runs_once_a_batch_and_predictions_match_the_batch_call(
    model: Classifier, frames: list[np.ndarray]
) -> None:
    calls: list[int] = []
    with StreamingClassifier(lambda: model, batch_size=4, after_batch=lambda: calls.append(1)) as s:
        for rgb in frames:
            s.push(rgb)
        got = s.finish()
    assert len(calls) == 3  # 4 + 4 + the last one
    expected = classify_frames(model, frames, batch_size=4)
    assert len(set(expected.views.tolist())) > 1  # the head tells these frames apart
    np.testing.assert_array_equal(got.views, expected.views)
    np.testing.assert_allclose(got.confidence, expected.confidence, atol=1e-5)
    np.testing.assert_allclose(got.embeddings, expected.embeddings, atol=1e-5)
    assert got.embeddings.shape == (9, EMBEDDING_DIM) and s.busy_s > 0


def test_a_stream_given_no_frames_finishes_with_empty_predictions(model: Classifier) -> None:
    calls: list[int] = []
    with StreamingClassifier(lambda: model, after_batch=lambda: calls.append(1)) as stream:
        assert stream.wait_loaded() is model
        got = stream.finish()
    assert got.embeddings.shape == (0, EMBEDDING_DIM) and got.embeddings.dtype == np.float32
    assert got.views.shape == (0,) and got.views.dtype == np.int64
    assert got.confidence.shape == (0,) and got.confidence.dtype == np.float32
    assert calls == [] and stream.busy_s == 0


def test_wait_loaded_blocks_until_the_model_has_loaded(model: Classifier) -> None:
    gate, load = _gated(model)
    returned: list[Classifier] = []
    with StreamingClassifier(load) as stream:
        waiter = threading.Thread(target=lambda: returned.append(stream.wait_loaded()))
        waiter.start()
        waiter.join(0.2)
        assert waiter.is_alive() and stream.model is None
        gate.set()
        waiter.join(10)
        assert returned == [model] and stream.model is model
        stream.finish()


def test_a_failed_load_is_raised_by_wait_loaded_push_and_finish(
    frames: list[np.ndarray],
) -> None:
    error = ProcessingError(Reason.MODEL_ERROR, "model package views 1.0: no head.pt")

    def load() -> Classifier:
        raise error

    stream = StreamingClassifier(load, batch_size=4)
    with pytest.raises(ProcessingError) as waited:
        stream.wait_loaded()
    assert waited.value is error
    with pytest.raises(ProcessingError) as pushed:
        stream.push(frames[0])
    assert pushed.value is error
    with pytest.raises(ProcessingError) as finished:
        stream.finish()
    assert finished.value is error and finished.value.reason is Reason.MODEL_ERROR
    assert not stream._thread.is_alive()


def test_without_a_backlog_pushes_wait_for_the_load_once_two_batches_are_queued(
    model: Classifier, frames: list[np.ndarray]
) -> None:
    gate, load = _gated(model)
    pushed: list[int] = []
    with StreamingClassifier(load, batch_size=2) as stream:

        def produce() -> None:
            for i, rgb in enumerate(frames[:6]):
                stream.push(rgb)
                pushed.append(i)

        producer = threading.Thread(target=produce)
        producer.start()
        assert _wait_until(lambda: len(pushed) == 4)
        producer.join(0.3)
        assert producer.is_alive() and len(pushed) == 4  # the fifth waits for the model
        gate.set()
        producer.join(30)
        assert not producer.is_alive() and len(pushed) == 6
        got = stream.finish()
    np.testing.assert_array_equal(got.views, classify_frames(model, frames[:6], 2).views)


def test_leaving_while_the_model_loads_stops_the_thread(
    model: Classifier, frames: list[np.ndarray]
) -> None:
    gate, load = _gated(model)
    with (
        pytest.raises(RuntimeError, match="decoding failed"),
        StreamingClassifier(load, batch_size=4, backlog=8) as stream,
    ):
        for rgb in frames[:5]:
            stream.push(rgb)
        threading.Timer(0.1, gate.set).start()  # the load ends after the decoder failed
        raise RuntimeError("decoding failed")
    assert not stream._thread.is_alive() and stream.model is model


def test_torch_threads_are_as_they_were_after_a_stream_with_its_own_count(
    model: Classifier, frames: list[np.ndarray]
) -> None:
    before = torch.get_num_threads()
    with StreamingClassifier(lambda: model, batch_size=4, threads=1) as stream:
        for rgb in frames[:4]:
            stream.push(rgb)
        got = stream.finish()
    assert torch.get_num_threads() == before
    np.testing.assert_array_equal(got.views, classify_frames(model, frames[:4], 4).views)
