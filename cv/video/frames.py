"""Probing and stream-decoding a scan video with PyAV, sampling its best frames.

Limits are checked on the container's header before a single frame is decoded, and again
while decoding (a header can lie), so a hostile file cannot make us allocate without bound.
Quality is measured on every decoded frame from its luma plane; only the frames that are
kept are converted to RGB.
"""

from __future__ import annotations

import heapq
import math
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import av
import av.error
import cv2
import numpy as np
import numpy.typing as npt

from cv.errors import Reason, RejectedScan
from cv.quality.analysis import FrameQualities, FrameQuality, LumaAnalyzer
from cv.video.bitstream import ParameterSetGuard

RGBFrame = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class VideoLimits:
    """What a scan may be, checked before decoding."""

    max_bytes: int = 1_000_000_000
    max_duration_s: float = 600.0
    max_pixels: int = 3840 * 2160
    min_pixels: int = 160 * 120
    max_fps: float = 240.0


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about a scan's video stream."""

    size_bytes: int
    codec: str
    width: int  # as coded; phones' rotation is applied per frame when converting to RGB
    height: int
    duration_s: float | None
    fps: float | None


@dataclass(frozen=True)
class DecodeResult:
    """What decoding saw: every frame's quality, and damage it got through."""

    qualities: FrameQualities
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class SampledFrame:
    """A kept frame: its quality and its RGB pixels (upright, at most ``max_side``)."""

    quality: FrameQuality
    rgb: RGBFrame


def _decoder_options(limits: VideoLimits) -> dict[str, str]:
    # FFmpeg's decoders refuse a frame above ``max_pixels`` instead of allocating it: a few
    # hundred bytes of PNG or H.264 can declare 16000x16000 (gigabytes). They count the
    # width padded for alignment, hence the slack; the exact limit is checked by us.
    return {"max_pixels": str(2 * limits.max_pixels)}


def _open(path: Path, limits: VideoLimits) -> av.container.InputContainer:
    # Opening decodes a first frame to learn the stream's parameters: bounded as above.
    try:
        return av.open(
            str(path), mode="r", metadata_errors="ignore", options=_decoder_options(limits)
        )
    except av.error.FFmpegError as exc:
        raise RejectedScan(
            Reason.UNREADABLE_VIDEO,
            f"{path.name} is not a readable video ({type(exc).__name__}: {exc.strerror or exc}).",
        ) from exc


