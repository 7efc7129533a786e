"""Per-run options of process-scan (a flow parameter: the Prefect UI renders its form)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from cv.quality.analysis import QualityThresholds
from cv.video.frames import VideoLimits

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class Limits(BaseModel):
    """Bounds a scan must meet before it is decoded.

    A run may tighten or loosen them, but never past the ceilings below: they are what keeps
    a hostile file (a decompression bomb) from taking the worker's memory or time.
    """

    model_config = ConfigDict(extra="forbid")

    max_bytes: int = Field(
        1_000_000_000, gt=0, le=4_000_000_000, description="Largest upload, in bytes."
    )
    max_duration_s: float = Field(600.0, gt=0, le=3600, description="Longest scan, in seconds.")
    min_duration_s: float = Field(3.0, ge=0, description="Shortest scan, in seconds.")
    max_pixels: int = Field(
        3840 * 2160, gt=0, le=7680 * 4320, description="Most pixels per frame (4K)."
    )
    min_pixels: int = Field(160 * 120, gt=0, description="Fewest pixels per frame.")
    max_fps: float = Field(240.0, gt=0, le=480, description="Highest frame rate.")

    def video_limits(self) -> VideoLimits:
        return VideoLimits(
            self.max_bytes, self.max_duration_s, self.max_pixels, self.min_pixels, self.max_fps
        )


class ModelRef(BaseModel):
    """Which model package to run; empty means the production model (a Prefect Variable)."""

    model_config = ConfigDict(extra="forbid")

    uri: str | None = Field(
        None, description="file:// or s3:// URI of a model package (.zip); empty: production."
    )
    name: str | None = Field(None, description="If given, the package must have this name.")
    version: str | None = Field(None, description="If given, the package must have this version.")
    sha256: str | None = Field(
        None, pattern=r"^[0-9a-f]{64}$", description="sha256 of the package; required with uri."
    )


class ScanOptions(BaseModel):
    """How to process one scan."""

    model_config = ConfigDict(extra="forbid")

    sample_fps: float = Field(2.0, gt=0, le=30, description="Frames kept per second of video.")
    max_side: int = Field(640, ge=64, le=2160, description="Longest side of kept frames.")
    summary_max_s: float = Field(20.0, gt=0, le=60, description="Length of the summary video.")
    keyframes: int = Field(12, ge=1, le=64, description="Keyframes chosen for the doctor.")
    batch_size: int = Field(16, ge=1, le=512, description="Frames per model forward pass.")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps.")
    min_usable_frames: int = Field(8, ge=1, description="Fewest usable frames to accept a scan.")
    decode: Literal["reference", "all"] = Field(
        "reference",
        description=(
            "reference: at 24 fps and above, skip the frames no other frame refers to "
            "(non-reference B-frames; ~1/4 less decoding); all: decode and measure every frame."
        ),
    )
    limits: Limits = Field(default_factory=Limits)
    model: ModelRef = Field(default_factory=ModelRef)

    def thresholds(self) -> QualityThresholds:
        return QualityThresholds(
            min_duration_s=self.limits.min_duration_s, min_usable_frames=self.min_usable_frames
        )
