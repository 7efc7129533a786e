"""Scan quality: per-frame sharpness and exposure, and the verdict on a whole scan.

Per-frame figures are computed on the luma plane at a fixed analysis width, so they are
comparable across phones and resolutions. The usable-frame test mixes an absolute floor
(a frame that is blurred everywhere is never usable) with a threshold relative to the
scan's own sharpest frames (what counts as sharp depends on the camera).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from cv.errors import Reason, RejectedScan

ANALYSIS_WIDTH = 320
_MOTION_WIDTH = 64


@dataclass(frozen=True)
class FrameQuality:
    """Quality figures of one decoded frame."""

    index: int
    time_s: float
    sharpness: float  # variance of the Laplacian of luma at ANALYSIS_WIDTH
    brightness: float  # mean luma, 0..255
    dark_fraction: float  # share of pixels at or below 24 (video black is 16)
    bright_fraction: float  # share of pixels at or above 233 (glare; video white is 235)
    motion: float  # mean absolute luma change from the previous frame, 0..255


@dataclass(frozen=True)
class QualityThresholds:
    """When a frame, and a scan, is good enough."""

    min_sharpness: float = 20.0
    relative_sharpness: float = 0.30  # of the scan's 90th-percentile sharpness
    min_brightness: float = 40.0
    max_brightness: float = 225.0
    max_dark_fraction: float = 0.60
    max_bright_fraction: float = 0.30
    max_motion: float = 40.0
    min_duration_s: float = 3.0
    min_usable_frames: int = 8
    min_usable_fraction: float = 0.25


@dataclass(frozen=True)
class ScanQuality:
    """The verdict on a scan, with the figures behind it."""

    usable: bool
    frames_decoded: int
    usable_frames: int
    usable_fraction: float
    duration_s: float
    median_sharpness: float
    sharpness_threshold: float
    mean_brightness: float
    blurry_fraction: float
    dark_fraction: float
    glare_fraction: float
    fast_motion_fraction: float
    reason: Reason | None = None
    guidance: str | None = None


class LumaAnalyzer:
    """Computes FrameQuality from successive luma planes; keeps one small previous frame."""

    def __init__(self) -> None:
        self._previous: npt.NDArray[np.uint8] | None = None

    def measure(self, luma: npt.NDArray[np.uint8], index: int, time_s: float) -> FrameQuality:
        """Measure one frame's luma plane (any size; resized to the analysis width).

        Args:
            luma: 2-D uint8 array, the Y plane.
            index: decode order of the frame.
            time_s: presentation time in seconds.
        Returns:
            The frame's quality figures.
        """
        h, w = luma.shape
        scale = ANALYSIS_WIDTH / w
        small = cv2.resize(
            luma, (ANALYSIS_WIDTH, max(1, round(h * scale))), interpolation=cv2.INTER_AREA
        )
        lap = cv2.Laplacian(small, cv2.CV_32F)
        sharpness = float(lap.var())
        hist = np.bincount(small.ravel(), minlength=256)
        n = float(small.size)
        brightness = float(np.dot(hist, np.arange(256)) / n)
        dark = float(hist[:25].sum() / n)
        bright = float(hist[233:].sum() / n)
        tiny = cv2.resize(
            small,
            (_MOTION_WIDTH, max(1, round(small.shape[0] * _MOTION_WIDTH / ANALYSIS_WIDTH))),
            interpolation=cv2.INTER_AREA,
        )
        if self._previous is None or self._previous.shape != tiny.shape:
            motion = 0.0
        else:
            motion = float(cv2.absdiff(tiny, self._previous).mean())
        self._previous = np.asarray(tiny, np.uint8)
        return FrameQuality(index, time_s, sharpness, brightness, dark, bright, motion)


def sharpness_threshold(qualities: Sequence[FrameQuality], t: QualityThresholds) -> float:
    """The sharpness a frame of this scan needs to count as sharp."""
    if not qualities:
        return t.min_sharpness
    p90 = float(np.percentile([q.sharpness for q in qualities], 90))
    return max(t.min_sharpness, t.relative_sharpness * p90)


def is_usable(q: FrameQuality, threshold: float, t: QualityThresholds) -> bool:
    """Whether a frame is sharp, well exposed and steady enough to show the doctor."""
    return (
        q.sharpness >= threshold
        and t.min_brightness <= q.brightness <= t.max_brightness
        and q.dark_fraction <= t.max_dark_fraction
        and q.bright_fraction <= t.max_bright_fraction
        and q.motion <= t.max_motion
    )


def assess_scan(
    qualities: Sequence[FrameQuality], duration_s: float, t: QualityThresholds
) -> ScanQuality:
    """Judge a whole scan from the quality of its decoded frames.

    Args:
        qualities: one entry per decoded frame, in order.
        duration_s: the scan's decoded duration.
        t: thresholds.
    Returns:
        ScanQuality; ``usable`` is False with a reason and patient guidance otherwise.
    """
    n = len(qualities)
    thr = sharpness_threshold(qualities, t)
    if n == 0:
        return ScanQuality(
            False,
            0,
            0,
            0.0,
            duration_s,
            0.0,
            thr,
            0.0,
            0.0,
            0.0,
            0.0,
            0.0,
            Reason.UNREADABLE_VIDEO,
            "Record the scan again; no frame could be read.",
        )
    sharp = np.array([q.sharpness for q in qualities])
    bright = np.array([q.brightness for q in qualities])
    blurry = float((sharp < thr).mean())
    dark = float(
        np.mean(
            [
                q.brightness < t.min_brightness or q.dark_fraction > t.max_dark_fraction
                for q in qualities
            ]
        )
    )
    glare = float(
        np.mean(
            [
                q.brightness > t.max_brightness or q.bright_fraction > t.max_bright_fraction
                for q in qualities
            ]
        )
    )
    fast = float(np.mean([q.motion > t.max_motion for q in qualities]))
    usable_n = sum(is_usable(q, thr, t) for q in qualities)
    fraction = usable_n / n
    reason: Reason | None = None
    guidance: str | None = None
    if duration_s < t.min_duration_s:
        reason = Reason.TOO_SHORT
        guidance = (
            f"The scan lasts {duration_s:.1f} s; record at least {t.min_duration_s:.0f} s, "
            "moving slowly across all teeth."
        )
    elif usable_n < t.min_usable_frames or fraction < t.min_usable_fraction:
        reason = Reason.TOO_FEW_USABLE_FRAMES
        guidance = _guidance(blurry, dark, glare, fast)
    return ScanQuality(
        usable=reason is None,
        frames_decoded=n,
        usable_frames=usable_n,
        usable_fraction=fraction,
        duration_s=duration_s,
        median_sharpness=float(np.median(sharp)),
        sharpness_threshold=thr,
        mean_brightness=float(bright.mean()),
        blurry_fraction=blurry,
        dark_fraction=dark,
        glare_fraction=glare,
        fast_motion_fraction=fast,
        reason=reason,
        guidance=guidance,
    )


def _guidance(blurry: float, dark: float, glare: float, fast: float) -> str:
    """Advice a patient can follow, for the dominant problem first."""
    problems = sorted(
        [
            (fast, "move the scope more slowly"),
            (blurry, "hold the scope closer and steady so the teeth are in focus"),
            (dark, "add more light"),
            (glare, "reduce glare: dry the teeth and avoid pointing the light straight at them"),
        ],
        reverse=True,
    )
    tips = [tip for share, tip in problems if share > 0.2] or [problems[0][1]]
    return "Please scan again and " + "; ".join(tips) + "."


def raise_if_rejected(quality: ScanQuality) -> None:
    """Turn a rejecting verdict into a RejectedScan with the patient's guidance."""
    if quality.usable or quality.reason is None:
        return
    figures = (
        f"{quality.usable_frames} of {quality.frames_decoded} frames usable "
        f"({quality.usable_fraction:.0%}), {quality.duration_s:.1f} s"
    )
    raise RejectedScan(quality.reason, f"{figures}. {quality.guidance}", guidance=quality.guidance)