def probe_video(path: Path, limits: VideoLimits) -> VideoInfo:
    """Read a scan's header and check it against ``limits``.

    Args:
        path: local video file.
        limits: size, duration, resolution and frame-rate bounds.
    Returns:
        VideoInfo of the first video stream.
    Raises:
        RejectedScan: unreadable_video, no_video_stream, too_large, too_long or
            resolution_out_of_range, with a message naming the figure and the limit.
    """
    size = os.path.getsize(path)
    if size == 0:
        raise RejectedScan(
            Reason.UNREADABLE_VIDEO, f"{path.name} is empty (0 bytes): the upload contains no data."
        )
    if size > limits.max_bytes:
        raise RejectedScan(
            Reason.TOO_LARGE,
            f"{path.name} is {size / 1e6:.0f} MB; the limit is {limits.max_bytes / 1e6:.0f} MB.",
        )
    with _open(path, limits) as container:
        if not container.streams.video:
            kinds = ", ".join(sorted({s.type for s in container.streams})) or "none"
            if not _is_video_container(container.format.name):
                # FFmpeg guesses raw formats from content: about one random file in six
                # "is" AMR audio. A file that is not even a container is unreadable.
                raise RejectedScan(
                    Reason.UNREADABLE_VIDEO,
                    f"{path.name} is not a readable video (at best it reads as "
                    f"{container.format.name}: {kinds}).",
                )
            raise RejectedScan(
                Reason.NO_VIDEO_STREAM, f"{path.name} has no video stream (streams found: {kinds})."
            )
        stream = container.streams.video[0]
        ctx = stream.codec_context
        if _is_still_image(container.format.name):
            raise RejectedScan(
                Reason.UNREADABLE_VIDEO,
                f"{path.name} is a still image ({ctx.name}), not a video.",
            )
        width, height = int(ctx.width or 0), int(ctx.height or 0)
        if width <= 0 or height <= 0:
            raise RejectedScan(
                Reason.UNREADABLE_VIDEO,
                f"{path.name}: the video stream has no "
                "frame size; the file is damaged or not a video.",
            )
        duration = _duration_s(container, stream)
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else None
        codec = ctx.name
    pixels = width * height
    if pixels > limits.max_pixels or pixels < limits.min_pixels:
        raise RejectedScan(
            Reason.RESOLUTION_OUT_OF_RANGE,
            f"{path.name} is {width}x{height}; "
            f"scans must have between {limits.min_pixels} and {limits.max_pixels} "
            "pixels per frame.",
        )
    if duration is not None and duration > limits.max_duration_s:
        raise RejectedScan(
            Reason.TOO_LONG,
            f"{path.name} lasts {duration:.0f} s; the limit is {limits.max_duration_s:.0f} s.",
        )
    if fps is not None and fps > limits.max_fps * 1.01:
        raise RejectedScan(
            Reason.RESOLUTION_OUT_OF_RANGE,
            f"{path.name} runs at {fps:.0f} fps; the limit is {limits.max_fps:.0f} fps.",
        )
    return VideoInfo(size, codec, width, height, duration, fps)


# Demuxers of container formats that can carry video: a file in one of these without a
# video stream is a real file with no video in it (no_video_stream), anything else that
# FFmpeg opens without a video stream is a guess from the bytes (unreadable_video).
VIDEO_CONTAINERS = frozenset(
    {"mov", "mp4", "matroska", "webm", "avi", "mpegts", "flv", "ogg", "asf"}
)


def _is_video_container(demuxer: str) -> bool:
    return not VIDEO_CONTAINERS.isdisjoint(demuxer.split(","))


def _is_still_image(demuxer: str) -> bool:
    # FFmpeg reads a photo as a one-frame video; its image demuxers are "<format>_pipe"
    # (jpeg_pipe, png_pipe, webp_pipe, ...) or image2.
    return demuxer.endswith("_pipe") or demuxer == "image2"


