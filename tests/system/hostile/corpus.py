"""A corpus of bad and odd uploads, written by the tests into a folder.

Each :class:`Case` names its file, what should happen (a reason code, or ``None``: the scan
completes) and where decoding should stop it: ``probe`` (the header, before a frame is
decoded for us), ``decode`` (while decoding: the header lied), ``quality`` (decoded, then
judged) or ``complete``. Everything is small and quick to make: the 2-hour video has three
frames, the bombs are a few kilobytes of H.264 or PNG whose headers declare 16000x16000
pixels, or one tiny skipped frame repeated 200,000 times.
"""

from __future__ import annotations

import random
import re
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

from cv.synthetic import ScanSpec, render_scan
from cv.video.bitstream import BitReader, unescape
from cv.video.encode import H264Writer

CASE_NAMES = (
    "zero_bytes",
    "random_bytes",
    "text",
    "jpeg_photo",
    "png_image",
    "truncated",
    "moov_missing",
    "moov_at_end",
    "audio_only",
    "single_frame",
    "two_hours",
    "res_8k",
    "res_16x16",
    "fps_240",
    "fps_480",
    "rotated",
    "vfr",
    "hevc",
    "bomb_dims_h264",
    "bomb_dims_png",
    "bomb_dims_midstream",
    "bomb_frames_mp4",
    "bomb_frames_raw",
)


@dataclass(frozen=True)
class Case:
    name: str
    path: Path
    expected: str | None  # reason code; None: the scan completes
    stage: str  # probe | decode | quality | complete
    what: str  # one line for the report
    options: dict[str, Any] = field(default_factory=dict)  # per-run ScanOptions for the flow


# -- H.264 as raw Annex B packets, and a rewriter of the frame size in its SPS ------------


