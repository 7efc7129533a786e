from __future__ import annotations

import time
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from cv.errors import Reason, RejectedScan
from cv.synthetic import ScanSpec, SyntheticScan, render_scan
from cv.video.frames import (
    SampledFrame,
    VideoInfo,
    VideoLimits,
    luma_plane,
    probe_video,
    sample_frames,
    skips_frames,
)


def _sample(path: Path, limits: VideoLimits | None = None, fps: float = 2.0):
    limits = limits or VideoLimits()
    info = probe_video(path, limits)
    kept: list[SampledFrame] = []
    decoded = sample_frames(path, info, limits, sample_fps=fps, max_side=640, on_frame=kept.append)
    assert decoded.warnings == ()
    return info, decoded.qualities, kept


def test_probe_reads_the_header(good_scan: SyntheticScan) -> None:
    info = probe_video(good_scan.path, VideoLimits())
    assert (info.codec, info.width, info.height) == ("h264", 320, 240)
    assert info.fps == pytest.approx(15.0)
    assert info.duration_s == pytest.approx(6.0, abs=0.1)


def test_sampling_keeps_one_frame_per_window_and_measures_every_frame(
    good_scan: SyntheticScan,
) -> None:
    _, qualities, kept = _sample(good_scan.path, fps=2.0)
    assert len(qualities) == len(good_scan.frames) == 90
    assert len(kept) == 12  # 6 s at 2 per second
    times = [k.quality.time_s for k in kept]
    assert times == sorted(times)
    assert all(k.rgb.shape == (240, 320, 3) and k.rgb.dtype == np.uint8 for k in kept)
    # each kept frame is the sharpest of its half-second window
    for k in kept:
        window = [q for q in qualities if int(q.time_s * 2) == int(k.quality.time_s * 2)]
        assert k.quality.sharpness == max(q.sharpness for q in window)


def test_luma_plane_matches_ffmpeg_gray(good_scan: SyntheticScan) -> None:
    with av.open(str(good_scan.path)) as c:
        frame = next(c.decode(video=0))
        ours = luma_plane(frame)
        theirs = frame.to_ndarray(format="gray")
    # swscale's gray stretches video range (16..235) to full range: same image, other scale
    assert ours.shape == theirs.shape
    assert np.corrcoef(ours.ravel(), theirs.ravel())[0, 1] > 0.99
    stretched = (ours.astype(float) - 16) * 255 / 219
    assert np.abs(stretched - theirs).mean() < 1.5


def test_rotation_metadata_is_honoured(scans_dir: Path) -> None:
    scan = render_scan(
        scans_dir / "rotated.mp4", ScanSpec(width=320, height=240, duration_s=2.0, rotation=90)
    )
    _, _, kept = _sample(scan.path)
    assert kept and kept[0].rgb.shape[:2] == (320, 240)  # portrait after rotation


@pytest.mark.parametrize(
    ("limits", "reason"),
    [
        (VideoLimits(max_bytes=1000), Reason.TOO_LARGE),
        (VideoLimits(max_duration_s=2.0), Reason.TOO_LONG),
        (VideoLimits(max_pixels=100 * 100), Reason.RESOLUTION_OUT_OF_RANGE),
        (VideoLimits(min_pixels=640 * 480), Reason.RESOLUTION_OUT_OF_RANGE),
        (VideoLimits(max_fps=10.0), Reason.RESOLUTION_OUT_OF_RANGE),
    ],
)
def test_limits_are_checked_before_decoding(
    good_scan: SyntheticScan, limits: VideoLimits, reason: Reason
) -> None:
    with pytest.raises(RejectedScan) as err:
        probe_video(good_scan.path, limits)
    assert err.value.reason is reason
    assert "good.mp4" in err.value.message


def test_empty_file_is_unreadable(tmp_path: Path) -> None:
    p = tmp_path / "empty.mp4"
    p.write_bytes(b"")
    with pytest.raises(RejectedScan) as err:
        probe_video(p, VideoLimits())
    assert err.value.reason is Reason.UNREADABLE_VIDEO
    assert "empty" in err.value.message


def test_text_named_mp4_is_unreadable(tmp_path: Path) -> None:
    p = tmp_path / "notes.mp4"
    p.write_text("this is not a video\n" * 50)
    with pytest.raises(RejectedScan) as err:
        probe_video(p, VideoLimits())
    assert err.value.reason is Reason.UNREADABLE_VIDEO
    assert "not a readable video" in err.value.message


def test_bytes_ffmpeg_guesses_as_raw_audio_are_unreadable(tmp_path: Path) -> None:
    # Random bytes that FFmpeg's probe takes for raw AMR audio (one random file in six):
    # not a container at all, so not "a video without a video stream".
    p = tmp_path / "junk.mp4"
    p.write_bytes(bytes.fromhex("278d1432804f4c928f1f87a4da897539") * 3000)
    with av.open(str(p)) as guessed:
        assert guessed.format.name == "amrnb"  # the case this test is about
    with pytest.raises(RejectedScan) as err:
        probe_video(p, VideoLimits())
    assert err.value.reason is Reason.UNREADABLE_VIDEO
    assert "not a readable video" in err.value.message


def test_truncated_upload_is_unreadable(good_scan: SyntheticScan, tmp_path: Path) -> None:
    data = good_scan.path.read_bytes()
    p = tmp_path / "cut.mp4"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(RejectedScan) as err:
        _sample(p)
    assert err.value.reason is Reason.UNREADABLE_VIDEO


