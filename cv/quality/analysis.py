"""Scan quality: per-frame sharpness and exposure, and the verdict on a whole scan.

Per-frame figures are computed on the luma plane at a fixed analysis width, so they are
comparable across phones and resolutions. The usable-frame test mixes an absolute floor
(a frame that is blurred everywhere is never usable) with a threshold relative to the
scan's own sharpest frames (what counts as sharp depends on the camera).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import overload

import cv2
import numpy as np
import numpy.typing as npt

from cv.errors import Reason, RejectedScan

ANALYSIS_WIDTH = 320
_MOTION_WIDTH = 80


@dataclass(frozen=True, slots=True)
class FrameQuality:
    """Quality figures of one decoded frame."""

    index: int
    time_s: float
    sharpness: float  # variance of the Laplacian of luma at ANALYSIS_WIDTH
    brightness: float  # mean luma, 0..255
    dark_fraction: float  # share of pixels at or below 24 (video black is 16)
    bright_fraction: float  # share of pixels at or above 233 (glare; video white is 235)
    motion: float  # luma change from the previous frame left after aligning it, 0..255


class FrameQualities(Sequence[FrameQuality]):
    """Every decoded frame's figures, stored as numpy columns: 32 bytes a frame where a
    list of FrameQuality objects takes ~270 (a 10-minute scan at 30 fps: 0.6 vs 4.9 MB, held
    for the whole decode). Reads back as FrameQuality; appends grow it chunk by chunk."""

    _CHUNK = 4096
    _FIELDS = ("time_s", "sharpness", "brightness", "dark_fraction", "bright_fraction", "motion")

    def __init__(self) -> None:
        self._chunks: list[npt.NDArray[np.float64]] = []  # each _CHUNK x (index + _FIELDS)
        self._n = 0

    def append(self, q: FrameQuality) -> None:
        row = self._n % self._CHUNK
        if row == 0:
            self._chunks.append(np.empty((self._CHUNK, 1 + len(self._FIELDS)), np.float64))
        chunk = self._chunks[-1]
        chunk[row, 0] = q.index
        for j, name in enumerate(self._FIELDS, 1):
            chunk[row, j] = getattr(q, name)
        self._n += 1

    def __len__(self) -> int:
        return self._n

    def _row(self, i: int) -> FrameQuality:
        r = self._chunks[i // self._CHUNK][i % self._CHUNK]
        return FrameQuality(int(r[0]), *(float(v) for v in r[1:]))

    @overload
    def __getitem__(self, i: int) -> FrameQuality: ...
    @overload
    def __getitem__(self, i: slice) -> list[FrameQuality]: ...
    def __getitem__(self, i: int | slice) -> FrameQuality | list[FrameQuality]:
        if isinstance(i, slice):
            return [self._row(k) for k in range(*i.indices(self._n))]
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError(i)
        return self._row(i)

    def __iter__(self) -> Iterator[FrameQuality]:
        return (self._row(k) for k in range(self._n))


@dataclass(frozen=True)
class QualityThresholds:
    """When a frame, and a scan, is good enough."""

    min_sharpness: float = 20.0
    relative_sharpness: float = 0.20  # of the scan's 90th-percentile sharpness
    min_brightness: float = 40.0
    max_brightness: float = 225.0
    max_dark_fraction: float = 0.60
    max_bright_fraction: float = 0.30
    min_motion: float = 8.0  # a frame is never "fast" below this residual
    relative_motion: float = 2.5  # of the scan's median residual
    min_duration_s: float = 3.0
    min_usable_frames: int = 8
    min_usable_fraction: float = 0.25
    min_time_coverage: float = 0.4


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
    time_coverage: float  # share of the scan's seconds holding a usable frame
    longest_gap_s: float  # longest stretch without a usable frame
    reason: Reason | None = None
    guidance: str | None = None


def analysis_image(luma: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """Luma area-averaged down to ANALYSIS_WIDTH (sensor noise averages out).

    Large frames are halved first: OpenCV's exact-2x area path is fast, and halving then
    area-resizing is still an exact box average, at about half the cost from 1080p.
    """
    h, w = luma.shape
    out_h = max(1, round(h * ANALYSIS_WIDTH / w))
    while w >= 4 * ANALYSIS_WIDTH and w % 2 == 0 and h % 2 == 0:
        luma = np.asarray(
            cv2.resize(luma, (w // 2, h // 2), interpolation=cv2.INTER_AREA), np.uint8
        )
        h, w = luma.shape
    small = cv2.resize(luma, (ANALYSIS_WIDTH, out_h), interpolation=cv2.INTER_AREA)
    return np.asarray(small, np.uint8)


def _residual_motion(prev: npt.NDArray[np.float32], cur: npt.NDArray[np.float32]) -> float:
    """Mean difference left after aligning ``cur`` to ``prev`` by the global shift phase
    correlation finds, on contrast-normalised luma (a change of exposure is not motion).
    A steady pan leaves little; a jump, shake or a new scene leaves a lot."""
    prev = (prev - prev.mean()) / (prev.std() + 1.0) * 40.0
    cur = (cur - cur.mean()) / (cur.std() + 1.0) * 40.0
    (dx, dy), _ = cv2.phaseCorrelate(prev, cur)
    h, w = cur.shape
    shift = np.array([[1, 0, -dx], [0, 1, -dy]], np.float32)
    aligned = cv2.warpAffine(cur, shift, (w, h), borderMode=cv2.BORDER_REFLECT)
    m = max(1, w // 10)
    return float(np.abs(aligned - prev)[m:-m, m:-m].mean())


class LumaAnalyzer:
    """Computes FrameQuality from successive luma planes; keeps one small previous frame."""

    def __init__(self) -> None:
        self._previous: npt.NDArray[np.float32] | None = None

    def measure(self, luma: npt.NDArray[np.uint8], index: int, time_s: float) -> FrameQuality:
        """Measure one frame's luma plane (any size; resized to the analysis width).

        Args:
            luma: 2-D uint8 array, the Y plane.
            index: decode order of the frame.
            time_s: presentation time in seconds.
        Returns:
            The frame's quality figures.
        """
        small = analysis_image(luma)
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
        ).astype(np.float32)
        motion = 0.0
        if self._previous is not None and self._previous.shape == tiny.shape:
            motion = _residual_motion(self._previous, tiny)
        self._previous = tiny
        return FrameQuality(index, time_s, sharpness, brightness, dark, bright, motion)


def sharpness_threshold(qualities: Sequence[FrameQuality], t: QualityThresholds) -> float:
    """The sharpness a frame of this scan needs to count as sharp."""
    if not qualities:
        return t.min_sharpness
    p90 = float(np.percentile([q.sharpness for q in qualities], 90))
    return max(t.min_sharpness, t.relative_sharpness * p90)


class Fault(enum.Flag):
    """What is wrong with a frame. Exposure comes first: a dark or glaring frame also
    measures as unsharp, but more light (or less glare) is what fixes it."""

    NONE = 0
    DARK = enum.auto()
    GLARE = enum.auto()
    BLURRED = enum.auto()
    FAST = enum.auto()


def motion_threshold(qualities: Sequence[FrameQuality], t: QualityThresholds) -> float:
    """The motion residual above which a frame of this scan counts as a jump."""
    if not qualities:
        return t.min_motion
    return max(t.min_motion, t.relative_motion * float(np.median([q.motion for q in qualities])))


@dataclass(frozen=True)
class FrameLimits:
    """A scan's own limits for its frames (relative thresholds resolved)."""

    sharpness: float
    motion: float


