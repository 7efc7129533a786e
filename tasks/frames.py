"""extract_frames: decode the scan, measure every frame, keep the best of each window.

Decoding is the pipeline's floor, so the work on kept frames rides on it: while the video
decodes, kept frames are JPEG-encoded and stored by two threads and, when the flow passes
the run's model, classified by a third (cv.streaming.StreamingClassifier). Each is fed
through a bounded queue, so memory does not grow with the length of the scan.

The model may still be loading when decoding starts (the flow submits load_model beside
this task and hands over its future): the classifier's thread waits for it, and the kept
frames that decode meanwhile wait in memory (bounded) to be classified and stored. Nothing
is stored before the model has loaded, so a model that fails to load fails this task with
its model_error having published nothing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture
from pydantic import BaseModel

from cv.frames import (
    SampledFrame,
    VideoInfo,
    decoded_duration,
    decoder_threads,
    probe_video,
    sample_frames,
)
from cv.images import RGB, decode_jpeg, encode_jpeg
from cv.quality import (
    Fault,
    FrameQuality,
    assess_scan,
    frame_limits,
    raise_if_rejected,
    scan_faults,
)
from cv.streaming import StreamingClassifier
from tasks.memory import trim_heap
from tasks.models import ModelInfo, classifier_for, cpu_threads, save_predictions
from tasks.options import ScanOptions
from tasks.storage import join, store_for

if TYPE_CHECKING:
    from cv.heads import Classifier

_IN_FLIGHT = 8  # kept frames being encoded/uploaded at once: bounds memory
_STREAM_BATCH = 4  # kept frames a batch of the model while decoding
_TRIM_EVERY = 16  # kept frames between returns of free heap pages (tasks.memory)
# Kept frames that may wait for the model while it loads (~1.5 s: torch's import and the
# weights), by their pixels: 48 MiB is 72 frames at 640x360, ~9 s of a 1080p video's
# decoding at 2 frames kept a second.
_BACKLOG_BYTES = 48 * 2**20


class KeptFrame(BaseModel):
    uri: str
    local_path: str
    index: int
    time_s: float
    sharpness: float
    usable: bool


class VideoSummary(BaseModel):
    codec: str
    width: int
    height: int
    fps: float | None
    declared_duration_s: float | None
    duration_s: float
    size_bytes: int


class QualitySummary(BaseModel):
    usable: bool
    frames_decoded: int
    usable_frames: int
    usable_fraction: float
    duration_s: float
    median_sharpness: float
    sharpness_threshold: float
    mean_brightness: float
    blurry_fraction: float
    dark_fraction: float
    glare_fraction: float
    fast_motion_fraction: float
    time_coverage: float
    longest_gap_s: float
    reason: str | None = None
    guidance: str | None = None


class InferenceWhileDecoding(BaseModel):
    """The model's predictions for the kept frames, made while the video decoded."""

    path: str  # a local .npz in the run's work folder (tasks.models.save_predictions)
    model_sha256: str
    seconds: float  # time spent in the model
    threads: int | None


class FramesResult(BaseModel):
    video: VideoSummary
    quality: QualitySummary
    kept: list[KeptFrame]
    frame_quality_uri: str
    warnings: list[str] = []
    inference: InferenceWhileDecoding | None = None


def _model_info(model: ModelInfo | PrefectFuture[ModelInfo]) -> ModelInfo:
    """The run's model, waiting for load_model when it is still loading."""
    return model if isinstance(model, ModelInfo) else model.result()


def _settle(pending: list[Future[str]]) -> None:
    """Drop the stores that are done, raising the first that failed: the list stays as short
    as the frames in flight, not as long as the scan."""
    still = []
    for f in pending:
        if f.done():
            f.result()
        else:
            still.append(f)
    pending[:] = still


def load_frame(frame: KeptFrame) -> RGB:
    """A kept frame's pixels: from this run's local copy, else from the store."""
    local = Path(frame.local_path)
    data = local.read_bytes() if local.is_file() else store_for(frame.uri).get_bytes(frame.uri)
    return decode_jpeg(data)


FRAME_QUALITY_COLUMNS = [
    "index",
    "time_s",
    "sharpness",
    "brightness",
    "dark_fraction",
    "bright_fraction",
    "motion",
    "faults",
]


def _frame_quality_json(qualities: Sequence[FrameQuality], faults: list[Fault]) -> bytes:
    """frame_quality.json, one row a decoded frame, written row by row: a 10-minute scan's
    18,000 rows as nested lists would cost several times the text."""
    rows = (
        json.dumps(
            [
                q.index,
                round(q.time_s, 4),
                round(q.sharpness, 2),
                round(q.brightness, 1),
                round(q.dark_fraction, 4),
                round(q.bright_fraction, 4),
                round(q.motion, 2),
                "|".join(k.name or "" for k in Fault if k in fault) or "ok",
            ]
        )
        for q, fault in zip(qualities, faults, strict=True)
    )
    head = json.dumps({"columns": FRAME_QUALITY_COLUMNS})[:-1]
    return f'{head}, "rows": [{", ".join(rows)}]}}'.encode()


