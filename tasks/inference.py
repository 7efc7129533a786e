"""load_model and run_inference: the run's model, checked before any frame is processed,
then embeddings and per-frame views of the kept frames.

The model is loaded once per process (``load_model`` loads it, ``run_inference`` finds it
in the same cache) and shared by every run in that process that uses the same package on
the same device.
"""

from __future__ import annotations

import functools
import io
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from prefect import get_run_logger, task
from pydantic import BaseModel, Field

from cv.heads import Classifier, classify_frames, view_coverage
from cv.model import LoadedModel, ModelIdentity, load_backbone, pick_device
from tasks.frames import FramesResult, load_frame
from tasks.options import ModelRef
from tasks.registry import BACKBONE_IDENTITY, choose_model, installed_backbone, load_package
from tasks.storage import join, store_for

# The backbone alone, under the names issue 2 gave it (tests/cv, bench/orchestration.py).
DEFAULT_MODEL = BACKBONE_IDENTITY
_default_weights = installed_backbone

MIN_VIEW_CONFIDENCE = 0.5


class ModelInfo(BaseModel):
    """The model that produced a scan's results, as the manifest records it."""

    name: str
    version: str
    sha256: str = Field(description="sha256 of the model package archive.")
    device: str
    uri: str | None = Field(None, description="Where the package was read from.")
    source: str | None = Field(None, description="Why this model: pinned, production, default.")
    labels: list[str] = Field(default_factory=list, description="The view classes it predicts.")
    backbone_sha256: str | None = Field(None, description="sha256 of the backbone weights.")


class ViewCoverage(BaseModel):
    """Views seen among the usable kept frames (per-frame predictions: artifacts.views)."""

    frames: dict[str, int] = Field(description="Usable frames confidently showing each view.")
    uncertain: int = Field(description="Usable frames with no view above min_confidence.")
    usable: int
    missing: list[str] = Field(description="Standard views with fewer than min_frames frames.")
    min_confidence: float
    min_frames: int


class InferenceResult(BaseModel):
    embeddings_uri: str
    views_uri: str
    model: ModelInfo
    views: ViewCoverage
    frames: int
    frames_per_second: float
    threads: int | None = None


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
    uri, sha256, name, version = ref
    return load_package(
        ModelRef(uri=uri, sha256=sha256, name=name, version=version),
        Path(cache_dir),
        pick_device(device),
    )


def _key(ref: ModelRef) -> tuple[str, str, str | None, str | None]:
    assert ref.uri is not None and ref.sha256 is not None
    return (ref.uri, ref.sha256, ref.name, ref.version)


@task(name="load-model")
def load_model(pinned: ModelRef, device: str, cache_dir: str) -> ModelInfo:
    """Choose the run's model, fetch, verify and load it: a bad model fails here."""
    logger = get_run_logger()
    ref, why = choose_model(pinned)
    clf = _classifier(_key(ref), cache_dir, device)
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
    """Embed every kept frame and name its view; store embeddings.npy and views.json."""
    logger = get_run_logger()
    ref = ModelRef(uri=model.uri, sha256=model.sha256, name=model.name, version=model.version)
    clf = _classifier(_key(ref), cache_dir, model.device)
    n_threads = (threads or cpu_threads()) if clf.backbone.device.type == "cpu" else None
    images = [load_frame(f) for f in frames.kept]
    start = time.perf_counter()
    pred = classify_frames(clf, images, batch_size=batch_size, threads=n_threads)
    elapsed = time.perf_counter() - start
    store = store_for(scan_uri)
    buf = io.BytesIO()
    np.save(buf, pred.embeddings)
    emb_uri = store.put_bytes(
        join(scan_uri, "embeddings.npy"), buf.getvalue(), "application/octet-stream"
    )
    usable = [f.usable for f in frames.kept]
    views_doc = {
        "model": {"name": model.name, "version": model.version, "sha256": model.sha256},
        "labels": list(clf.labels),
        "columns": ["kept_index", "frame_index", "time_s", "usable", "view", "confidence"],
        "rows": [
            [i, f.index, round(f.time_s, 4), f.usable, clf.labels[int(v)], round(float(c), 4)]
            for i, (f, v, c) in enumerate(
                zip(frames.kept, pred.views, pred.confidence, strict=True)
            )
        ],
    }
    views_uri = store.put_bytes(
        join(scan_uri, "views.json"), json.dumps(views_doc).encode(), "application/json"
    )
    cov = view_coverage(pred.views, pred.confidence, usable, clf.labels, MIN_VIEW_CONFIDENCE)
    fps = len(images) / elapsed if elapsed > 0 else 0.0
    logger.info(
        "%d frames at %.1f frames/s on %s (%s threads); views %s; missing %s",
        len(images),
        fps,
        clf.backbone.device,
        n_threads or "-",
        {k: v for k, v in cov.frames.items() if v},
        list(cov.missing) or "none",
    )
    return InferenceResult(
        embeddings_uri=emb_uri,
        views_uri=views_uri,
        model=model,
        views=ViewCoverage(
            frames=cov.frames,
            uncertain=cov.uncertain,
            usable=cov.usable,
            missing=list(cov.missing),
            min_confidence=cov.min_confidence,
            min_frames=cov.min_frames,
        ),
        frames=len(images),
        frames_per_second=fps,
        threads=n_threads,
    )


@functools.cache
def _load(weights: Path, identity: ModelIdentity, device: str) -> LoadedModel:
    """The backbone alone, loaded once per process (for benchmarks and tools)."""
    return load_backbone(weights, identity, pick_device(device))


def load_embeddings(uri: str) -> np.ndarray:
    """Embeddings stored by run_inference."""
    arr: np.ndarray = np.load(io.BytesIO(store_for(uri).get_bytes(uri)), allow_pickle=False)
    return arr


def load_views(uri: str) -> tuple[list[str], list[dict[str, Any]]]:
    """Per-frame views stored by run_inference: labels, and one dict per kept frame."""
    doc = json.loads(store_for(uri).get_bytes(uri))
    cols = doc["columns"]
    return list(doc["labels"]), [dict(zip(cols, row, strict=True)) for row in doc["rows"]]
