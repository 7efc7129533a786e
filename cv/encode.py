"""Writing browser-playable H.264 MP4 with PyAV (libx264, High profile, yuv420p, faststart)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from types import TracebackType

import av
import numpy as np
import numpy.typing as npt


class H264Writer:
    """Encodes RGB frames of one size into an MP4 a browser can play.

    Use as a context manager; frames must all be ``height x width x 3`` uint8 with even sides.
    """

    def __init__(
        self,
        path: Path,
        width: int,
        height: int,
        fps: float,
        *,
        crf: int = 23,
        preset: str = "veryfast",
        bitrate: int | None = None,
        rotation: int = 0,
    ) -> None:
        if width % 2 or height % 2:
            raise ValueError(f"H.264 yuv420p needs even sides, got {width}x{height}")
        self._container = av.open(str(path), mode="w", options={"movflags": "+faststart"})
        rate = Fraction(fps).limit_denominator(1001)
        stream = self._container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        options: dict[str, str] = {"preset": preset, "profile": "high"}
        if bitrate:
            stream.bit_rate = bitrate
        else:
            options["crf"] = str(crf)
        stream.options = options  # type: ignore[assignment]
        if rotation:
            stream.set_display_rotation(rotation)
        self._stream = stream
        self.frames = 0

    def write(self, rgb: npt.NDArray[np.uint8]) -> None:
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()

    def __enter__(self) -> H264Writer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self._container.close()