# No cache key: its inputs may hold the model's future (Prefect hashes inputs for one).
@task(name="extract-frames", cache_policy=NO_CACHE)
def extract_frames(
    video_path: str,
    scan_uri: str,
    work_dir: str,
    options: ScanOptions,
    model: ModelInfo | PrefectFuture[ModelInfo] | None = None,
    model_cache_dir: str | None = None,
) -> FramesResult:
    """Probe and stream-decode the scan; store kept frames; judge the scan's quality.

    With ``model`` (loaded by load_model into this process, or its future while it loads:
    pass it as ``quote(future)`` so that Prefect does not wait for it), also classify every
    kept frame while decoding goes on; run_inference picks the predictions up.
    """
    logger = get_run_logger()
    path = Path(video_path)
    limits = options.limits.video_limits()
    info: VideoInfo = probe_video(path, limits)
    logger.info(
        "video: %s %dx%d, %.1f s at %.1f fps",
        info.codec,
        info.width,
        info.height,
        info.duration_s or -1,
        info.fps or -1,
    )
    frames_dir = Path(work_dir) / "frames"
    frames_dir.mkdir(parents=True, exist_ok=True)
    store = store_for(scan_uri)
    sampled: list[tuple[FrameQuality, str, str]] = []  # not the pixels: memory stays flat
    pending: list[Future[str]] = []
    threads: int | None = None
    classify: StreamingClassifier | None = None
    in_flight = _IN_FLIGHT
    if model is not None:
        loading = model

        def load() -> Classifier:
            return classifier_for(_model_info(loading), model_cache_dir or ".")

        # the decoder keeps most cores busy; the model takes what is left (on a GPU,
        # torch's CPU threads are all but idle)
        threads = max(1, cpu_threads() // 2)
        side = max(info.width, info.height)
        scale = min(1.0, options.max_side / side) if side else 1.0
        frame_bytes = max(1, int(info.width * scale) * int(info.height * scale) * 3)
        # while the model loads, kept frames wait to be stored as well as classified
        in_flight = max(_IN_FLIGHT, min(256, _BACKLOG_BYTES // frame_bytes))
        # small batches: the model's activations are the largest transient allocation of
        # the stage, and throughput on CPU is the same from 8 frames a batch
        classify = StreamingClassifier(
            load,
            min(options.batch_size, _STREAM_BATCH),
            threads,
            backlog=in_flight,
            after_batch=trim_heap,
            spill=Path(work_dir) / "embeddings.f32",
        )

    def publish(local: Path, uri: str, frame: SampledFrame) -> str:
        if classify is not None:
            classify.wait_loaded()  # a bad model fails the run before anything is stored
        data = encode_jpeg(frame.rgb)
        local.write_bytes(data)
        return store.put_bytes(uri, data, "image/jpeg")

    # JPEG encoding, upload and the model release the GIL: overlap them with decoding.
    with (
        ThreadPoolExecutor(max_workers=2, thread_name_prefix="frames") as pool,
        classify or nullcontext(),
    ):

        def on_frame(frame: SampledFrame) -> None:
            name = f"{frame.quality.index:06d}.jpg"
            local, uri = frames_dir / name, join(scan_uri, "frames", name)
            sampled.append((frame.quality, str(local), uri))
            pending.append(pool.submit(publish, local, uri, frame))
            if classify is not None:
                classify.push(frame.rgb)
            if len(sampled) % _TRIM_EVERY == 0:
                trim_heap()
            _settle(pending)
            # the backlog only while the model loads: afterwards a long scan would keep it
            # full, and peak above a short one
            model_loading = classify is not None and classify.model is None
            while len(pending) >= (in_flight if model_loading else _IN_FLIGHT):
                pending[0].result()
                _settle(pending)

        decoded = sample_frames(
            path,
            info,
            limits,
            sample_fps=options.sample_fps,
            max_side=options.max_side,
            on_frame=on_frame,
            decoder_threads=decoder_threads(cpu_threads()),
        )
        for f in pending:
            f.result()
        ahead = None
        if classify is not None and model is not None:
            predictions = Path(work_dir) / "predictions.npz"
            save_predictions(classify.finish(), predictions)
            chosen = _model_info(model)
            on_cpu = classify.model is not None and classify.model.backbone.device.type == "cpu"
            ahead = InferenceWhileDecoding(
                path=str(predictions),
                model_sha256=chosen.sha256,
                seconds=round(classify.busy_s, 4),
                threads=threads if on_cpu else None,
            )
    qualities = decoded.qualities
    for warning in decoded.warnings:
        logger.warning("%s: %s", path.name, warning)
    duration = decoded_duration(qualities, info.fps)
    t = options.thresholds()
    verdict = assess_scan(qualities, duration, t)
    faults = scan_faults(qualities, frame_limits(qualities, t), t)
    kept = [
        KeptFrame(
            uri=uri,
            local_path=local,
            index=q.index,
            time_s=q.time_s,
            sharpness=q.sharpness,
            usable=faults[q.index] == Fault.NONE,
        )
        for q, local, uri in sampled
    ]
    fq_uri = store.put_bytes(
        join(scan_uri, "frame_quality.json"),
        _frame_quality_json(qualities, faults),
        "application/json",
    )
    logger.info(
        "decoded %d frames, kept %d, %d usable (%.0f%%)",
        verdict.frames_decoded,
        len(kept),
        verdict.usable_frames,
        100 * verdict.usable_fraction,
    )
    raise_if_rejected(verdict)
    return FramesResult(
        video=VideoSummary(
            codec=info.codec,
            width=info.width,
            height=info.height,
            fps=info.fps,
            declared_duration_s=info.duration_s,
            duration_s=duration,
            size_bytes=info.size_bytes,
        ),
        quality=QualitySummary(
            **{**verdict.__dict__, "reason": verdict.reason.value if verdict.reason else None}
        ),
        kept=kept,
        frame_quality_uri=fq_uri,
        warnings=list(decoded.warnings),
        inference=ahead,
    )