def h264_packets(width: int, height: int, frames: int) -> list[bytes]:
    """Baseline-profile H.264 of a still picture: an IDR, then skipped P frames of a few
    dozen bytes each; every packet carries its own parameter sets."""
    enc = av.CodecContext.create("libx264", "w")
    enc.width, enc.height, enc.pix_fmt = width, height, "yuv420p"  # type: ignore[attr-defined]
    enc.time_base = Fraction(1, 30)
    enc.options = {
        "preset": "ultrafast",
        "profile": "baseline",
        "bf": "0",
        "x264-params": "keyint=1000000:scenecut=0:repeat-headers=1",
    }
    img = np.full((height, width, 3), 100, np.uint8)
    img[height // 3 : height // 2, width // 3 : width // 2] = 200
    out: list[bytes] = []
    for i in range(frames):
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts = i
        out += [bytes(p) for p in enc.encode(frame)]  # type: ignore[attr-defined]
    out += [bytes(p) for p in enc.encode(None)]  # type: ignore[attr-defined]
    return out


class _BitWriter:
    def __init__(self) -> None:
        self.bits: list[int] = []

    def u(self, n: int, value: int) -> None:
        self.bits += [(value >> (n - 1 - i)) & 1 for i in range(n)]

    def ue(self, value: int) -> None:
        n = (value + 1).bit_length()
        self.u(n - 1, 0)
        self.u(n, value + 1)

    def to_bytes(self) -> bytes:
        bits = self.bits + [0] * (-len(self.bits) % 8)
        return bytes(int("".join(map(str, bits[i : i + 8])), 2) for i in range(0, len(bits), 8))


def _escape(data: bytes) -> bytes:
    out, zeros = bytearray(), 0
    for b in data:
        if zeros >= 2 and b <= 3:
            out.append(3)
            zeros = 0
        out.append(b)
        zeros = zeros + 1 if b == 0 else 0
    return bytes(out)


def _resized_sps(nal: bytes, width: int, height: int) -> bytes:
    """A baseline SPS NAL unit (no start code) declaring ``width`` x ``height``."""
    r, w = BitReader(unescape(nal[1:])), _BitWriter()

    def copy(n: int = 0) -> None:
        w.u(n, r.u(n)) if n else w.ue(r.ue())

    profile = r.u(8)
    assert profile == 66, f"baseline SPS expected, got profile {profile}"
    w.u(8, profile)
    copy(8), copy(8), copy()  # constraint flags, level, sps id
    copy()  # log2_max_frame_num_minus4
    poc_type = r.ue()
    w.ue(poc_type)
    assert poc_type in (0, 2)
    if poc_type == 0:
        copy()
    copy(), copy(1)  # max_num_ref_frames, gaps_in_frame_num_allowed
    r.ue(), r.ue()
    w.ue(width // 16 - 1), w.ue(height // 16 - 1)
    frame_mbs_only = r.u(1)
    w.u(1, frame_mbs_only)
    if not frame_mbs_only:
        copy(1)
    copy(1)  # direct_8x8_inference
    if r.u(1):  # frame cropping: dropped
        for _ in range(4):
            r.ue()
    w.u(1, 0)
    while r.pos < len(r.data) * 8:  # VUI and trailing bits, as they were
        copy(1)
    return nal[:1] + _escape(w.to_bytes())


def with_frame_size(packet: bytes, width: int, height: int) -> bytes:
    """An Annex B packet whose SPS now declares another frame size (slices unchanged)."""
    starts = [m.end() for m in re.finditer(b"\x00\x00\x01", packet)]
    out = b""
    for k, start in enumerate(starts):
        end = starts[k + 1] - 3 if k + 1 < len(starts) else len(packet)
        nal = packet[start:end].rstrip(b"\x00") if k + 1 < len(starts) else packet[start:end]
        if nal[0] & 0x1F == 7:
            nal = _resized_sps(nal, width, height)
        out += b"\x00\x00\x00\x01" + nal
    return out


def mux_mp4(path: Path, packets: list[bytes], rate: int, width: int, height: int) -> Path:
    """Packets (first one a keyframe) into an MP4 at a constant ``rate``."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("h264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = Fraction(1, rate)
        for i, data in enumerate(packets):
            packet = av.Packet(data)
            packet.pts = packet.dts = i
            packet.time_base = Fraction(1, rate)
            packet.stream = stream
            packet.is_keyframe = i == 0
            out.mux(packet)
    return path


# -- the makers -------------------------------------------------------------------------


def _flat_video(path: Path, width: int, height: int, fps: float, frames: int) -> Path:
    with H264Writer(path, width, height, fps, preset="ultrafast") as w:
        img = np.full((height, width, 3), 90, np.uint8)
        for _ in range(frames):
            w.write(img)
    return path


def _remux(src: Path, dest: Path, *, faststart: bool) -> Path:
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(src)) as inp, av.open(str(dest), "w", options=options) as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        for packet in inp.demux(inp.streams.video[0]):
            if packet.dts is None:
                continue
            packet.stream = stream
            out.mux(packet)
    return dest


def _top_level_boxes(data: bytes) -> dict[bytes, int]:
    boxes, pos = {}, 0
    while pos + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        boxes[kind] = pos
        if size < 8:
            break
        pos += size
    return boxes


def _audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as c:
        s = c.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 1024), np.float32), format="fltp", layout="mono"
        )
        frame.sample_rate = 16000
        for _ in range(60):
            for pkt in s.encode(frame):  # type: ignore[attr-defined]
                c.mux(pkt)
        for pkt in s.encode(None):  # type: ignore[attr-defined]
            c.mux(pkt)
    return path


def _two_hours(path: Path) -> Path:
    """A real 2-hour video of three frames (at 0 s, 1 h and 2 h): 2 KB."""
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = 320, 240, "yuv420p"
        s.codec_context.time_base = Fraction(1, 1000)
        img = np.full((240, 320, 3), 128, np.uint8)
        for ms in (0, 3_600_000, 7_200_000):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = ms, Fraction(1, 1000)
            for pkt in s.encode(frame):
                c.mux(pkt)
        for pkt in s.encode(None):
            c.mux(pkt)
    return path


def _png(width: int, height: int, rows: int) -> bytes:
    """An 8-bit RGBA PNG declaring ``width`` x ``height``, with ``rows`` rows of data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    raw = (b"\x00" + b"\x00" * (width * 4)) * rows
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def _photo(kind: str) -> bytes:
    rng = np.random.default_rng(3)
    img = cv2.GaussianBlur(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8), (9, 9), 3)
    ok, data = cv2.imencode(kind, img)
    assert ok
    return bytes(data.tobytes())


def build_corpus(folder: Path) -> dict[str, Case]:
    """Write every case into ``folder``; returns them by name."""
    folder.mkdir(parents=True, exist_ok=True)
    cases: list[Case] = []

    def add(
        name: str,
        expected: str | None,
        stage: str,
        what: str,
        make: Callable[[Path], object],
        **options: Any,
    ) -> None:
        path = folder / f"{name}.mp4"
        make(path)
        cases.append(Case(name, path, expected, stage, what, options))

    good = render_scan(folder / "_good_source.mp4", ScanSpec(duration_s=6.0, seed=3)).path
    good_bytes = good.read_bytes()
    tail = _remux(good, folder / "_moov_at_end.mp4", faststart=False).read_bytes()
    moov = _top_level_boxes(tail)[b"moov"]
    tiny = h264_packets(320, 240, 3)  # IDR + skipped frames

    add("zero_bytes", "unreadable_video", "probe", "0 bytes", lambda p: p.write_bytes(b""))
    add(
        "random_bytes",
        "unreadable_video",
        "probe",
        "256 KB of random bytes",
        lambda p: p.write_bytes(random.Random(8).randbytes(256 * 1024)),
    )
    add(
        "text",
        "unreadable_video",
        "probe",
        "a text file named .mp4",
        lambda p: p.write_text("my scan, as a note\n" * 200),
    )
    add(
        "jpeg_photo",
        "unreadable_video",
        "probe",
        "a 640x480 JPEG photo named .mp4",
        lambda p: p.write_bytes(_photo(".jpg")),
    )
    add(
        "png_image",
        "unreadable_video",
        "probe",
        "a 640x480 PNG named .mp4",
        lambda p: p.write_bytes(_photo(".png")),
    )
    add(
        "truncated",
        "unreadable_video",
        "decode",
        "upload cut at half (index at the front)",
        lambda p: p.write_bytes(good_bytes[: len(good_bytes) // 2]),
    )
    add(
        "moov_missing",
        "unreadable_video",
        "probe",
        "index (moov) missing: upload cut before it",
        lambda p: p.write_bytes(tail[:moov]),
    )
    add(
        "moov_at_end",
        None,
        "complete",
        "valid 6 s scan, index at the end",
        lambda p: p.write_bytes(tail),
    )
    add("audio_only", "no_video_stream", "probe", "AAC audio, no video", _audio_only)
    add(
        "single_frame",
        "too_short",
        "quality",
        "one frame",
        lambda p: _flat_video(p, 320, 240, 30, 1),
    )
    add("two_hours", "too_long", "probe", "2 h video of 3 frames (2 KB)", _two_hours)
    add(
        "res_8k",
        "resolution_out_of_range",
        "probe",
        "7680x4320 (8K) H.264 in MP4",
        lambda p: mux_mp4(p, [with_frame_size(tiny[0], 7680, 4320), *tiny[1:]], 30, 7680, 4320),
    )
    add(
        "res_16x16",
        "resolution_out_of_range",
        "probe",
        "16x16 H.264",
        lambda p: _flat_video(p, 16, 16, 30, 90),
    )
    add(
        "fps_240",
        None,
        "complete",
        "240 fps, 4 s (the limit)",
        lambda p: render_scan(p, ScanSpec(fps=240.0, duration_s=4.0, seed=4)),
    )
    add(
        "fps_480",
        "resolution_out_of_range",
        "probe",
        "480 fps (over the limit)",
        lambda p: _flat_video(p, 320, 240, 480, 240),
    )
    add(
        "rotated",
        None,
        "complete",
        "phone held sideways (rotation 90)",
        lambda p: render_scan(p, ScanSpec(duration_s=6.0, seed=6, rotation=90)),
    )
    add(
        "vfr",
        None,
        "complete",
        "variable frame rate",
        lambda p: render_scan(p, ScanSpec(duration_s=6.0, seed=7, vfr=True)),
    )
    add(
        "hevc",
        None,
        "complete",
        "HEVC (H.265)",
        lambda p: render_scan(p, ScanSpec(duration_s=6.0, seed=5, codec="libx265")),
    )
    add(
        "bomb_dims_h264",
        "resolution_out_of_range",
        "probe",
        "3 KB of H.264 declaring 16000x16000",
        lambda p: p.write_bytes(b"".join([with_frame_size(tiny[0], 16000, 16000), *tiny[1:]])),
    )
    add(
        "bomb_dims_png",
        "unreadable_video",
        "probe",
        "330 B PNG declaring 16000x16000 RGBA",
        lambda p: p.write_bytes(_png(16000, 16000, rows=4)),
    )
    add(
        "bomb_dims_midstream",
        "resolution_out_of_range",
        "decode",
        "320x240 H.264, then an SPS of 16000x16000",
        lambda p: p.write_bytes(
            b"".join(h264_packets(320, 240, 60)) + with_frame_size(tiny[0], 16000, 16000) + tiny[1]
        ),
    )
    add(
        "bomb_frames_mp4",
        "too_long",
        "probe",
        "200,000 skipped frames at 240 fps in MP4",
        lambda p: mux_mp4(p, [tiny[0], *[tiny[1]] * 199_999], 240, 320, 240),
    )
    add(
        "bomb_frames_raw",
        "too_long",
        "decode",
        "200,000 skipped frames, raw H.264 (no duration)",
        lambda p: p.write_bytes(tiny[0] + tiny[1] * 199_999),
        limits={"max_duration_s": 60},
    )
    assert tuple(c.name for c in cases) == CASE_NAMES
    return {c.name: c for c in cases}
