"""The doctor's summary: keyframes chosen to be sharp and diverse, a short H.264 video of
the best frame of each part of the scan with light overlays, and a contact sheet."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from cv.video.encode import H264Writer

RGB = npt.NDArray[np.uint8]
_GREEN, _AMBER = (40, 170, 60), (230, 150, 20)
SUMMARY_FPS = 10.0


@dataclass(frozen=True)
class SummaryFrame:
    """A candidate frame for the summary, with what the overlays show."""

    time_s: float
    sharpness: float
    usable: bool
    view: str | None = None


def choose_segments(frames: Sequence[SummaryFrame], count: int) -> list[int]:
    """Indices of the best frame in each of ``count`` consecutive parts of the scan.

    Frames arrive evenly spaced in time (one per sampling window), so parts of equal frame
    count are parts of equal duration. Usable frames beat unusable ones; then the sharper.
    """
    n = len(frames)
    if n <= count:
        return list(range(n))
    best: dict[int, int] = {}
    for i, f in enumerate(frames):
        seg = i * count // n
        j = best.get(seg)
        if j is None or (f.usable, f.sharpness) > (frames[j].usable, frames[j].sharpness):
            best[seg] = i
    return [best[s] for s in sorted(best)]


def choose_keyframes(
    embeddings: npt.NDArray[np.float32], sharpness: Sequence[float], usable: Sequence[bool], k: int
) -> list[int]:
    """Greedy k-center over embeddings among usable frames, seeded with the sharpest.

    Args:
        embeddings: N x D unit vectors.
        sharpness: per frame.
        usable: per frame; unusable frames are used only if too few are usable.
        k: how many to choose.
    Returns:
        Chosen indices in time order: sharp, and as different from each other as possible.
    """
    pool = [i for i, u in enumerate(usable) if u]
    if len(pool) < k:
        pool = list(range(len(usable)))
    if not pool:
        return []
    # Distances over every frame, frames outside the pool masked: indexing the pool out of
    # the embeddings would copy them (5 KB a kept frame), a peak growing with the scan.
    outside = np.ones(len(usable), bool)
    outside[pool] = False
    sharp = np.zeros(len(usable), np.float64)
    sharp[pool] = [sharpness[i] for i in pool]
    # A small sharpness bonus breaks ties between equally distant candidates.
    bonus = 0.05 * sharp / max(float(sharp.max()), 1e-9)
    chosen = [int(np.argmax(np.where(outside, -np.inf, sharp)))]
    dist = np.where(outside, -np.inf, 1.0 - embeddings @ embeddings[chosen[0]])
    while len(chosen) < min(k, len(pool)):
        nxt = int(np.argmax(dist + bonus * (dist > 0)))
        if dist[nxt] <= 1e-6:
            break
        chosen.append(nxt)
        dist = np.minimum(dist, 1.0 - embeddings @ embeddings[nxt])
    return sorted(chosen)


def _overlay(rgb: RGB, f: SummaryFrame) -> RGB:
    img = rgb.copy()
    h, w = img.shape[:2]
    scale = max(0.4, w / 900)
    thick = max(1, int(round(scale * 2)))
    label = f"{f.time_s:5.1f} s" + (f"  {f.view.replace('_', ' ')}" if f.view else "")
    cv2.putText(
        img,
        label,
        (int(10 * scale), h - int(12 * scale)),
        cv2.FONT_HERSHEY_SIMPLEX,
        scale,
        (255, 255, 255),
        thick + 2,
        cv2.LINE_AA,
    )
    cv2.putText(
        img,
        label,
        (int(10 * scale), h - int(12 * scale)),
        cv2.FONT_HERSHEY_SIMPLEX,
        scale,
        (20, 20, 20),
        thick,
        cv2.LINE_AA,
    )
    r = int(9 * scale) + 2
    cv2.circle(img, (w - 2 * r, 2 * r), r, _GREEN if f.usable else _AMBER, -1, cv2.LINE_AA)
    return img


def _even(rgb: RGB) -> RGB:
    h, w = rgb.shape[:2]
    return rgb[: h - h % 2, : w - w % 2]


def render_summary_video(
    path: Path,
    frames: Sequence[RGB],
    info: Sequence[SummaryFrame],
    *,
    seconds_per_frame: float,
    fps: float = SUMMARY_FPS,
) -> int:
    """Write the summary MP4 (H.264 High, yuv420p, faststart): each frame held for
    ``seconds_per_frame`` with its overlays. Frames are resized to the first one's size.

    Returns:
        Number of video frames written.
    """
    first = _even(frames[0])
    h, w = first.shape[:2]
    repeat = max(1, int(round(seconds_per_frame * fps)))
    with H264Writer(path, w, h, fps, crf=23, preset="veryfast") as writer:
        for rgb, f in zip(frames, info, strict=True):
            if rgb.shape[:2] != (h, w):
                rgb = np.asarray(cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA), np.uint8)
            img = _overlay(_even(rgb), f)
            for _ in range(repeat):
                writer.write(img)
        return writer.frames


def contact_sheet(
    frames: Sequence[RGB], info: Sequence[SummaryFrame], *, columns: int = 4, tile_width: int = 320
) -> RGB:
    """A grid of thumbnails with their overlays, as one RGB image."""
    if not frames:
        raise ValueError("contact sheet needs at least one frame")
    h0, w0 = frames[0].shape[:2]
    tile_h = int(round(tile_width * h0 / w0))
    rows = (len(frames) + columns - 1) // columns
    sheet = np.full((rows * tile_h, columns * tile_width, 3), 24, np.uint8)
    for i, (rgb, f) in enumerate(zip(frames, info, strict=True)):
        small = cv2.resize(rgb, (tile_width, tile_h), interpolation=cv2.INTER_AREA)
        tile = _overlay(np.asarray(small, np.uint8), f)
        r, c = divmod(i, columns)
        sheet[r * tile_h : (r + 1) * tile_h, c * tile_width : (c + 1) * tile_width] = tile
    return sheet
