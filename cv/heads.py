"""Small heads on the frame embeddings: the view classifier, its training and evaluation.

The head is a softmax regression on the backbone's L2-normalised 1280-d embeddings. It is
trained full-batch (the datasets are thousands of frames, not millions) from zeros, so the
same data gives the same weights, and no global torch state is touched.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from cv.model import (
    EMBEDDING_DIM,
    LoadedModel,
    ModelIdentity,
    iter_embeddings,
    torch_threads,
)

# The views the classifier names. The first five are the standard intraoral views that
# cv.synthetic renders; "other" is anything else (out of the mouth, dark, glare).
VIEW_LABELS = ("front", "left", "right", "upper_occlusal", "lower_occlusal", "other")


class ViewHead(nn.Module):
    """Logits over ``n_classes`` from an embedding: one linear layer."""

    def __init__(self, n_classes: int, in_dim: int = EMBEDDING_DIM) -> None:
        super().__init__()
        # Zeros, not nn.Linear's random init: softmax regression is convex, so the start
        # does not matter, and this way building a head never draws from torch's global RNG.
        self.linear = nn.Linear(in_dim, n_classes, device="meta").to_empty(device="cpu")
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    @property
    def n_classes(self) -> int:
        return self.linear.out_features

    @property
    def in_dim(self) -> int:
        return self.linear.in_features

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.linear(emb)
        return out


@dataclass(frozen=True)
class TrainConfig:
    """How to fit a head. The defaults fit a few hundred frames in well under a second."""

    epochs: int = 300
    learning_rate: float = 0.05
    weight_decay: float = 1e-4
    seed: int = 0  # draws held-out frames when a dataset has no split folders


def train_head(
    embeddings: npt.NDArray[np.float32],
    targets: npt.NDArray[np.int64],
    n_classes: int,
    config: TrainConfig | None = None,
) -> ViewHead:
    """Fit a view head by full-batch Adam on class-balanced cross-entropy.

    Args:
        embeddings: N x D float32 (rows of unit length, from ``embed_frames``).
        targets: N class indices in ``range(n_classes)``.
        n_classes: how many labels the head predicts.
        config: epochs, learning rate, weight decay and seed (default: TrainConfig()).
    Returns:
        The head in eval mode, on the CPU.
    Raises:
        ValueError: for empty data, mismatched lengths or targets out of range.
    """
    if len(embeddings) == 0 or len(embeddings) != len(targets):
        raise ValueError(f"{len(embeddings)} embeddings for {len(targets)} targets")
    if targets.min() < 0 or targets.max() >= n_classes:
        raise ValueError(f"targets must lie in 0..{n_classes - 1}")
    config = config or TrainConfig()
    head = ViewHead(n_classes, embeddings.shape[1])
    x = torch.from_numpy(np.ascontiguousarray(embeddings, np.float32))
    y = torch.from_numpy(np.ascontiguousarray(targets, np.int64))
    # Weight classes by inverse frequency, so a rare view is not traded for a common one.
    counts = torch.bincount(y, minlength=n_classes).float()
    weight = torch.where(counts > 0, counts.sum() / (n_classes * counts.clamp(min=1)), 0.0)
    loss_fn = nn.CrossEntropyLoss(weight=weight)
    opt = torch.optim.Adam(
        head.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    head.train()
    for _ in range(config.epochs):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(head(x), y)
        loss.backward()
        opt.step()
    return head.eval()


def predict(
    head: ViewHead, embeddings: npt.NDArray[np.float32] | torch.Tensor
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """Class index and softmax probability of the winner for each embedding."""
    x = torch.as_tensor(embeddings, dtype=torch.float32)
    with torch.inference_mode():
        probs = torch.softmax(head(x.to(head.linear.weight.device)), dim=1)
        conf, idx = probs.max(dim=1)
    return idx.cpu().numpy().astype(np.int64), conf.cpu().numpy().astype(np.float32)


@dataclass(frozen=True)
class Evaluation:
    """How a head did on labelled frames it was not trained on."""

    labels: tuple[str, ...]
    frames: int
    accuracy: float
    per_class_recall: dict[str, float | None]  # None: no frames of that class
    per_class_precision: dict[str, float | None]  # None: never predicted
    confusion: tuple[tuple[int, ...], ...]  # rows: truth, columns: prediction

    def as_dict(self) -> dict[str, object]:
        return {
            "labels": list(self.labels),
            "frames": self.frames,
            "accuracy": self.accuracy,
            "per_class_recall": self.per_class_recall,
            "per_class_precision": self.per_class_precision,
            "confusion": [list(r) for r in self.confusion],
        }


def evaluate(
    truth: npt.NDArray[np.int64], predicted: npt.NDArray[np.int64], labels: Sequence[str]
) -> Evaluation:
    """Accuracy, per-class recall and precision, and the confusion matrix.

    Args:
        truth: N true class indices.
        predicted: N predicted class indices.
        labels: the class names, by index.
    Returns:
        The figures, rounded to four decimals.
    """
    k = len(labels)
    cm = np.zeros((k, k), np.int64)
    np.add.at(cm, (truth, predicted), 1)
    n = int(cm.sum())
    diag = np.diag(cm)
    rows, cols = cm.sum(axis=1), cm.sum(axis=0)
    recall = {
        lab: (round(float(diag[i] / rows[i]), 4) if rows[i] else None)
        for i, lab in enumerate(labels)
    }
    precision = {
        lab: (round(float(diag[i] / cols[i]), 4) if cols[i] else None)
        for i, lab in enumerate(labels)
    }
    return Evaluation(
        labels=tuple(labels),
        frames=n,
        accuracy=round(float(diag.sum() / n), 4) if n else 0.0,
        per_class_recall=recall,
        per_class_precision=precision,
        confusion=tuple(tuple(int(v) for v in r) for r in cm),
    )


@dataclass
class Classifier:
    """A backbone and a view head on one device: embeddings and views in one pass."""

    identity: ModelIdentity  # the model package
    backbone: LoadedModel
    head: ViewHead
    labels: tuple[str, ...]


@dataclass(frozen=True)
class FramePredictions:
    """Per frame: the embedding, the predicted view (index into labels) and its probability."""

    embeddings: npt.NDArray[np.float32]
    views: npt.NDArray[np.int64]
    confidence: npt.NDArray[np.float32]


def classify_frames(
    model: Classifier,
    frames: Sequence[npt.NDArray[np.uint8]],
    batch_size: int = 16,
    threads: int | None = None,
) -> FramePredictions:
    """Embed RGB frames and predict each one's view, in batches.

    Args:
        model: from ``cv.package.load_classifier``.
        frames: RGB uint8 arrays of any size.
        batch_size: frames per forward pass.
        threads: CPU threads for this call (None: torch's current setting).
    Returns:
        Embeddings (N x 1280, unit rows), view indices and their probabilities.
    """
    n = len(frames)
    emb = np.empty((n, EMBEDDING_DIM), np.float32)
    views = np.empty(n, np.int64)
    conf = np.empty(n, np.float32)
    with torch_threads(threads), torch.inference_mode():
        for start, e in iter_embeddings(model.backbone, frames, batch_size):
            probs = torch.softmax(model.head(e), dim=1)
            c, v = probs.max(dim=1)
            end = start + len(e)
            emb[start:end] = e.cpu().numpy()
            views[start:end] = v.cpu().numpy()
            conf[start:end] = c.cpu().numpy()
    return FramePredictions(emb, views, conf)


class StreamingClassifier:
    """Classifies frames while they are still being decoded: a background thread takes
    them in order from a bounded queue and runs them through the model batch by batch.

    Decoding is the floor of the pipeline; this puts inference under it. The queue holds
    at most two batches, so memory stays flat however long the scan, and a decoder that
    outruns the model waits for it. Use as a context manager: leaving it early (decoding
    failed) stops the thread.
    """

    def __init__(self, model: Classifier, batch_size: int = 16, threads: int | None = None):
        self.model, self.batch_size, self.threads = model, batch_size, threads
        self.busy_s = 0.0  # seconds spent in the model
        self._queue: queue.Queue[npt.NDArray[np.uint8] | None] = queue.Queue(2 * batch_size)
        self._parts: list[FramePredictions] = []
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="classify", daemon=True)
        self._thread.start()

    def push(self, rgb: npt.NDArray[np.uint8]) -> None:
        """Queue one RGB frame (blocks while two batches wait)."""
        if self._error is not None:
            raise self._error
        self._queue.put(rgb)

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
        return FramePredictions(
            np.concatenate([p.embeddings for p in self._parts]),
            np.concatenate([p.views for p in self._parts]),
            np.concatenate([p.confidence for p in self._parts]),
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
            # the thread count once for the whole stream, not set and restored every batch
            with torch_threads(self.threads):
                while True:
                    rgb = self._queue.get()
                    if rgb is not None:
                        batch.append(rgb)
                    if batch and (rgb is None or len(batch) == self.batch_size):
                        start = time.perf_counter()
                        self._parts.append(classify_frames(self.model, batch, self.batch_size))
                        self.busy_s += time.perf_counter() - start
                        batch = []
                    if rgb is None:
                        return
        except BaseException as exc:  # noqa: BLE001 - handed to the producer
            self._error = exc
            while self._queue.get() is not None:  # never leave the producer blocked
                pass


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