def frame_limits(qualities: Sequence[FrameQuality], t: QualityThresholds) -> FrameLimits:
    """Resolve the relative thresholds against this scan's frames."""
    return FrameLimits(sharpness_threshold(qualities, t), motion_threshold(qualities, t))


def frame_faults(q: FrameQuality, limits: FrameLimits, t: QualityThresholds) -> Fault:
    """The faults of one frame on its own: exposure, then sharpness, then motion."""
    fault = Fault.NONE
    if q.brightness < t.min_brightness or q.dark_fraction > t.max_dark_fraction:
        fault |= Fault.DARK
    if q.brightness > t.max_brightness or q.bright_fraction > t.max_bright_fraction:
        fault |= Fault.GLARE
    if not fault and q.sharpness < limits.sharpness:
        fault |= Fault.BLURRED
    if not fault and q.motion > limits.motion:
        fault |= Fault.FAST
    return fault


def scan_faults(
    qualities: Sequence[FrameQuality], limits: FrameLimits, t: QualityThresholds
) -> list[Fault]:
    """The faults of every frame of a scan, in order.

    Motion is measured against the previous frame, so it says nothing when that frame was
    itself dark, glaring or blurred: there it is not counted as a jump.
    """
    out: list[Fault] = []
    previous = Fault.NONE
    for q in qualities:
        fault = frame_faults(q, limits, t)
        if previous & (Fault.DARK | Fault.GLARE | Fault.BLURRED):
            fault &= ~Fault.FAST
        out.append(fault)
        previous = fault
    return out


