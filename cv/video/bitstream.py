"""The frame size an H.264 or HEVC stream's in-band parameter sets declare, read from the
packets before the decoder sees them.

A sequence parameter set (SPS) can change the frame size anywhere in a stream. FFmpeg's
decoders refuse a frame over their pixel bound, but only when they allocate its picture:
by then every decoding thread has taken the new SPS and allocated its per-macroblock
tables, ~80 MB a thread for 16000x16000 (16 frame threads: 1.4 GB for a 2 kB file).
:class:`ParameterSetGuard` reads the size first, so the scan is refused with no table
allocated, whatever the thread count.

Only the fields up to the frame size (and the cropping that follows it) are parsed. An SPS
this parser cannot read yields no size: the decoder's own checks still stand behind it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

# An SPS's frame size lies in its first bytes; a longer one is read this far only (a
# High-profile SPS with every scaling list in it needs ~700 bytes).
_MAX_SPS_BYTES = 1024
_H264_SPS = 7
_HEVC_SPS = 33
# H.264 profiles whose SPS carries chroma format, bit depths and scaling lists
_H264_HIGH_PROFILES = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})


class BitReader:
    """Big-endian bits of an RBSP (emulation prevention already removed)."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def u(self, n: int) -> int:
        """``n`` bits as an unsigned integer; IndexError past the end."""
        value = 0
        for _ in range(n):
            bit = (self.data[self.pos >> 3] >> (7 - (self.pos & 7))) & 1
            value, self.pos = (value << 1) | bit, self.pos + 1
        return value

    def ue(self) -> int:
        """An unsigned Exp-Golomb code (ValueError over 32 bits)."""
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
            if zeros > 31:
                raise ValueError("Exp-Golomb code longer than 32 bits")
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        """A signed Exp-Golomb code."""
        k = self.ue()
        return (k + 1) // 2 if k & 1 else -(k // 2)


def unescape(data: bytes) -> bytes:
    """A NAL unit's payload without its emulation-prevention bytes (00 00 03 -> 00 00)."""
    if b"\x00\x00\x03" not in data:
        return data
    out, zeros = bytearray(), 0
    for b in data:
        if zeros >= 2 and b == 3:
            zeros = 0
            continue
        out.append(b)
        zeros = zeros + 1 if b == 0 else 0
    return bytes(out)


def _scaling_list(r: BitReader, size: int) -> None:
    last = next_ = 8
    for _ in range(size):
        if next_:
            next_ = (last + r.se() + 256) % 256
        last = next_ or last


def h264_sps_size(rbsp: bytes) -> tuple[int, int]:
    """Displayed width and height an H.264 SPS declares (its payload after the NAL header).

    Raises IndexError or ValueError on an SPS cut short or malformed.
    """
    r = BitReader(rbsp)
    profile = r.u(8)
    r.u(16)  # constraint flags, level
    r.ue()  # seq_parameter_set_id
    chroma = 1
    if profile in _H264_HIGH_PROFILES:
        chroma = r.ue()
        if chroma == 3:
            r.u(1)  # separate_colour_plane
        r.ue(), r.ue(), r.u(1)  # bit depths, qpprime_y_zero_transform_bypass
        if r.u(1):  # seq_scaling_matrix_present
            for i in range(12 if chroma == 3 else 8):
                if r.u(1):
                    _scaling_list(r, 16 if i < 6 else 64)
    r.ue()  # log2_max_frame_num_minus4
    poc_type = r.ue()
    if poc_type == 0:
        r.ue()
    elif poc_type == 1:
        r.u(1), r.se(), r.se()
        for _ in range(r.ue()):
            r.se()
    r.ue(), r.u(1)  # max_num_ref_frames, gaps_in_frame_num_allowed
    width_mbs, height_units = r.ue() + 1, r.ue() + 1
    frame_mbs_only = r.u(1)
    if not frame_mbs_only:
        r.u(1)  # mb_adaptive_frame_field
    r.u(1)  # direct_8x8_inference
    width, height = 16 * width_mbs, 16 * height_units * (2 - frame_mbs_only)
    if r.u(1):  # frame cropping, in chroma samples (luma for 4:4:4 and monochrome)
        crop_x = 2 if chroma in (1, 2) else 1
        crop_y = (2 if chroma == 1 else 1) * (2 - frame_mbs_only)
        left, right, top, bottom = (r.ue() for _ in range(4))
        width -= crop_x * (left + right)
        height -= crop_y * (top + bottom)
    return width, height


