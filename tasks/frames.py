"""extract_frames: decode the scan, measure every frame, keep the best of each window.

Decoding is the pipeline's floor, so the work on kept frames rides on it: while the video
decodes, kept frames are JPEG-encoded and stored by two threads and, when the flow passes
the run's model, classified by a third (cv.model.streaming.StreamingClassifier). Each is fed
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
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture

from cv.images import RGB, decode_jpeg
from cv.quality.analysis import Fault, FrameQuality, judge_scan, raise_if_rejected
from cv.video.frames import (
    SampledFrame,
    decoded_duration,
    decoder_threads,
    probe_video,
    sample_frames,
    skips_frames,
)
from scanflow.contracts.options import ScanOptions
from scanflow.contracts.stages import (
    FramesResult,
    InferenceWhileDecoding,
    KeptFrame,
    ModelInfo,
    VideoSummary,
)
from scanflow.models.cache import cpu_threads, save_predictions
from scanflow.storage import join, store_for
from tasks._frames import FramePublisher, ModelHandOff, hand_off_model, model_info
from tasks._progress import DecodeProgress


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


def frame_quality_json(qualities: Sequence[FrameQuality], faults: list[Fault]) -> bytes:
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
    progress_id: str | None = None,
) -> FramesResult:
    """Probe and stream-decode the scan; store kept frames; judge the scan's quality.

    With ``model`` (loaded by load_model into this process, or its future while it loads:
    pass it as ``quote(future)`` so that Prefect does not wait for it), also classify every
    kept frame while decoding goes on; run_inference picks the predictions up.
    """
    logger = get_run_logger()
    path, work = Path(video_path), Path(work_dir)
    limits = options.limits.video_limits()
    info = probe_video(path, limits)
    logger.info(
        "video: %s %dx%d, %.1f s at %.1f fps",
        info.codec,
        info.width,
        info.height,
        info.duration_s or -1,
        info.fps or -1,
    )
    frames_dir = work / "frames"
    frames_dir.mkdir(parents=True, exist_ok=True)
    store = store_for(scan_uri)
    handoff = None
    publisher = FramePublisher(store, scan_uri, frames_dir)
    if model is not None:
        handoff = hand_off_model(model, info, options, work, model_cache_dir)
        publisher = FramePublisher(store, scan_uri, frames_dir, handoff.classifier, handoff.backlog)
    progress = DecodeProgress(progress_id, info.duration_s)

    def on_frame(frame: SampledFrame) -> None:
        publisher.on_frame(frame)
        progress(frame.quality.time_s)

    reference_only = skips_frames(info, options.decode == "reference")
    with publisher:
        decoded = sample_frames(
            path,
            info,
            limits,
            sample_fps=options.sample_fps,
            max_side=options.max_side,
            on_frame=on_frame,
            decoder_threads=decoder_threads(cpu_threads()),
            reference_only=reference_only,
        )
        sampled = publisher.finish()
        ahead = _predictions(handoff, model, work) if handoff and model is not None else None
    qualities = decoded.qualities
    for warning in decoded.warnings:
        logger.warning("%s: %s", path.name, warning)
    duration = decoded_duration(qualities, info.fps)
    verdict = judge_scan(qualities, duration, options.thresholds())
    kept = [
        KeptFrame(
            uri=s.uri,
            local_path=s.local_path,
            index=s.quality.index,
            time_s=s.quality.time_s,
            sharpness=s.quality.sharpness,
            usable=verdict.faults[s.quality.index] == Fault.NONE,
        )
        for s in sampled
    ]
    fq_uri = store.put_bytes(
        join(scan_uri, "frame_quality.json"),
        frame_quality_json(qualities, verdict.faults),
        "application/json",
    )
    quality = verdict.quality
    logger.info(
        "decoded %d frames%s, kept %d, %d usable (%.0f%%)",
        quality.frames_decoded,
        " (reference frames only)" if reference_only else "",
        len(kept),
        quality.usable_frames,
        100 * quality.usable_fraction,
    )
    raise_if_rejected(quality)
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
        quality=quality,
        kept=kept,
        frame_quality_uri=fq_uri,
        warnings=list(decoded.warnings),
        inference=ahead,
    )


def _predictions(
    handoff: ModelHandOff, model: ModelInfo | PrefectFuture[ModelInfo], work: Path
) -> InferenceWhileDecoding:
    """Save what the classifier predicted while decoding, for run_inference."""
    classify = handoff.classifier
    path = work / "predictions.npz"
    save_predictions(classify.finish(), path)
    on_cpu = classify.model is not None and classify.model.backbone.device.type == "cpu"
    return InferenceWhileDecoding(
        path=str(path),
        model_sha256=model_info(model).sha256,
        seconds=round(classify.busy_s, 4),
        threads=handoff.threads if on_cpu else None,
    )
