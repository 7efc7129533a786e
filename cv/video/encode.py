"""Writing MP4 with PyAV: browser-playable H.264 (High profile, yuv420p, faststart) by
default; HEVC and explicit timestamps (variable frame rate) for test footage."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import cast

import av
import numpy as np
import numpy.typing as npt

_MS = Fraction(1, 1000)


class H264Writer:
    """Encodes RGB frames of one size into an MP4 a browser can play.

    Use as a context manager; frames must all be ``height x width x 3`` uint8 with even
    sides. ``codec="libx265"`` writes HEVC instead (phones record it; browsers may not
    play it, so summaries stay H.264). Pass ``time_s`` to ``write`` for variable frame rate.
    PyAV's encoder threads cut every frame into slices, which decoders can share out in a
    way that most real uploads do not allow; ``one_slice`` writes them as phones do.
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
        codec: str = "libx264",
        one_slice: bool = False,
    ) -> None:
        if width % 2 or height % 2:
            raise ValueError(f"yuv420p needs even sides, got {width}x{height}")
        self._container = av.open(str(path), mode="w", options={"movflags": "+faststart"})
        rate = Fraction(fps).limit_denominator(1001)
        stream = cast(av.VideoStream, self._container.add_stream(codec, rate=rate))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        options: dict[str, str] = {"preset": preset}
        if codec == "libx264":
            options["profile"] = "high"
        else:
            options["x265-params"] = "log-level=error"
        if bitrate:
            stream.bit_rate = bitrate
        else:
            options["crf"] = str(crf)
        stream.options = options  # type: ignore[assignment]
        if one_slice:
            # the encoder's frame threads: one slice a frame, as phones and ffmpeg write
            stream.thread_type = "FRAME"
        if rotation:
            stream.set_display_rotation(rotation)
        self._stream = stream
        self._explicit_time = False
        self.frames = 0

    def write(self, rgb: npt.NDArray[np.uint8], time_s: float | None = None) -> None:
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        if time_s is not None:
            if not self._explicit_time:
                self._stream.codec_context.time_base = _MS
                self._explicit_time = True
            frame.pts = int(round(time_s * 1000))
            frame.time_base = _MS
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
