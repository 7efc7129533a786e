"""render_summary: keyframes, the summary video and the contact sheet for the doctor."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task

from cv.images import encode_jpeg
from cv.summary.render import (
    SUMMARY_FPS,
    SummaryFrame,
    choose_keyframes,
    choose_segments,
    contact_sheet,
    render_summary_video,
)
from scanflow.contracts.options import ScanOptions
from scanflow.contracts.stages import (
    MIN_VIEW_CONFIDENCE,
    FramesResult,
    InferenceResult,
    Keyframe,
    SummaryResult,
)
from scanflow.storage import join, store_for
from tasks.frames import load_frame
from tasks.inference import load_embeddings, load_views

_SECONDS_PER_FRAME = 0.5


@task(name="render-summary")
def render_summary(
    frames: FramesResult,
    inference: InferenceResult,
    scan_uri: str,
    work_dir: str,
    options: ScanOptions,
) -> SummaryResult:
    """Choose keyframes and write summary.mp4, contact_sheet.jpg and keyframes/*.jpg."""
    store = store_for(scan_uri)
    kept = frames.kept
    _, rows = load_views(inference.views_uri)
    views = [r["view"] if r["confidence"] >= MIN_VIEW_CONFIDENCE else None for r in rows]
    info = [
        SummaryFrame(f.time_s, f.sharpness, f.usable, v) for f, v in zip(kept, views, strict=True)
    ]
    # the embeddings (5 KB a kept frame) are let go before the video's encoder allocates
    key_idx = choose_keyframes(
        load_embeddings(inference.embeddings_uri),
        [f.sharpness for f in kept],
        [f.usable for f in kept],
        options.keyframes,
    )
    seg_idx = choose_segments(info, int(options.summary_max_s / _SECONDS_PER_FRAME))
    images = {i: load_frame(kept[i]) for i in sorted(set(key_idx) | set(seg_idx))}
    video = Path(work_dir) / "summary.mp4"
    written = render_summary_video(
        video,
        [images[i] for i in seg_idx],
        [info[i] for i in seg_idx],
        seconds_per_frame=_SECONDS_PER_FRAME,
    )
    video_uri = store.upload(video, join(scan_uri, "summary.mp4"), "video/mp4")
    sheet = contact_sheet([images[i] for i in key_idx], [info[i] for i in key_idx])
    sheet_uri = store.put_bytes(
        join(scan_uri, "contact_sheet.jpg"), encode_jpeg(sheet, 85), "image/jpeg"
    )
    keyframes = []
    for i in key_idx:
        uri = store.put_bytes(
            join(scan_uri, "keyframes", f"{kept[i].index:06d}.jpg"),
            encode_jpeg(images[i]),
            "image/jpeg",
        )
        keyframes.append(
            Keyframe(uri=uri, kept_index=i, time_s=kept[i].time_s, sharpness=kept[i].sharpness)
        )
    get_run_logger().info("summary: %d segments, %d keyframes", len(seg_idx), len(key_idx))
    return SummaryResult(
        video_uri=video_uri,
        video_frames=written,
        video_seconds=written / SUMMARY_FPS,
        contact_sheet_uri=sheet_uri,
        keyframes=keyframes,
    )