def hevc_sps_size(rbsp: bytes) -> tuple[int, int]:
    """Displayed width and height an HEVC SPS declares (its payload after the NAL header).

    Raises IndexError or ValueError on an SPS cut short or malformed.
    """
    r = BitReader(rbsp)
    r.u(4)  # sps_video_parameter_set_id
    sub_layers = r.u(3)  # sps_max_sub_layers_minus1
    r.u(1)  # temporal_id_nesting
    r.u(96)  # general profile, tier and level
    present = [(r.u(1), r.u(1)) for _ in range(sub_layers)]
    if sub_layers:
        r.u(2 * (8 - sub_layers))  # reserved
    for profile, level in present:
        r.u(88 * profile + 8 * level)
    r.ue()  # sps_seq_parameter_set_id
    chroma = r.ue()
    if chroma == 3:
        r.u(1)  # separate_colour_plane
    width, height = r.ue(), r.ue()
    if r.u(1):  # conformance window, in chroma samples
        left, right, top, bottom = (r.ue() for _ in range(4))
        width -= (2 if chroma in (1, 2) else 1) * (left + right)
        height -= (2 if chroma == 1 else 1) * (top + bottom)
    return width, height


def _annexb_units(data: bytes) -> Iterator[bytes]:
    start = data.find(b"\x00\x00\x01")
    while start >= 0:
        end = data.find(b"\x00\x00\x01", start + 3)
        yield data[start + 3 : end if end >= 0 else len(data)]
        start = end


def _length_prefixed_units(data: bytes, size: int) -> Iterator[bytes]:
    pos = 0
    while pos + size <= len(data):
        length = int.from_bytes(data[pos : pos + size], "big")
        pos += size
        yield data[pos : pos + length]
        pos += length


@dataclass(frozen=True)
class ParameterSetGuard:
    """Reads the frame size of every SPS in a stream's packets.

    Attributes:
        codec: ``"h264"`` or ``"hevc"``.
        length_size: bytes of each NAL unit's length prefix (MP4's avcC/hvcC framing), or 0
            for Annex B start codes (raw streams, MPEG-TS).
    """

    codec: str
    length_size: int

    @classmethod
    def for_stream(cls, codec: str, extradata: bytes | None) -> ParameterSetGuard | None:
        """The guard for a stream of ``codec`` with this extradata; None for other codecs."""
        if codec not in ("h264", "hevc"):
            return None
        extra = extradata or b""
        length_size = 0
        if codec == "h264" and len(extra) >= 5 and extra[0] == 1:  # avcC
            length_size = (extra[4] & 3) + 1
        elif codec == "hevc" and len(extra) >= 23 and extra[0] == 1:  # hvcC
            length_size = (extra[21] & 3) + 1
        return cls(codec, length_size)

    def sizes(self, packet: bytes) -> Iterator[tuple[int, int]]:
        """The (width, height) of each SPS in ``packet`` that could be read."""
        units = (
            _length_prefixed_units(packet, self.length_size)
            if self.length_size
            else _annexb_units(packet)
        )
        for nal in units:
            if not nal:
                continue
            if self.codec == "h264" and nal[0] & 0x1F == _H264_SPS:
                header, parse = 1, h264_sps_size
            elif self.codec == "hevc" and (nal[0] >> 1) & 0x3F == _HEVC_SPS:
                header, parse = 2, hevc_sps_size
            else:
                continue
            try:
                yield parse(unescape(nal[header : header + _MAX_SPS_BYTES]))
            except (IndexError, ValueError):
                continue
