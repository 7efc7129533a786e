"""cv.video.bitstream reads the frame size from real encoders' parameter sets, as FFmpeg's own
decoder sees it, in both framings (Annex B and MP4's length prefixes), and reads nothing
(rather than raising) from a damaged one."""

from __future__ import annotations

import random
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from cv.video.bitstream import BitReader, ParameterSetGuard, hevc_sps_size, unescape

# custom quantisation matrices: every entry of the SPS's scaling lists is coded
_CQM4 = ",".join(str(16 + i) for i in range(16))
_CQM8 = ",".join(str(16 + i // 2) for i in range(64))
# (encoder, pix_fmt, width, height, options): cropping (1080 and 360 are not multiples of
# 16), 4:2:2 and 4:4:4 (other crop units, High 4:4:4's extra fields), scaling lists,
# interlacing (the height counted in field macroblock pairs), HEVC's temporal sub-layers.
CASES = [
    ("libx264", "yuv420p", 1920, 1080, {}),
    ("libx264", "yuv422p", 640, 360, {}),
    ("libx264", "yuv444p", 328, 232, {}),
    ("libx264", "yuv420p", 640, 360, {"x264-params": f"cqm4={_CQM4}:cqm8={_CQM8}"}),
    ("libx264", "yuv420p", 320, 240, {"x264-params": "interlaced=1"}),
    ("libx264", "yuv420p", 352, 200, {"profile": "baseline"}),
    ("libx265", "yuv420p", 1920, 1080, {}),
    ("libx265", "yuv444p", 328, 200, {}),
    ("libx265", "yuv420p", 640, 360, {"x265-params": "log-level=none:temporal-layers=3"}),
]


def _encode(
    codec: str, pix_fmt: str, width: int, height: int, options: dict[str, str]
) -> list[bytes]:
    enc = av.CodecContext.create(codec, "w")
    enc.width, enc.height, enc.pix_fmt = width, height, pix_fmt  # type: ignore[attr-defined]
    enc.time_base = Fraction(1, 30)
    quiet = {"x265-params": "log-level=none"} if codec == "libx265" else {}
    enc.options = {"preset": "ultrafast", **quiet, **options}
    img = np.random.default_rng(0).integers(0, 255, (height, width, 3), np.uint8)
    packets: list[bytes] = []
    for i in range(3):
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts = i
        packets += [bytes(p) for p in enc.encode(frame)]  # type: ignore[attr-defined]
    return packets + [bytes(p) for p in enc.encode(None)]  # type: ignore[attr-defined]


def _decoded_size(path: Path) -> tuple[int, int]:
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
        return frame.width, frame.height


@pytest.mark.parametrize(("codec", "pix_fmt", "width", "height", "options"), CASES)
def test_the_size_in_each_framing_is_what_the_decoder_decodes(
    tmp_path: Path,
    codec: str,
    pix_fmt: str,
    width: int,
    height: int,
    options: dict[str, str],
) -> None:
    packets = _encode(codec, pix_fmt, width, height, options)
    name = "h264" if codec == "libx264" else "hevc"
    raw = tmp_path / f"scan.{name}"
    raw.write_bytes(b"".join(packets))
    assert _decoded_size(raw) == (width, height)

    annexb = ParameterSetGuard.for_stream(name, None)
    assert annexb is not None and annexb.length_size == 0
    assert list(annexb.sizes(packets[0])) == [(width, height)]
    assert all(not list(annexb.sizes(p)) for p in packets[1:])  # no SPS: nothing read

    # Remuxed into MP4: the packets are length-prefixed (avcC/hvcC); the encoder's in-band
    # parameter sets stay in the first one.
    mp4 = tmp_path / "scan.mp4"
    with av.open(str(raw)) as src, av.open(str(mp4), "w") as dst:
        out = dst.add_stream_from_template(src.streams.video[0])
        for i, packet in enumerate(p for p in src.demux(video=0) if p.size):
            packet.pts = packet.dts = i  # a raw stream has no timestamps
            packet.time_base = out.time_base = Fraction(1, 30)
            packet.stream = out
            dst.mux(packet)
    with av.open(str(mp4)) as container:
        ctx = container.streams.video[0].codec_context
        framed = ParameterSetGuard.for_stream(ctx.name, ctx.extradata)
        assert framed is not None and framed.length_size == 4
        muxed = [bytes(p) for p in container.demux(video=0) if p.size]
    assert muxed[0][:4] != b"\x00\x00\x00\x01"  # length-prefixed, not Annex B
    assert list(framed.sizes(muxed[0])) == [(width, height)]
    assert all(not list(framed.sizes(p)) for p in muxed[1:])


def _annexb_nals(data: bytes) -> list[bytes]:
    parts = data.split(b"\x00\x00\x01")[1:]
    return [p.rstrip(b"\x00") for p in parts]


def _is_sps(codec: str, nal: bytes) -> bool:
    return nal[0] & 0x1F == 7 if codec == "h264" else (nal[0] >> 1) & 0x3F == 33


def _ue(value: int) -> str:
    code = bin(value + 1)[2:]
    return "0" * (len(code) - 1) + code


def _with_scaling_lists(sps: bytes) -> bytes:
    """A High-profile SPS NAL unit with all eight scaling lists coded entry by entry (x264
    puts its matrices in the PPS; some hardware encoders put them here)."""
    r = BitReader(unescape(sps[1:]))
    bits = format(r.u(24), "024b") + _ue(r.ue())  # profile, flags, level; sps id
    assert sps[1] == 100 and (chroma := r.ue()) == 1
    bits += _ue(chroma) + _ue(r.ue()) + _ue(r.ue()) + str(r.u(1))  # bit depths, bypass
    assert r.u(1) == 0  # no matrices yet
    # list 0: se(-8) takes the next scale to 0 (its default matrix); the others: se(+1) each
    bits += "1" + "1" + _ue(16) + "".join("1" + _ue(1) * (16 if i < 6 else 64) for i in range(1, 8))
    bits += "".join(str(r.u(1)) for _ in range(len(r.data) * 8 - r.pos))  # the rest as is
    bits += "0" * (-len(bits) % 8)
    rbsp = int(bits, 2).to_bytes(len(bits) // 8, "big")
    return sps[:1] + rbsp.replace(b"\x00\x00", b"\x00\x00\x03")


def test_an_sps_with_scaling_lists(tmp_path: Path) -> None:
    packets = _encode("libx264", "yuv420p", 640, 360, {"preset": "fast"})  # High profile
    nals = _annexb_nals(packets[0])
    nals = [_with_scaling_lists(n) if _is_sps("h264", n) else n for n in nals]
    first = b"".join(b"\x00\x00\x00\x01" + n for n in nals)
    raw = tmp_path / "scan.h264"
    raw.write_bytes(first + b"".join(packets[1:]))
    assert _decoded_size(raw) == (640, 360)  # FFmpeg reads the lists and decodes on
    guard = ParameterSetGuard.for_stream("h264", None)
    assert guard is not None and list(guard.sizes(first)) == [(640, 360)]


def test_damaged_parameter_sets_yield_no_size() -> None:
    packets = _encode("libx264", "yuv420p", 640, 360, {})
    sps = next(n for n in _annexb_nals(packets[0]) if _is_sps("h264", n))
    guard = ParameterSetGuard.for_stream("h264", None)
    assert guard is not None
    for cut in range(1, len(sps)):
        got = list(guard.sizes(b"\x00\x00\x01" + sps[:cut]))
        assert got in ([], [(640, 360)])  # cut in the VUI, after the size, still reads
    rng = random.Random(1)
    for _ in range(300):
        junk = bytes([0x67]) + rng.randbytes(rng.randrange(0, 64))
        list(guard.sizes(b"\x00\x00\x01" + junk))  # reads a size or none; never raises
    # An Exp-Golomb code of 40 leading zeros is refused, not read as a 2^40 size.
    with pytest.raises(ValueError):
        hevc_sps_size(bytes(32))


def test_other_codecs_get_no_guard() -> None:
    assert ParameterSetGuard.for_stream("vp9", None) is None
    assert ParameterSetGuard.for_stream("mjpeg", b"") is None