def time_coverage(
    qualities: Sequence[FrameQuality], usable: Sequence[bool], duration_s: float
) -> tuple[float, float]:
    """Share of the scan's seconds that hold a usable frame, and the longest stretch
    (seconds) without one."""
    if duration_s <= 0 or not qualities:
        return 0.0, duration_s
    bins = max(1, math.ceil(duration_s))
    covered = np.zeros(bins, bool)
    last, gap = 0.0, 0.0
    for q, ok in zip(qualities, usable, strict=True):
        if ok:
            covered[min(bins - 1, int(q.time_s))] = True
            gap = max(gap, q.time_s - last)
            last = q.time_s
    gap = max(gap, duration_s - last) if covered.any() else duration_s
    return float(covered.mean()), float(gap)


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
    limits = frame_limits(qualities, t)
    faults = scan_faults(qualities, limits, t)
    usable = [f == Fault.NONE for f in faults]

    def share(kind: Fault) -> float:
        return float(np.mean([bool(f & kind) for f in faults])) if n else 0.0

    usable_n = sum(usable)
    fraction = usable_n / n if n else 0.0
    coverage, gap = time_coverage(qualities, usable, duration_s)
    blurry, dark, glare, fast = (
        share(k) for k in (Fault.BLURRED, Fault.DARK, Fault.GLARE, Fault.FAST)
    )
    reason: Reason | None = None
    guidance: str | None = None
    if n == 0:
        reason, guidance = Reason.UNREADABLE_VIDEO, "Record the scan again; no frame was read."
    elif duration_s < t.min_duration_s:
        reason = Reason.TOO_SHORT
        guidance = (
            f"The scan lasts {duration_s:.1f} s; record at least {t.min_duration_s:.0f} s, "
            "moving slowly across all teeth."
        )
    elif (
        usable_n < t.min_usable_frames
        or fraction < t.min_usable_fraction
        or coverage < t.min_time_coverage
    ):
        reason = Reason.TOO_FEW_USABLE_FRAMES
        guidance = _guidance(blurry, dark, glare, fast)
    sharp = [q.sharpness for q in qualities] or [0.0]
    return ScanQuality(
        usable=reason is None,
        frames_decoded=n,
        usable_frames=usable_n,
        usable_fraction=fraction,
        duration_s=duration_s,
        median_sharpness=float(np.median(sharp)),
        sharpness_threshold=limits.sharpness,
        mean_brightness=float(np.mean([q.brightness for q in qualities])) if n else 0.0,
        blurry_fraction=blurry,
        dark_fraction=dark,
        glare_fraction=glare,
        fast_motion_fraction=fast,
        time_coverage=coverage,
        longest_gap_s=gap,
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


@dataclass(frozen=True)
class Verdict:
    """A scan judged: its quality and every decoded frame's faults."""

    quality: ScanQuality
    faults: list[Fault]


def judge_scan(
    qualities: Sequence[FrameQuality], duration_s: float, t: QualityThresholds
) -> Verdict:
    """The verdict on a scan and the faults of each of its frames, from their figures.

    Args:
        qualities: one entry per decoded frame, in order.
        duration_s: the video time the frames cover.
        t: the thresholds.

    Returns:
        The scan's quality (usable or the reason not) and one Fault per frame.
    """
    return Verdict(
        assess_scan(qualities, duration_s, t),
        scan_faults(qualities, frame_limits(qualities, t), t),
    )


def raise_if_rejected(quality: ScanQuality) -> None:
    """Turn a rejecting verdict into a RejectedScan with the patient's guidance."""
    if quality.usable or quality.reason is None:
        return
    figures = (
        f"{quality.usable_frames} of {quality.frames_decoded} frames usable "
        f"({quality.usable_fraction:.0%}), {quality.duration_s:.1f} s"
    )
    raise RejectedScan(quality.reason, f"{figures}. {quality.guidance}", guidance=quality.guidance)
