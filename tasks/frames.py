"""extract_frames: decode the scan, measure every frame, keep the best of each window."""

from __future__ import annotations

import json
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from prefect import get_run_logger, task
from pydantic import BaseModel

from cv.frames import SampledFrame, VideoInfo, decoded_duration, probe_video, sample_frames
from cv.images import RGB, decode_jpeg, encode_jpeg
from cv.quality import Fault, assess_scan, frame_limits, raise_if_rejected, scan_faults
from tasks.options import ScanOptions
from tasks.storage import join, store_for

_IN_FLIGHT = 8  # kept frames being encoded/uploaded at once: bounds memory


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


class FramesResult(BaseModel):
    video: VideoSummary
    quality: QualitySummary
    kept: list[KeptFrame]
    frame_quality_uri: str
    warnings: list[str] = []


def load_frame(frame: KeptFrame) -> RGB:
    """A kept frame's pixels: from this run's local copy, else from the store."""
    local = Path(frame.local_path)
    data = local.read_bytes() if local.is_file() else store_for(frame.uri).get_bytes(frame.uri)
    return decode_jpeg(data)


@task(name="extract-frames")
def extract_frames(
    video_path: str, scan_uri: str, work_dir: str, options: ScanOptions
) -> FramesResult:
    """Probe and stream-decode the scan; store kept frames; judge the scan's quality."""
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
    sampled: list[tuple[SampledFrame, str, str]] = []
    pending: list[Future[str]] = []

    def publish(local: Path, uri: str, frame: SampledFrame) -> str:
        data = encode_jpeg(frame.rgb)
        local.write_bytes(data)
        return store.put_bytes(uri, data, "image/jpeg")

    # JPEG encoding and upload release the GIL: overlap them with decoding.
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="frames") as pool:

        def on_frame(frame: SampledFrame) -> None:
            name = f"{frame.quality.index:06d}.jpg"
            local, uri = frames_dir / name, join(scan_uri, "frames", name)
            sampled.append((frame, str(local), uri))
            pending.append(pool.submit(publish, local, uri, frame))
            while sum(not f.done() for f in pending) >= _IN_FLIGHT:
                next(f for f in pending if not f.done()).result()

        decoded = sample_frames(
            path,
            info,
            limits,
            sample_fps=options.sample_fps,
            max_side=options.max_side,
            on_frame=on_frame,
        )
        for f in pending:
            f.result()
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
            index=f.quality.index,
            time_s=f.quality.time_s,
            sharpness=f.quality.sharpness,
            usable=faults[f.quality.index] == Fault.NONE,
        )
        for f, local, uri in sampled
    ]
    rows = [
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
        for q, fault in zip(qualities, faults, strict=True)
    ]
    fq_uri = store.put_bytes(
        join(scan_uri, "frame_quality.json"),
        json.dumps(
            {
                "columns": [
                    "index",
                    "time_s",
                    "sharpness",
                    "brightness",
                    "dark_fraction",
                    "bright_fraction",
                    "motion",
                    "faults",
                ],
                "rows": rows,
            }
        ).encode(),
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
    )
