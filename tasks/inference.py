"""load_model and run_inference: the run's model, checked before any frame is classified,
then embeddings and per-frame views of the kept frames.

The model is loaded once per process (``load_model`` loads it; ``extract_frames`` and
``run_inference`` find it in the same cache, scanflow.models.cache) and shared by every run in that
process that uses the same package on the same device. The flow has ``extract_frames`` run
the model on each kept frame while the video is still decoding; ``run_inference`` then
stores and summarises those predictions, and computes them itself only when it was given
frames without them.

Importing this module does not import torch; running load_model does. The flow submits
load_model beside extract_frames, so that importing torch and loading the weights (~1.5 s
on 2 cores) happen while the video decodes, not before.
"""

from __future__ import annotations

import io
import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import numpy as np
from prefect import get_run_logger, task

from cv.images import RGB
from cv.model.predictions import FramePredictions, view_coverage
from scanflow.contracts.options import ModelRef
from scanflow.contracts.stages import (
    MIN_VIEW_CONFIDENCE,
    FramesResult,
    InferenceResult,
    KeptFrame,
    ModelInfo,
    ViewCoverage,
)
from scanflow.models.cache import classifier, classifier_for, cpu_threads, load_predictions
from scanflow.storage import Store, join, store_for
from tasks.frames import load_frame

if TYPE_CHECKING:
    from cv.model.heads import Classifier

__all__ = ["ModelInfo", "cpu_threads", "load_model", "run_inference"]


@task(name="load-model")
def load_model(pinned: ModelRef, device: str, cache_dir: str) -> ModelInfo:
    """Choose the run's model, fetch, verify and load it: a bad model fails here."""
    from scanflow.models.registry import choose_model  # torch: in this task's thread

    logger = get_run_logger()
    ref, why = choose_model(pinned)
    clf = classifier(ref, cache_dir, device)
    info = ModelInfo(
        name=clf.identity.name,
        version=clf.identity.version,
        sha256=clf.identity.sha256,
        device=str(clf.backbone.device),
        uri=ref.uri,
        source=why,
        labels=list(clf.labels),
        backbone_sha256=clf.backbone.identity.sha256,
    )
    logger.info(
        "model %s %s (%s…) on %s: %s", info.name, info.version, info.sha256[:12], info.device, why
    )
    return info


@task(name="run-inference")
def run_inference(
    frames: FramesResult,
    scan_uri: str,
    model: ModelInfo,
    batch_size: int,
    cache_dir: str,
    threads: int | None = None,
) -> InferenceResult:
    """Embed every kept frame and name its view; store embeddings.npy and views.json.

    Uses the predictions extract_frames made while decoding when they come from this
    model; otherwise runs the model here, streaming the kept frames from disk.
    """
    clf = classifier_for(model, cache_dir)
    pred, elapsed, n_threads, when = _predict(frames, model, clf, batch_size, threads)
    if len(pred.views) != len(frames.kept):
        raise RuntimeError(f"{len(pred.views)} predictions for {len(frames.kept)} kept frames")
    store = store_for(scan_uri)
    emb_uri = _store_embeddings(store, join(scan_uri, "embeddings.npy"), pred.embeddings)
    views_uri = store.put_bytes(
        join(scan_uri, "views.json"),
        json.dumps(_views_document(frames.kept, pred, model, clf.labels)).encode(),
        "application/json",
    )
    usable = [f.usable for f in frames.kept]
    cov = view_coverage(pred.views, pred.confidence, usable, clf.labels, MIN_VIEW_CONFIDENCE)
    fps = len(frames.kept) / elapsed if elapsed > 0 else 0.0
    get_run_logger().info(
        "%d frames at %.1f frames/s on %s (%s threads, %s); views %s; missing %s",
        len(frames.kept),
        fps,
        clf.backbone.device,
        n_threads or "-",
        when,
        {k: v for k, v in cov.frames.items() if v},
        list(cov.missing) or "none",
    )
    return InferenceResult(
        embeddings_uri=emb_uri,
        views_uri=views_uri,
        model=model,
        views=ViewCoverage(**asdict(cov)),
        frames=len(frames.kept),
        frames_per_second=fps,
        threads=n_threads,
    )


