"""Small heads on the frame embeddings: the view classifier, its training and evaluation.

The head is a softmax regression on the backbone's L2-normalised 1280-d embeddings. It is
trained full-batch (the datasets are thousands of frames, not millions) from zeros, so the
same data gives the same weights, and no global torch state is touched.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from cv.model.network import (
    LoadedModel,
    ModelIdentity,
    iter_embeddings,
    torch_threads,
)
from cv.model.predictions import EMBEDDING_DIM, FramePredictions


class _ZeroLinear(nn.Linear):
    """A linear layer that starts at zeros, not nn.Linear's random init: softmax regression
    is convex, so the start does not matter, and this way building a head never draws from
    torch's global RNG. (Not built on the meta device and zeroed after: the meta device's
    first use imports sympy, ~0.4 s of every run's start.)"""

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight)
        nn.init.zeros_(self.bias)


class ViewHead(nn.Module):
    """Logits over ``n_classes`` from an embedding: one linear layer."""

    def __init__(self, n_classes: int, in_dim: int = EMBEDDING_DIM) -> None:
        super().__init__()
        self.linear = _ZeroLinear(in_dim, n_classes)

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


EpochReport = Callable[[int, float, float, float | None], None]


def train_head(
    embeddings: npt.NDArray[np.float32],
    targets: npt.NDArray[np.int64],
    n_classes: int,
    config: TrainConfig | None = None,
    *,
    heldout: tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]] | None = None,
    report: EpochReport | None = None,
    reports: int = 20,
) -> ViewHead:
    """Fit a view head by full-batch Adam on class-balanced cross-entropy.

    Args:
        embeddings: N x D float32 (rows of unit length, from ``embed_frames``).
        targets: N class indices in ``range(n_classes)``.
        n_classes: how many labels the head predicts.
        config: epochs, learning rate, weight decay and seed (default: TrainConfig()).
        heldout: embeddings and targets to measure accuracy on as training goes.
        report: called ``reports`` times (and after the last epoch) with the epoch, the
            training loss, the training accuracy and the held-out accuracy (None without
            ``heldout``).
        reports: how many times to call ``report``.
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
    every = max(1, config.epochs // max(1, reports))
    head.train()
    for epoch in range(1, config.epochs + 1):
        opt.zero_grad(set_to_none=True)
        logits = head(x)
        loss = loss_fn(logits, y)
        loss.backward()
        opt.step()
        if report is not None and (epoch % every == 0 or epoch == config.epochs):
            train_acc = float((logits.argmax(dim=1) == y).float().mean())
            held_acc = None
            if heldout is not None and len(heldout[1]):
                with torch.no_grad():
                    pred = head(torch.from_numpy(np.ascontiguousarray(heldout[0], np.float32)))
                held_acc = float((pred.argmax(dim=1).numpy() == heldout[1]).mean())
            report(epoch, float(loss), train_acc, held_acc)
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


def classify_frames(
    model: Classifier,
    frames: Sequence[npt.NDArray[np.uint8]],
    batch_size: int = 16,
    threads: int | None = None,
) -> FramePredictions:
    """Embed RGB frames and predict each one's view, in batches.

    Args:
        model: from ``cv.model.package.load_classifier``.
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
