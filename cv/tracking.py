"""Comparing a scan with the patient's previous one.

Frames of the two scans are paired by embedding similarity (the same part of the mouth
looks alike to the backbone), each pair is registered with ORB features and a RANSAC
homography, and the aligned overlap gives a change score. A pair whose registration is not
trustworthy says so, with a reason, instead of reporting noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

RGB = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class RegistrationThresholds:
    min_inliers: int = 25
    min_inlier_ratio: float = 0.25
    max_reprojection_px: float = 4.0


@dataclass(frozen=True)
class Registration:
    """How well frame B maps onto frame A, and how much differs once aligned."""

    matches: int
    inliers: int
    inlier_ratio: float
    reprojection_px: float
    trustworthy: bool
    change_score: float | None  # mean absolute luma difference on the overlap, 0..1
    overlap: float  # share of A covered by warped B
    reason: str | None = None


@dataclass(frozen=True)
class FramePair:
    current: int
    previous: int
    similarity: float


def pair_frames(
    current: npt.NDArray[np.float32], previous: npt.NDArray[np.float32], count: int
) -> list[FramePair]:
    """The ``count`` most similar (current, previous) pairs, each current frame used once.

    Args:
        current: N x D unit embeddings of the current scan's keyframes.
        previous: M x D unit embeddings of the previous scan's keyframes.
        count: most pairs to return.
    Returns:
        Pairs sorted by descending cosine similarity.
    """
    if len(current) == 0 or len(previous) == 0:
        return []
    sim = current @ previous.T
    best = sim.argmax(axis=1)
    pairs = [FramePair(i, int(best[i]), float(sim[i, best[i]])) for i in range(len(current))]
    return sorted(pairs, key=lambda p: -p.similarity)[:count]


def _gray(rgb: RGB, width: int = 480) -> npt.NDArray[np.uint8]:
    h, w = rgb.shape[:2]
    g = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    if w != width:
        g = cv2.resize(g, (width, int(round(h * width / w))), interpolation=cv2.INTER_AREA)
    return np.asarray(g, np.uint8)


def register(a: RGB, b: RGB, t: RegistrationThresholds | None = None) -> Registration:
    """Register ``b`` onto ``a`` (ORB + RANSAC homography) and score their difference.

    Args:
        a: reference frame (current scan), RGB.
        b: frame to align (previous scan), RGB.
        t: when a registration is trustworthy.
    Returns:
        Registration; ``change_score`` is None when the alignment cannot be trusted.
    """
    t = t or RegistrationThresholds()
    ga, gb = _gray(a), _gray(b)
    if gb.shape != ga.shape:
        gb = np.asarray(
            cv2.resize(gb, (ga.shape[1], ga.shape[0]), interpolation=cv2.INTER_AREA), np.uint8
        )
    orb = cv2.ORB_create(nfeatures=1500)  # type: ignore[attr-defined]
    ka, da = orb.detectAndCompute(ga, None)
    kb, db = orb.detectAndCompute(gb, None)
    if da is None or db is None or len(ka) < 8 or len(kb) < 8:
        return Registration(0, 0, 0.0, float("inf"), False, None, 0.0, "too few features")
    matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
    good = []
    for pair in matcher.knnMatch(db, da, k=2):
        if len(pair) == 2 and pair[0].distance < 0.8 * pair[1].distance:
            good.append(pair[0])
    if len(good) < 8:
        return Registration(len(good), 0, 0.0, float("inf"), False, None, 0.0, "too few matches")
    src = np.array([kb[m.queryIdx].pt for m in good], np.float32).reshape(-1, 1, 2)
    dst = np.array([ka[m.trainIdx].pt for m in good], np.float32).reshape(-1, 1, 2)
    hom, mask = cv2.findHomography(src, dst, cv2.RANSAC, 3.0)
    if hom is None:
        return Registration(len(good), 0, 0.0, float("inf"), False, None, 0.0, "no homography")
    inl = mask.ravel().astype(bool)
    n_in = int(inl.sum())
    proj = cv2.perspectiveTransform(src[inl], hom)
    err = float(np.sqrt(((proj - dst[inl]) ** 2).sum(axis=2)).mean()) if n_in else float("inf")
    ratio = n_in / len(good)
    reason = None
    if n_in < t.min_inliers:
        reason = f"only {n_in} inliers (need {t.min_inliers})"
    elif ratio < t.min_inlier_ratio:
        reason = f"inlier ratio {ratio:.2f} below {t.min_inlier_ratio}"
    elif err > t.max_reprojection_px:
        reason = f"reprojection error {err:.1f} px above {t.max_reprojection_px}"
    h, w = ga.shape
    warped = cv2.warpPerspective(gb, hom, (w, h))
    valid = cv2.warpPerspective(np.full_like(gb, 255), hom, (w, h)) > 0
    overlap = float(valid.mean())
    change = None
    if reason is None and overlap > 0.2:
        diff = cv2.absdiff(ga, warped).astype(np.float32) / 255.0
        change = float(diff[valid].mean())
    elif reason is None:
        reason = f"overlap {overlap:.0%} too small"
    return Registration(len(good), n_in, ratio, err, reason is None, change, overlap, reason)


@dataclass(frozen=True)
class ScanComparison:
    pairs: tuple[tuple[FramePair, Registration], ...]
    mean_similarity: float
    trusted_pairs: int
    mean_change: float | None


def compare_scans(
    current_frames: Sequence[RGB],
    current_emb: npt.NDArray[np.float32],
    previous_frames: Sequence[RGB],
    previous_emb: npt.NDArray[np.float32],
    pairs: int = 5,
) -> ScanComparison:
    """Pair the two scans' keyframes and register each pair.

    Returns:
        Per pair: similarity and registration; overall: mean similarity and mean change
        over the trustworthy pairs (None when none is trustworthy).
    """
    chosen = pair_frames(current_emb, previous_emb, pairs)
    regs = tuple(
        (p, register(current_frames[p.current], previous_frames[p.previous])) for p in chosen
    )
    trusted = [r.change_score for _, r in regs if r.change_score is not None]
    return ScanComparison(
        pairs=regs,
        mean_similarity=float(np.mean([p.similarity for p in chosen])) if chosen else 0.0,
        trusted_pairs=len(trusted),
        mean_change=float(np.mean(trusted)) if trusted else None,
    )