def _duration_s(container: av.container.InputContainer, stream: av.VideoStream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def luma_plane(frame: av.VideoFrame) -> npt.NDArray[np.uint8]:
    """The frame's Y plane as a uint8 array without converting the whole frame."""
    fmt = frame.format.name
    plane = frame.planes[0]
    if fmt in _PLANAR_8BIT:
        buf = np.frombuffer(memoryview(plane), np.uint8).reshape(frame.height, plane.line_size)
        return buf[:, : frame.width]
    if fmt in _PLANAR_16BIT_LE:
        buf16 = np.frombuffer(memoryview(plane), np.dtype("<u2")).reshape(
            frame.height, plane.line_size // 2
        )
        shift = 2 if "10" in fmt else 4 if "12" in fmt else 8
        return (buf16[:, : frame.width] >> shift).astype(np.uint8)
    return np.asarray(frame.to_ndarray(format="gray"), np.uint8)


_PLANAR_8BIT = frozenset(
    {"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "nv12", "nv21", "gray"}
)
_PLANAR_16BIT_LE = frozenset({"yuv420p10le", "yuv422p10le", "yuv444p10le", "yuv420p12le", "p010le"})


def _upright(rgb: RGBFrame, rotation: int) -> RGBFrame:
    # frame.rotation is counter-clockwise degrees to apply for display.
    turns = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(rgb, k=turns)) if turns else rgb


def _to_rgb(frame: av.VideoFrame, max_side: int) -> RGBFrame:
    scale = min(1.0, max_side / max(frame.width, frame.height))
    w = max(2, int(round(frame.width * scale / 2)) * 2)
    h = max(2, int(round(frame.height * scale / 2)) * 2)
    rgb = np.asarray(frame.to_ndarray(format="rgb24", width=w, height=h), np.uint8)
    return _upright(rgb, int(getattr(frame, "rotation", 0) or 0))


def _threaded(stream: av.VideoStream, threads: int) -> None:
    # Frame threading where the codec has it (H.264, HEVC), slice threading otherwise.
    # PyAV's default is slice threading alone, which parallelises nothing on a video with
    # one slice per frame (what phones and ffmpeg's x264 write): the decoder then runs on
    # the calling thread, taking turns with the quality analysis instead of beside it.
    stream.thread_type = "AUTO"
    stream.thread_count = threads


def decoder_threads(cores: int) -> int:
    """Frame threads for decoding on ``cores`` CPUs: three a core, at most 16.

    Frame threading decodes one frame per thread, and a frame waits for the rows it refers
    to in the frames before it, so a core often has no frame it can work on. FFmpeg's own
    choice (cores + 1) left ~15% of 2 cores idle; on a 60 s 1080p scan here, decoding
    alone took 11.5-12.0 s with 3 threads, 10.3 s with 6, 9.8 s with 12, and the whole
    extract stage 15.1-15.6 s with 3, 12.7-13.6 s with 6, no better with 8. Each thread
    holds a frame in decoding (~3 MB at 1080p).
    """
    return max(2, min(16, 3 * cores))


# Skipping non-reference frames leaves about 3/5 of them on a stream with B-frames (a third
# to a half elsewhere): at 24 fps and above, at least the 15 fps at which the quality
# detectors are measured (bench/quality.py). Below it every frame is decoded.
MIN_FPS_TO_SKIP = 24.0


def skips_frames(info: VideoInfo, reference_only: bool) -> bool:
    """Whether ``sample_frames`` should skip non-reference frames of this video: asked for,
    and its frame rate (declared) at least MIN_FPS_TO_SKIP."""
    return reference_only and info.fps is not None and info.fps >= MIN_FPS_TO_SKIP


@contextmanager
def opencv_threads(n: int) -> Iterator[None]:
    """Run the block with OpenCV's thread pool at ``n`` threads (process-wide), then restore.

    While the decoder's threads keep every core busy, OpenCV's pool only adds hand-offs:
    the quality analysis of a 1080p frame took 1.6-1.8 ms of CPU with 2 threads and 0.94 ms
    with 1, for the same wall time on an idle machine.
    """
    before = cv2.getNumThreads()
    cv2.setNumThreads(n)
    try:
        yield
    finally:
        cv2.setNumThreads(before)


def sample_frames(
    path: Path,
    info: VideoInfo,
    limits: VideoLimits,
    *,
    sample_fps: float,
    max_side: int,
    on_frame: Callable[[SampledFrame], None],
    decoder_threads: int = 0,
    reference_only: bool = False,
) -> DecodeResult:
    """Stream-decode a scan, keeping the sharpest frame of every 1/sample_fps window.

    Windows follow presentation timestamps, so variable frame rate is handled. Memory is
    bounded: one decoded frame per open window and one small analysis image.

    Args:
        path: local video file, already probed.
        info: its probe result.
        limits: checked again while decoding (headers can lie).
        sample_fps: kept frames per second of video.
        max_side: longest side of a kept RGB frame.
        on_frame: called with every kept frame, in order.
        decoder_threads: FFmpeg's decoding threads; 0 lets FFmpeg choose (the cores it
            can see, plus one: in a container with a CPU quota, pass the quota's).
        reference_only: skip the frames no other frame refers to (FFmpeg's
            ``skip_frame=NONREF``: the non-reference B-frames of H.264 and HEVC), which are
            then neither decoded nor measured. ``FrameQuality.index`` stays the position among
            the measured frames; their times stay true. See ``skips_frames``.
    Returns:
        FrameQuality of every decoded frame, and warnings about damage that decoding
        survived (timestamps going backwards, frames the decoder flagged corrupt).
    Raises:
        RejectedScan: unreadable_video when decoding fails or stops well short of the
            declared duration (a truncated upload); too_long or
            resolution_out_of_range when the stream exceeds the limits the header
            claimed to meet (decoders refuse frames far over the pixel limit unallocated).
    """
    sampler = _Sampler(path, info, limits, sample_fps, max_side, on_frame)
    ctx: av.VideoCodecContext | None = None
    try:
        with _open(path, limits) as container, opencv_threads(1):
            stream = container.streams.video[0]
            ctx = stream.codec_context
            # the same bound while decoding: a later parameter set can change the frame size
            ctx.options = {**ctx.options, **_decoder_options(limits)}
            _threaded(stream, decoder_threads)
            if reference_only:
                ctx.skip_frame = "NONREF"
            guard = ParameterSetGuard.for_stream(ctx.name, ctx.extradata)
            for packet in container.demux(stream):
                if guard is not None:
                    _check_parameter_sets(path, guard, bytes(packet), limits, sampler.decoded)
                for frame in packet.decode():
                    sampler.push(frame)
            # With frame threads, a frame the decoder refuses (over its pixel bound) is
            # dropped rather than raised: the stream's new size is still on the context.
            _check_switch(path, ctx, limits, sampler.decoded)
            sampler.finish()
    except av.error.FFmpegError as exc:
        _check_switch(path, ctx, limits, sampler.decoded, exc)
        raise RejectedScan(
            Reason.UNREADABLE_VIDEO,
            f"{path.name} could not be decoded after {sampler.decoded} frames "
            f"({exc.strerror or exc}); the file is damaged or the upload was cut short.",
        ) from exc
    return sampler.result()


def _check_parameter_sets(
    path: Path, guard: ParameterSetGuard, packet: bytes, limits: VideoLimits, decoded: int
) -> None:
    """resolution_out_of_range when a parameter set in the packet declares a size over the
    limit: refused before the decoder's threads allocate tables for it."""
    for width, height in guard.sizes(packet):
        if width * height > limits.max_pixels:
            raise _switched(path, width, height, decoded, limits)


def _check_switch(
    path: Path,
    ctx: av.VideoCodecContext | None,
    limits: VideoLimits,
    decoded: int,
    cause: BaseException | None = None,
) -> None:
    """resolution_out_of_range when the stream switched to a size over the limit."""
    if ctx is not None and ctx.width * ctx.height > limits.max_pixels:
        raise _switched(path, ctx.width, ctx.height, decoded, limits) from cause


def _switched(
    path: Path, width: int, height: int, decoded: int, limits: VideoLimits
) -> RejectedScan:
    return RejectedScan(
        Reason.RESOLUTION_OUT_OF_RANGE,
        f"{path.name} switches to {width}x{height} after {decoded} frames; "
        f"the limit is {limits.max_pixels} pixels.",
    )


# Frames are reordered by timestamp through a buffer this deep: some files (muxed without
# B-frame reordering information) come out of the decoder a few frames out of order.
_REORDER_DEPTH = 8


class _Sampler:
    """Checks, reorders, measures and samples decoded frames, one at a time."""

    def __init__(
        self,
        path: Path,
        info: VideoInfo,
        limits: VideoLimits,
        sample_fps: float,
        max_side: int,
        on_frame: Callable[[SampledFrame], None],
    ) -> None:
        self.path, self.info, self.limits = path, info, limits
        self.sample_fps, self.max_side, self.on_frame = sample_fps, max_side, on_frame
        self.max_frames = int(limits.max_duration_s * limits.max_fps) + 1
        self.analyzer = LumaAnalyzer()
        self.qualities = FrameQualities()
        self.pending: list[tuple[float, int, av.VideoFrame]] = []  # heap by time
        self.best: tuple[float, av.VideoFrame, FrameQuality] | None = None
        self.window = -1
        self.decoded = 0
        self.first_t: float | None = None
        self.last_t = 0.0
        self.backwards = self.corrupt = 0

    def push(self, frame: av.VideoFrame) -> None:
        name = self.path.name
        if self.decoded >= self.max_frames:
            raise RejectedScan(
                Reason.TOO_LONG,
                f"{name} holds more than {self.max_frames} "
                "frames, beyond the duration and frame-rate limits.",
            )
        if frame.width * frame.height > self.limits.max_pixels:
            raise RejectedScan(
                Reason.RESOLUTION_OUT_OF_RANGE,
                f"{name} has a {frame.width}x"
                f"{frame.height} frame; the limit is {self.limits.max_pixels} "
                "pixels.",
            )
        t = float(frame.time) if frame.time is not None else self.decoded / (self.info.fps or 30)
        if self.first_t is None:
            self.first_t = t
        t -= self.first_t
        if t > self.limits.max_duration_s:
            raise RejectedScan(
                Reason.TOO_LONG, f"{name} runs past {self.limits.max_duration_s:.0f} s, the limit."
            )
        self.corrupt += bool(frame.is_corrupt)
        heapq.heappush(self.pending, (t, self.decoded, frame))
        self.decoded += 1
        if len(self.pending) > _REORDER_DEPTH:
            self._take(*heapq.heappop(self.pending))

    def finish(self) -> None:
        while self.pending:
            self._take(*heapq.heappop(self.pending))
        if self.best is not None:
            self._keep(self.best)

    def _take(self, t: float, _order: int, frame: av.VideoFrame) -> None:
        if t < self.last_t:
            self.backwards += 1  # later than the reorder buffer could mend
        self.last_t = max(self.last_t, t)
        q = self.analyzer.measure(luma_plane(frame), len(self.qualities), t)
        self.qualities.append(q)
        # a timestamp that still goes back stays in the current window
        w = max(self.window, math.floor(t * self.sample_fps))
        if w != self.window:
            if self.best is not None:
                self._keep(self.best)
            self.best, self.window = None, w
        if self.best is None or q.sharpness > self.best[0]:
            self.best = (q.sharpness, frame, q)

    def _keep(self, best: tuple[float, av.VideoFrame, FrameQuality]) -> None:
        self.on_frame(SampledFrame(best[2], _to_rgb(best[1], self.max_side)))

    def result(self) -> DecodeResult:
        name, info = self.path.name, self.info
        if not self.qualities:
            raise RejectedScan(Reason.UNREADABLE_VIDEO, f"{name} contains no decodable frame.")
        decoded = self.last_t + (1.0 / info.fps if info.fps else 0.0)
        if info.duration_s and decoded < 0.9 * info.duration_s - 0.5:
            raise RejectedScan(
                Reason.UNREADABLE_VIDEO,
                f"{name} declares "
                f"{info.duration_s:.1f} s but only {decoded:.1f} s could be "
                "decoded: the upload was cut short.",
            )
        warnings = []
        if self.backwards:
            warnings.append(
                f"timestamps went backwards {self.backwards} times beyond "
                f"{_REORDER_DEPTH} frames of reordering: the file's index looks "
                "damaged; those frames were taken in decoding order."
            )
        if self.corrupt:
            warnings.append(
                f"the decoder flagged {self.corrupt} of {self.decoded} frames as corrupt."
            )
        return DecodeResult(self.qualities, tuple(warnings))


def decoded_duration(qualities: Sequence[FrameQuality], fps: float | None) -> float:
    """Duration covered by the decoded frames, in seconds."""
    if not qualities:
        return 0.0
    return qualities[-1].time_s + (1.0 / fps if fps else 0.0)
