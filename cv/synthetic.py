"""Scan-like synthetic videos whose truth is known: which frames are blurred, dark or
glaring, which view the camera shows, and how far chosen teeth moved in a later scan.

A wide "mouth" canvas holds the standard views side by side (front, left, right, upper
occlusal, lower occlusal); a virtual scope sweeps across it. Seeded and fast: the scene is
drawn once and every frame is a crop of it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from cv.video.encode import H264Writer

VIEWS = ("front", "left", "right", "upper_occlusal", "lower_occlusal")


@dataclass(frozen=True)
class Tooth:
    view: str
    x: float  # centre on the canvas, pixels
    y: float
    w: float
    h: float
    round_: bool  # occlusal views show tooth tops as round shapes


@dataclass(frozen=True)
class ScanSpec:
    """What to render. Frame indices in the sets get the named defect."""

    width: int = 320
    height: int = 240
    fps: float = 15.0
    duration_s: float = 6.0
    seed: int = 0
    blurred: frozenset[int] = frozenset()
    dark: frozenset[int] = frozenset()
    glare: frozenset[int] = frozenset()
    fast: frozenset[int] = frozenset()  # frames where the scope jumps (motion)
    tooth_shifts: Mapping[int, tuple[float, float]] = field(default_factory=dict)
    rotation: int = 0  # display rotation written in the container, like a phone held sideways
    bitrate: int | None = None  # bits per second; None = constant quality
    codec: str = "libx264"  # or "libx265" (HEVC, as many phones record)
    one_slice: bool = False  # one slice a frame, as phones write (cv.video.encode.H264Writer)
    vfr: bool = False  # variable frame rate: intervals alternate 0.5/fps and 1.5/fps
    camera_seed: int | None = None  # another camera path over the same mouth


@dataclass(frozen=True)
class FrameTruth:
    index: int
    time_s: float
    view: str
    blurred: bool
    dark: bool
    glare: bool
    fast: bool


@dataclass(frozen=True)
class SyntheticScan:
    path: Path
    spec: ScanSpec
    frames: tuple[FrameTruth, ...]
    teeth: tuple[Tooth, ...]


def _layout(rng: np.random.Generator, view_w: int, view_h: int) -> list[Tooth]:
    """Teeth per view. The views differ as they do in a mouth: the front is symmetric; the
    side views are mirror images with back teeth growing larger and the arch rising towards
    the back; the lower occlusal arch opens the other way from the upper one."""
    teeth: list[Tooth] = []
    for v, view in enumerate(VIEWS):
        x0 = v * view_w
        n = 7 if view == "front" else 6
        for i in range(n):
            u = i / (n - 1)
            if "occlusal" in view:
                a = np.pi * (0.1 + 0.8 * u)
                cx = x0 + view_w / 2 + 0.36 * view_w * np.cos(a)
                sign = 1.0 if view == "upper_occlusal" else -1.0
                cy = view_h * (0.5 + sign * (0.5 * np.sin(a) - 0.25))
                s = view_h * (0.09 + 0.05 * (1 - abs(2 * u - 1)) + 0.02 * rng.random())
                teeth.append(Tooth(view, cx, cy, s, s, True))
                continue
            back = {"front": 0.5, "left": 1 - u, "right": u}[view]  # 1 at the back teeth
            slope = {"front": 0.0, "left": -0.10, "right": 0.10}[view] * (u - 0.5)
            cx = x0 + view_w * (0.12 + 0.76 * u)
            for row, cy in ((0, 0.33), (1, 0.67)):
                w = view_w / n * (0.62 + 0.32 * back + 0.08 * rng.random())
                h = view_h * (0.24 + 0.04 * rng.random() + 0.03 * back)
                y = view_h * (cy + slope) + (row - 0.5) * 4
                teeth.append(Tooth(view, cx, y, w, h, False))
    return teeth


def _tooth_patch(t: Tooth, seed: int) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32]]:
    """One tooth as an RGB patch and an alpha mask; its texture moves with it."""
    rng = np.random.default_rng(seed)
    w, h = max(4, int(t.w)), max(4, int(t.h))
    shade = np.array((238, 232, 212), np.float32) + rng.integers(-10, 10, 3)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    # enamel is lighter at the incisal edge, darker towards the gum
    gradient = 1.0 - 0.10 * (yy / h) - 0.04 * np.abs(xx / w - 0.5)
    patch = shade[None, None, :] * gradient[..., None]
    grain = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 1.0)
    patch += (grain * 14)[..., None] + rng.integers(-8, 8, (h, w))[..., None]
    mask = np.zeros((h, w), np.float32)
    if t.round_:
        cv2.circle(mask, (w // 2, h // 2), min(w, h) // 2 - 1, 1.0, -1, cv2.LINE_AA)
        cv2.circle(patch, (w // 2, h // 2), min(w, h) // 5, (205, 195, 170), 2, cv2.LINE_AA)
    else:
        r = max(2, min(w, h) // 6)
        cv2.rectangle(mask, (r, 0), (w - 1 - r, h - 1), 1.0, -1)
        cv2.rectangle(mask, (0, r), (w - 1, h - 1 - r), 1.0, -1)
        for cx, cy in ((r, r), (w - 1 - r, r), (r, h - 1 - r), (w - 1 - r, h - 1 - r)):
            cv2.circle(mask, (cx, cy), r, 1.0, -1, cv2.LINE_AA)
    mask = np.asarray(cv2.GaussianBlur(mask, (0, 0), 0.8), np.float32)
    return np.clip(patch, 0, 255).astype(np.uint8), mask


def _render_canvas(
    spec: ScanSpec, teeth: Iterable[Tooth], view_w: int, view_h: int
) -> npt.NDArray[np.uint8]:
    rng = np.random.default_rng(spec.seed + 1)
    cw = view_w * len(VIEWS)
    gum = np.empty((view_h, cw, 3), np.float32)
    gum[:] = (190, 95, 105)  # RGB pink
    # vessel-like texture so the gums have features to register
    noise = cv2.GaussianBlur(rng.normal(0, 1, (view_h, cw)).astype(np.float32), (0, 0), 3)
    gum += (noise * 25)[..., None] + rng.integers(-12, 12, (view_h, cw))[..., None]
    canvas = np.clip(gum, 0, 255)
    for i, t in enumerate(teeth):
        patch, mask = _tooth_patch(t, spec.seed * 1000 + i)
        dx, dy = spec.tooth_shifts.get(i, (0.0, 0.0))
        x0, y0 = (
            int(round(t.x + dx - patch.shape[1] / 2)),
            int(round(t.y + dy - patch.shape[0] / 2)),
        )
        # clip the patch to the canvas
        px0, py0 = max(0, -x0), max(0, -y0)
        x1, y1 = min(cw, x0 + patch.shape[1]), min(view_h, y0 + patch.shape[0])
        x0, y0 = max(0, x0), max(0, y0)
        if x1 <= x0 or y1 <= y0:
            continue
        sub = (slice(py0, py0 + y1 - y0), slice(px0, px0 + x1 - x0))
        m = mask[sub][..., None]
        canvas[y0:y1, x0:x1] = canvas[y0:y1, x0:x1] * (1 - m) + patch[sub] * m
    return np.asarray(canvas, np.uint8)


def _frames(
    spec: ScanSpec, canvas: npt.NDArray[np.uint8], view_w: int
) -> Iterator[tuple[npt.NDArray[np.uint8], FrameTruth]]:
    n = max(1, int(round(spec.duration_s * spec.fps)))
    ch, cw = canvas.shape[:2]
    crop_w = int(view_w * 0.8)
    crop_h = int(ch * 0.8)
    cam = spec.seed if spec.camera_seed is None else spec.camera_seed
    rng = np.random.default_rng(cam + 2)
    phase = 0.0 if spec.camera_seed is None else float(rng.uniform(0, 2 * np.pi))
    for i in range(n):
        u = i / max(1, n - 1)
        x = u * (cw - crop_w)
        y = (ch - crop_h) / 2 + np.sin(u * 12.0 + phase) * (ch - crop_h) / 2.5
        if i in spec.fast:
            # the scope jumps two views away for one frame, and comes back
            x = x + 2 * view_w if x + 2 * view_w <= cw - crop_w else x - 2 * view_w
        xi, yi = int(x), int(np.clip(y, 0, ch - crop_h))
        crop = canvas[yi : yi + crop_h, xi : xi + crop_w]
        frame = cv2.resize(crop, (spec.width, spec.height), interpolation=cv2.INTER_LINEAR)
        if i in spec.blurred:
            k = max(3, (spec.width // 40) | 1)
            frame = cv2.GaussianBlur(frame, (0, 0), k)
        if i in spec.dark:
            frame = (frame * 0.12).astype(np.uint8)
        if i in spec.glare:
            frame = np.clip(frame.astype(np.int16) * 2 + 120, 0, 255).astype(np.uint8)
        view = VIEWS[min(len(VIEWS) - 1, int((xi + crop_w / 2) // view_w))]
        t = i / spec.fps if not spec.vfr else (i // 2) * 2 / spec.fps + (i % 2) * 0.5 / spec.fps
        yield (
            np.asarray(frame, np.uint8),
            FrameTruth(
                i, t, view, i in spec.blurred, i in spec.dark, i in spec.glare, i in spec.fast
            ),
        )


def render_scan(path: Path, spec: ScanSpec) -> SyntheticScan:
    """Render a synthetic scan to an H.264 MP4 at ``path``.

    Args:
        path: where to write the video.
        spec: size, length, defects and tooth movements.
    Returns:
        The path, the spec, the truth of every frame and the teeth drawn.
    """
    view_h = spec.height * 2
    view_w = int(view_h * spec.width / spec.height * 1.3)
    rng = np.random.default_rng(spec.seed)
    teeth = _layout(rng, view_w, view_h)
    canvas = _render_canvas(spec, teeth, view_w, view_h)
    truth: list[FrameTruth] = []
    with H264Writer(
        path,
        spec.width,
        spec.height,
        spec.fps,
        bitrate=spec.bitrate,
        rotation=spec.rotation,
        codec=spec.codec,
        one_slice=spec.one_slice,
    ) as writer:
        for frame, t in _frames(spec, canvas, view_w):
            writer.write(frame, t.time_s if spec.vfr else None)
            truth.append(t)
    return SyntheticScan(path, spec, tuple(truth), tuple(teeth))


def later_scan(spec: ScanSpec, shifts: Mapping[int, tuple[float, float]], seed: int) -> ScanSpec:
    """The same mouth scanned again: teeth ``shifts`` (tooth index -> canvas pixels) moved,
    and another camera path (``seed``); the mouth itself (``spec.seed``) is unchanged."""
    return replace(spec, tooth_shifts=dict(shifts), camera_seed=seed)