def test_audio_only_has_no_video_stream(tmp_path: Path) -> None:
    p = tmp_path / "voice.m4a"
    with av.open(str(p), "w") as c:
        s = c.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 1024), np.float32), format="fltp", layout="mono"
        )
        frame.sample_rate = 16000
        for _ in range(20):
            for pkt in s.encode(frame):
                c.mux(pkt)
        for pkt in s.encode(None):
            c.mux(pkt)
    with pytest.raises(RejectedScan) as err:
        probe_video(p, VideoLimits())
    assert err.value.reason is Reason.NO_VIDEO_STREAM
    assert "audio" in err.value.message


def test_variable_frame_rate_follows_timestamps(scans_dir: Path) -> None:
    scan = render_scan(scans_dir / "vfr.mp4", ScanSpec(duration_s=4.0, fps=15.0, vfr=True))
    _, qualities, kept = _sample(scan.path, fps=2.0)
    assert [round(q.time_s, 3) for q in qualities] == [round(f.time_s, 3) for f in scan.frames]
    # windows are half-seconds of video time, not runs of frames
    assert len(kept) == 8
    assert all(int(k.quality.time_s * 2) == i for i, k in enumerate(kept))


def test_hevc_decodes_like_h264(scans_dir: Path) -> None:
    scan = render_scan(scans_dir / "hevc.mp4", ScanSpec(duration_s=2.0, codec="libx265"))
    info, qualities, kept = _sample(scan.path)
    assert info.codec == "hevc"
    assert len(qualities) == len(scan.frames) and len(kept) == 4


def test_decoding_runs_beside_the_caller_on_a_one_slice_video(scans_dir: Path) -> None:
    """Phones (and ffmpeg's x264) write one slice a frame. Frame threading decodes such a
    video on FFmpeg's threads, leaving the calling thread to the quality analysis; PyAV's
    default, slice threading, decoded all of it on the caller (measured: a phone-like 1080p
    scan took 1.35x as long through the pipeline)."""
    scan = render_scan(
        scans_dir / "one-slice-720p.mp4",
        ScanSpec(
            width=1280, height=720, fps=30.0, duration_s=4.0, bitrate=8_000_000, one_slice=True
        ),
    )
    limits = VideoLimits()
    info = probe_video(scan.path, limits)
    process, caller = time.process_time(), time.thread_time()
    decoded = sample_frames(
        scan.path,
        info,
        limits,
        sample_fps=2.0,
        max_side=640,
        on_frame=lambda frame: None,
        decoder_threads=2,
    )
    process, caller = time.process_time() - process, time.thread_time() - caller
    assert len(decoded.qualities) == 120
    # the caller's share: ~0.2 with frame threads (analysis), ~0.95 with slice threads
    assert caller < 0.5 * process, (caller, process)


def test_opencv_runs_on_one_thread_while_decoding(good_scan: SyntheticScan) -> None:
    """The decoder's threads keep the cores busy: OpenCV's own pool would only add hand-offs
    (cv.video.frames.opencv_threads); its setting is restored afterwards."""
    before = cv2.getNumThreads()
    seen: list[int] = []
    limits = VideoLimits()
    sample_frames(
        good_scan.path,
        probe_video(good_scan.path, limits),
        limits,
        sample_fps=2.0,
        max_side=640,
        on_frame=lambda frame: seen.append(cv2.getNumThreads()),
    )
    assert seen and set(seen) == {1}
    assert cv2.getNumThreads() == before


@pytest.mark.parametrize("codec", ["libx264", "libx265"])
def test_reference_only_skips_non_reference_frames_and_keeps_true_times(
    scans_dir: Path, codec: str
) -> None:
    scan = render_scan(
        scans_dir / f"b-frames-{codec}.mp4",
        ScanSpec(duration_s=4.0, fps=30.0, seed=3, blurred=frozenset(range(40, 50)), codec=codec),
    )
    limits = VideoLimits()
    info = probe_video(scan.path, limits)
    every, part = [], []
    full = sample_frames(
        scan.path, info, limits, sample_fps=2, max_side=640, on_frame=every.append
    ).qualities
    skipped = sample_frames(
        scan.path,
        info,
        limits,
        sample_fps=2,
        max_side=640,
        on_frame=part.append,
        reference_only=True,
    ).qualities
    assert len(full) == len(scan.frames) == 120
    # the encoders write B-frames that nothing refers to: those are not decoded
    assert 0.3 * len(full) < len(skipped) < 0.9 * len(full)
    by_time = {round(q.time_s, 4): q for q in full}
    for i, q in enumerate(skipped):
        assert q.index == i  # the position among measured frames
        twin = by_time[round(q.time_s, 4)]  # a true time, and the same frame's figures
        assert q.sharpness == pytest.approx(twin.sharpness)
        assert q.brightness == pytest.approx(twin.brightness)
    # still a kept frame in every half-second window, and the blurred run is still measured
    assert [int(k.quality.time_s * 2) for k in part] == list(range(8))
    blurred_times = {round(f.time_s, 4) for f in scan.frames if f.blurred}
    assert any(round(q.time_s, 4) in blurred_times for q in skipped)


@pytest.mark.parametrize(
    ("fps", "asked", "skips"),
    [
        (30.0, True, True),
        (24.0, True, True),
        (15.0, True, False),
        (None, True, False),
        (60.0, False, False),
    ],
)
def test_frames_are_skipped_only_when_asked_and_at_24_fps_or_more(
    fps: float | None, asked: bool, skips: bool
) -> None:
    info = VideoInfo(1000, "h264", 640, 480, 10.0, fps)
    assert skips_frames(info, asked) is skips
