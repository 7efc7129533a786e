"""cv.video.encode.H264Writer: what it writes, read back by PyAV (FFmpeg): a browser-playable
MP4 (H.264 High, yuv420p, the moov atom before the media data), every frame at its size and
time, HEVC on request, one slice a frame when asked, the display rotation, the bitrate."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import av
import numpy as np
import pytest

from cv.video.encode import H264Writer


def _frames(n: int, w: int, h: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), np.uint8) for _ in range(n)]


def _write(path: Path, frames: list[np.ndarray], fps: float = 12.0, **kwargs: object) -> int:
    h, w = frames[0].shape[:2]
    with H264Writer(path, w, h, fps, **kwargs) as writer:  # type: ignore[arg-type]
        for rgb in frames:
            writer.write(rgb)
    return writer.frames


def _top_level_atoms(path: Path) -> list[str]:
    data, atoms, i = path.read_bytes(), [], 0
    while i + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[i : i + 8])
        atoms.append(kind.decode("latin-1"))
        if size == 1:  # 64-bit size follows
            size = struct.unpack(">Q", data[i + 8 : i + 16])[0]
        i += size if size else len(data)
    return atoms


def _slices_per_frame(path: Path) -> list[int]:
    """Slice NAL units (types 1 and 5) in each packet; MP4 packets are length-prefixed."""
    counts = []
    with av.open(str(path)) as c:
        for packet in c.demux(video=0):
            data, i, n = bytes(packet), 0, 0
            while i + 4 <= len(data):
                length = struct.unpack(">I", data[i : i + 4])[0]
                n += (data[i + 4] & 0x1F) in (1, 5)
                i += 4 + length
            if data:
                counts.append(n)
    return counts


def test_the_file_is_browser_playable_h264_with_every_frame(tmp_path: Path) -> None:
    frames = _frames(10, 128, 96)
    path = tmp_path / "out.mp4"
    assert _write(path, frames, fps=12.0) == 10
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        ctx = stream.codec_context
        assert (ctx.name, ctx.profile, ctx.pix_fmt) == ("h264", "High", "yuv420p")
        assert (stream.width, stream.height, stream.frames) == (128, 96, 10)
        assert stream.average_rate == 12
        decoded = [f for f in c.decode(stream)]
    assert len(decoded) == 10
    assert [float(f.time) for f in decoded] == pytest.approx([i / 12 for i in range(10)])
    assert decoded[0].to_ndarray(format="rgb24").shape == (96, 128, 3)


def test_the_moov_atom_comes_before_the_media_data(tmp_path: Path) -> None:
    """faststart: a browser can start playing before it has the whole file."""
    path = tmp_path / "fast.mp4"
    _write(path, _frames(5, 64, 48))
    atoms = _top_level_atoms(path)
    assert "moov" in atoms and "mdat" in atoms
    assert atoms.index("moov") < atoms.index("mdat"), atoms


def test_pictures_survive_encoding(tmp_path: Path) -> None:
    """Constant quality keeps a smooth picture close, and in RGB order."""
    yy, xx = np.mgrid[0:96, 0:128]
    rgb = np.stack([xx * 2, yy * 2, np.full_like(xx, 40)], axis=-1).astype(np.uint8)
    path = tmp_path / "smooth.mp4"
    _write(path, [rgb] * 3)
    with av.open(str(path)) as c:
        back = next(c.decode(video=0)).to_ndarray(format="rgb24")
    assert np.abs(back.astype(int) - rgb.astype(int)).mean() < 3


def test_explicit_times_give_a_variable_frame_rate(tmp_path: Path) -> None:
    times = [0.0, 0.05, 0.2, 0.25, 0.5, 1.0]
    path = tmp_path / "vfr.mp4"
    with H264Writer(path, 64, 48, 10.0) as writer:
        for t, rgb in zip(times, _frames(len(times), 64, 48), strict=True):
            writer.write(rgb, t)
    with av.open(str(path)) as c:
        assert [float(f.time) for f in c.decode(video=0)] == pytest.approx(times, abs=1e-3)


def test_one_slice_writes_one_slice_a_frame(tmp_path: Path) -> None:
    frames = _frames(4, 320, 240)
    one, default = tmp_path / "one.mp4", tmp_path / "default.mp4"
    _write(one, frames, one_slice=True)
    _write(default, frames)
    assert _slices_per_frame(one) == [1, 1, 1, 1]
    if (os.cpu_count() or 1) > 1:
        # slice threading (PyAV's default) cuts each frame into one slice per thread
        assert min(_slices_per_frame(default)) > 1


def test_hevc_on_request(tmp_path: Path) -> None:
    path = tmp_path / "hevc.mp4"
    assert _write(path, _frames(3, 64, 48), codec="libx265") == 3
    with av.open(str(path)) as c:
        assert c.streams.video[0].codec_context.name == "hevc"
        assert len(list(c.decode(video=0))) == 3


def test_the_display_rotation_is_recorded(tmp_path: Path) -> None:
    path = tmp_path / "rotated.mp4"
    _write(path, _frames(2, 64, 48), rotation=90)
    with av.open(str(path)) as c:
        frame = next(c.decode(video=0))
    assert frame.rotation == 90 and (frame.width, frame.height) == (64, 48)


def test_a_bitrate_sets_the_size_of_the_stream(tmp_path: Path) -> None:
    frames = _frames(24, 160, 120)
    low, high = tmp_path / "low.mp4", tmp_path / "high.mp4"
    _write(low, frames, fps=24.0, bitrate=100_000)
    _write(high, frames, fps=24.0, bitrate=2_000_000)
    # one second of noise: each file is near its bitrate's budget
    assert low.stat().st_size < 40_000 < 150_000 < high.stat().st_size


@pytest.mark.parametrize(("width", "height"), [(65, 48), (64, 47)])
def test_odd_sides_are_refused_before_a_file_is_made(
    tmp_path: Path, width: int, height: int
) -> None:
    path = tmp_path / "odd.mp4"
    with pytest.raises(ValueError, match=f"even sides, got {width}x{height}"):
        H264Writer(path, width, height, 10.0)
    assert not path.exists()


def test_an_error_inside_the_block_propagates(tmp_path: Path) -> None:
    path = tmp_path / "broken.mp4"
    with pytest.raises(RuntimeError, match="decoder died"), H264Writer(path, 64, 48, 10.0) as w:
        w.write(_frames(1, 64, 48)[0])
        raise RuntimeError("decoder died")
    assert w.frames == 1