def _predict(
    frames: FramesResult,
    model: ModelInfo,
    clf: Classifier,
    batch_size: int,
    threads: int | None,
) -> tuple[FramePredictions, float, int | None, str]:
    """The kept frames' predictions, seconds spent, CPU threads, and when they were made:
    extract_frames' when they come from this model, else computed here."""
    ahead = frames.inference
    if ahead is not None and ahead.model_sha256 == model.sha256 and Path(ahead.path).is_file():
        return load_predictions(ahead.path), ahead.seconds, ahead.threads, "while decoding"
    from cv.model.heads import classify_frames  # torch: the model is loaded already

    n_threads = (threads or cpu_threads()) if clf.backbone.device.type == "cpu" else None
    start = time.perf_counter()
    pred = classify_frames(clf, KeptImages(frames.kept), batch_size, n_threads)
    return pred, time.perf_counter() - start, n_threads, "after decoding"


def _store_embeddings(store: Store, uri: str, embeddings: np.ndarray) -> str:
    """embeddings.npy, through a file: np.save into memory and taking its bytes would copy
    the embeddings (5 KB a kept frame) twice, a peak that grows with the scan's length."""
    with tempfile.TemporaryDirectory(prefix="scanflow-emb-") as tmp:
        np.save(Path(tmp) / "embeddings.npy", embeddings)
        return store.upload(Path(tmp) / "embeddings.npy", uri, "application/octet-stream")


def _views_document(
    kept: list[KeptFrame], pred: FramePredictions, model: ModelInfo, labels: Sequence[str]
) -> dict[str, Any]:
    """views.json: one row a kept frame, its view and that view's confidence."""
    return {
        "model": {"name": model.name, "version": model.version, "sha256": model.sha256},
        "labels": list(labels),
        "columns": ["kept_index", "frame_index", "time_s", "usable", "view", "confidence"],
        "rows": [
            [i, f.index, round(f.time_s, 4), f.usable, labels[int(v)], round(float(c), 4)]
            for i, (f, v, c) in enumerate(zip(kept, pred.views, pred.confidence, strict=True))
        ],
    }


class KeptImages(Sequence[RGB]):
    """The kept frames' pixels, read from disk only when a batch asks for them."""

    def __init__(self, kept: list[KeptFrame]) -> None:
        self.kept = kept

    def __len__(self) -> int:
        return len(self.kept)

    @overload
    def __getitem__(self, i: int) -> RGB: ...
    @overload
    def __getitem__(self, i: slice) -> list[RGB]: ...
    def __getitem__(self, i: int | slice) -> RGB | list[RGB]:
        if isinstance(i, slice):
            return [load_frame(f) for f in self.kept[i]]
        return load_frame(self.kept[i])


def load_embeddings(uri: str) -> np.ndarray:
    """Embeddings stored by run_inference: a read-only view over the fetched bytes (np.load
    from memory would copy them)."""
    data = store_for(uri).get_bytes(uri)
    head = io.BytesIO(data)
    if np.lib.format.read_magic(head) == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(head)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(head)
    if fortran or dtype.hasobject:
        return np.asarray(np.load(io.BytesIO(data), allow_pickle=False))
    arr: np.ndarray = np.frombuffer(data, dtype, offset=head.tell()).reshape(shape)
    return arr


def load_views(uri: str) -> tuple[list[str], list[dict[str, Any]]]:
    """Per-frame views stored by run_inference: labels, and one dict per kept frame."""
    doc = json.loads(store_for(uri).get_bytes(uri))
    cols = doc["columns"]
    return list(doc["labels"]), [dict(zip(cols, row, strict=True)) for row in doc["rows"]]
