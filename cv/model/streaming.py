"""Classify frames while the video is still decoding, with the model loading meanwhile.

Decoding is the floor of the pipeline; this puts the model under it, and its loading too:
importing torch and loading the weights take ~1.5 s on 2 cores, which would otherwise come
before the first frame is decoded. This module does not import torch; the background
thread does, through ``load``.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from cv.model.predictions import EMBEDDING_DIM, FramePredictions

if TYPE_CHECKING:
    from cv.model.heads import Classifier

_NONE = np.empty((0, EMBEDDING_DIM), np.float32)  # a batch's embeddings, once spilled


class StreamingClassifier:
    """A background thread loads the model (``load``), then takes frames in order from a
    bounded queue and runs them through it batch by batch.

    While the model loads, the queue holds up to ``backlog`` frames: enough for the frames
    that decode meanwhile. Once it has loaded, a push waits while two batches are queued:
    a decoder that outruns the model waits for it, holding no more frames than that, so
    the peak does not depend on how long the scan is (a long scan would otherwise keep
    the whole backlog queued, which a short one never fills). A failure, the model's load included,
    reaches the producer at its next ``push`` or at ``finish``. Use as a context manager:
    leaving it early (decoding failed) stops the thread.

    With ``spill``, the embeddings (5 KB a frame) go to that file batch by batch instead of
    staying in memory while the video decodes; ``finish`` maps them back.
    """

    def __init__(
        self,
        load: Callable[[], Classifier],
        batch_size: int = 16,
        threads: int | None = None,
        backlog: int = 0,
        after_batch: Callable[[], object] | None = None,
        spill: Path | None = None,
    ):
        self.batch_size, self.threads = batch_size, threads
        self.model: Classifier | None = None  # once loaded
        self.busy_s = 0.0  # seconds spent in the model
        self._load = load
        self._after_batch = after_batch
        self._spill = spill
        if spill is not None:
            spill.write_bytes(b"")
        self._steady = 2 * batch_size  # frames queued at most once the model has loaded
        self._queue: queue.Queue[npt.NDArray[np.uint8] | None] = queue.Queue(
            max(self._steady, backlog)
        )
        self._taken = threading.Condition()  # notified whenever the thread takes a frame
        self._parts: list[FramePredictions] = []
        self._error: BaseException | None = None
        self._settled = threading.Event()  # the load ended, well or not
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="classify", daemon=True)
        self._thread.start()

    def push(self, rgb: npt.NDArray[np.uint8]) -> None:
        """Queue one RGB frame (blocks while the queue is full)."""
        if self._error is not None:
            raise self._error
        self._queue.put(rgb)
        if self.model is not None:
            with self._taken:
                self._taken.wait_for(
                    lambda: self._queue.qsize() <= self._steady or self._error is not None
                )

    def wait_loaded(self) -> Classifier:
        """Block until the model has loaded; raise what its load raised."""
        self._settled.wait()
        if self.model is None:
            raise self._error or RuntimeError("the stream closed before its model loaded")
        return self.model

    def finish(self) -> FramePredictions:
        """Classify what is queued and return the predictions of every pushed frame."""
        self._close()
        if self._error is not None:
            raise self._error
        if not self._parts:
            return FramePredictions(
                np.empty((0, EMBEDDING_DIM), np.float32),
                np.empty(0, np.int64),
                np.empty(0, np.float32),
            )
        views = np.concatenate([p.views for p in self._parts])
        if self._spill is not None:
            embeddings: npt.NDArray[np.float32] = np.memmap(
                self._spill, np.float32, "r", shape=(len(views), EMBEDDING_DIM)
            )
        else:
            embeddings = np.concatenate([p.embeddings for p in self._parts])
        return FramePredictions(
            embeddings, views, np.concatenate([p.confidence for p in self._parts])
        )

    def __enter__(self) -> StreamingClassifier:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._close()

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._thread.join()

    def _run(self) -> None:
        batch: list[npt.NDArray[np.uint8]] = []
        try:
            try:
                self.model = model = self._load()
            except BaseException as exc:
                self._error = exc  # before the event: a waiter must see the load's own error
                raise
            finally:
                self._settled.set()
            from cv.model.heads import classify_frames  # torch: imported here, off the decoder
            from cv.model.network import torch_threads

            # the thread count once for the whole stream, not set and restored every batch
            with torch_threads(self.threads):
                while True:
                    rgb = self._get()
                    if rgb is not None:
                        batch.append(rgb)
                    if batch and (rgb is None or len(batch) == self.batch_size):
                        start = time.perf_counter()
                        part = classify_frames(model, batch, self.batch_size)
                        if self._spill is not None:
                            with self._spill.open("ab") as f:
                                f.write(part.embeddings.tobytes())
                            part = FramePredictions(_NONE, part.views, part.confidence)
                        self._parts.append(part)
                        self.busy_s += time.perf_counter() - start
                        batch = []
                        if self._after_batch is not None:
                            self._after_batch()
                    if rgb is None:
                        return
        except BaseException as exc:  # noqa: BLE001 - handed to the producer
            self._error = exc
            self._settled.set()
            while self._get() is not None:  # never leave the producer blocked
                pass

    def _get(self) -> npt.NDArray[np.uint8] | None:
        rgb = self._queue.get()
        with self._taken:
            self._taken.notify_all()
        return rgb
