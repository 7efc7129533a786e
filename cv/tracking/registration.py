"""Comparing a scan with the patient's previous one, view by view.

For each view both scans show, the best frame of each is registered onto the other
(AKAZE features, a RANSAC homography, refined by ECC where it converges). On the aligned
overlap, what differs beyond noise is the change; dense optical flow inside it measures
how far things moved. A registration that cannot be trusted (few inliers, a low inlier
ratio, a large reprojection error: enamel has little texture, glares and is not flat) says
so with a reason instead of reporting noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

RGB = npt.NDArray[np.uint8]
Gray = npt.NDArray[np.uint8]
_WORK_WIDTH = 480  # registration and change are measured at this width


@dataclass(frozen=True)
class RegistrationThresholds:
    min_inliers: int = 25
    min_inlier_ratio: float = 0.25
    max_reprojection_px: float = 4.0
    min_overlap: float = 0.3
    change_luma: float = 30.0  # an aligned pixel differing by more than this has changed
    changed_fraction: float = 0.001  # a view has changed when this share of its overlap has


@dataclass(frozen=True)
class Registration:
    """How well the previous frame maps onto the current one, and what differs once aligned.

    Distances are in pixels of the current frame as given.
    """

    matches: int
    inliers: int
    inlier_ratio: float
    reprojection_px: float
    refined_by_ecc: bool
    trustworthy: bool
    overlap: float  # share of the current frame covered by the warped previous one
    change_score: float | None  # share of the overlap that changed, 0..1
    changed: bool | None
    displacement_px: float | None  # how far the changed parts moved (90th percentile)
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
        current: N x D unit embeddings.
        previous: M x D unit embeddings.
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


def best_frame_per_view(
    views: Sequence[str | None], sharpness: Sequence[float], usable: Sequence[bool]
) -> dict[str, int]:
    """For each view, the sharpest usable frame showing it (any frame if none is usable)."""
    best: dict[str, int] = {}
    for i, view in enumerate(views):
        if view is None:
            continue
        j = best.get(view)
        if j is None or (usable[i], sharpness[i]) > (usable[j], sharpness[j]):
            best[view] = i
    return best


def _gray(rgb: RGB) -> Gray:
    h, w = rgb.shape[:2]
    g = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    if w != _WORK_WIDTH:
        g = cv2.resize(
            g, (_WORK_WIDTH, int(round(h * _WORK_WIDTH / w))), interpolation=cv2.INTER_AREA
        )
    return np.asarray(g, np.uint8)


def _features(g: Gray) -> tuple[list[cv2.KeyPoint], npt.NDArray[np.uint8] | None]:
    detector = cv2.AKAZE_create(threshold=0.0005)
    kp, desc = detector.detectAndCompute(g, None)
    return list(kp), desc


def _refine_ecc(a: Gray, b: Gray, hom: npt.NDArray[np.float64]) -> npt.NDArray[np.float64] | None:
    """ECC refinement of b→a at half size; None when it does not converge."""
    s = 0.5
    scale = np.diag([s, s, 1.0])
    warp = (scale @ hom @ np.linalg.inv(scale)).astype(np.float32)
    small_a = cv2.resize(a, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
    small_b = cv2.resize(b, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
    # ECC maps template coordinates into the input image: template = a, input = b, so it
    # wants the inverse of b→a.
    inv = np.linalg.inv(warp).astype(np.float32)
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 60, 1e-5)
    try:
        _, inv = cv2.findTransformECC(
            small_a, small_b, inv, cv2.MOTION_HOMOGRAPHY, criteria, None, 5
        )
    except cv2.error:
        return None
    refined = np.linalg.inv(scale) @ np.linalg.inv(inv.astype(np.float64)) @ scale
    return np.asarray(refined, np.float64)


class _Untrusted(Exception):
    """A registration that cannot be trusted, with the figures it got so far."""

    def __init__(
        self,
        reason: str,
        matches: int = 0,
        inliers: int = 0,
        ratio: float = 0.0,
        err: float = float("inf"),
        overlap: float = 0.0,
    ) -> None:
        super().__init__(reason)
        self.registration = Registration(
            matches=matches,
            inliers=inliers,
            inlier_ratio=ratio,
            reprojection_px=err,
            refined_by_ecc=False,
            trustworthy=False,
            overlap=overlap,
            change_score=None,
            changed=None,
            displacement_px=None,
            reason=reason,
        )


@dataclass(frozen=True)
class _Fit:
    """A homography from the previous frame's features onto the current one's."""

    homography: npt.NDArray[np.float64]
    matches: int
    inliers: int
    ratio: float
    reprojection_px: float  # in pixels of the current frame as given


def _fit(ga: Gray, gb: Gray, t: RegistrationThresholds, scale_to_a: float) -> _Fit:
    """AKAZE features, ratio-tested matches and a RANSAC homography, each checked against
    the thresholds; raises _Untrusted with the reason and the figures so far."""
    ka, da = _features(ga)
    kb, db = _features(gb)
    if da is None or db is None or len(ka) < 8 or len(kb) < 8:
        raise _Untrusted("too few features: a featureless or blurred view")
    good = [
        p[0]
        for p in cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(db, da, k=2)
        if len(p) == 2 and p[0].distance < 0.8 * p[1].distance
    ]
    if len(good) < 8:
        raise _Untrusted(f"only {len(good)} feature matches", len(good))
    src = np.array([kb[m.queryIdx].pt for m in good], np.float32).reshape(-1, 1, 2)
    dst = np.array([ka[m.trainIdx].pt for m in good], np.float32).reshape(-1, 1, 2)
    hom, mask = cv2.findHomography(src, dst, cv2.RANSAC, 3.0)
    if hom is None:
        raise _Untrusted("no consistent homography", len(good))
    inl = mask.ravel().astype(bool)
    n_in = int(inl.sum())
    ratio = n_in / len(good)
    proj = cv2.perspectiveTransform(src[inl], hom)
    err = float(np.sqrt(((proj - dst[inl]) ** 2).sum(axis=2)).mean()) * scale_to_a
    figures = (len(good), n_in, ratio, err)
    if n_in < t.min_inliers:
        raise _Untrusted(f"only {n_in} inliers (need {t.min_inliers})", *figures)
    if ratio < t.min_inlier_ratio:
        raise _Untrusted(f"inlier ratio {ratio:.2f} below {t.min_inlier_ratio}", *figures)
    if err > t.max_reprojection_px:
        raise _Untrusted(f"reprojection error {err:.1f} px above {t.max_reprojection_px}", *figures)
    return _Fit(np.asarray(hom, np.float64), len(good), n_in, ratio, err)


def register(
    a: RGB, b: RGB, t: RegistrationThresholds | None = None
) -> tuple[Registration, npt.NDArray[np.float32] | None]:
    """Register ``b`` (previous) onto ``a`` (current) and measure what changed.

    Args:
        a: current frame, RGB.
        b: previous frame, RGB (any size; resized to a's aspect).
        t: thresholds.
    Returns:
        The Registration, and a change map (float32, a's size at the working width, 0..1)
        when the registration is trustworthy, else None.
    """
    t = t or RegistrationThresholds()
    scale_to_a = a.shape[1] / _WORK_WIDTH
    ga, gb = _gray(a), _gray(b)
    if gb.shape != ga.shape:
        gb = np.asarray(
            cv2.resize(gb, (ga.shape[1], ga.shape[0]), interpolation=cv2.INTER_AREA), np.uint8
        )
    try:
        fit = _fit(ga, gb, t, scale_to_a)
    except _Untrusted as untrusted:
        return untrusted.registration, None
    refined = _refine_ecc(ga, gb, fit.homography)
    hom = refined if refined is not None else fit.homography
    h, w = ga.shape
    warped = cv2.warpPerspective(gb, hom, (w, h), flags=cv2.INTER_LINEAR)
    valid = cv2.warpPerspective(np.full_like(gb, 255), hom, (w, h), flags=cv2.INTER_NEAREST)
    valid = cv2.erode(valid, np.ones((7, 7), np.uint8)) > 0
    overlap = float(valid.mean())
    if overlap < t.min_overlap:
        figures = (fit.matches, fit.inliers, fit.ratio, fit.reprojection_px, overlap)
        return _Untrusted(f"overlap {overlap:.0%} too small", *figures).registration, None
    sa = cv2.GaussianBlur(ga, (0, 0), 1.5)
    sb = cv2.GaussianBlur(warped, (0, 0), 1.5)
    diff = cv2.absdiff(sa, sb)
    changed_mask = (diff > t.change_luma) & valid
    changed_mask = cv2.morphologyEx(
        changed_mask.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)
    ).astype(bool)
    score = float(changed_mask.sum() / max(1, valid.sum()))
    changed = score > t.changed_fraction
    displacement = None
    if changed:
        displacement = _local_displacement(sa, sb, changed_mask) * scale_to_a
    change_map = np.where(valid, diff.astype(np.float32) / 255.0, 0.0).astype(np.float32)
    registration = Registration(
        matches=fit.matches,
        inliers=fit.inliers,
        inlier_ratio=fit.ratio,
        reprojection_px=fit.reprojection_px,
        refined_by_ecc=refined is not None,
        trustworthy=True,
        overlap=overlap,
        change_score=score,
        changed=changed,
        displacement_px=displacement,
    )
    return registration, change_map


def _local_displacement(current: Gray, previous: Gray, changed: npt.NDArray[np.bool_]) -> float:
    """How far the changed parts moved, in working-width pixels: the median magnitude of
    dense optical flow (DIS) from the aligned previous frame to the current one, over the
    pixels that changed. The global alignment has removed the camera's motion."""
    flow = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM).calc(
        previous, current, None
    )
    magnitude = np.linalg.norm(flow, axis=2)[changed]
    return float(np.median(magnitude)) if magnitude.size else 0.0


def render_change_map(
    current: RGB, change_map: npt.NDArray[np.float32], t: RegistrationThresholds | None = None
) -> RGB:
    """The current frame with what changed since the previous scan tinted red."""
    t = t or RegistrationThresholds()
    h, w = current.shape[:2]
    cm = cv2.resize(change_map, (w, h), interpolation=cv2.INTER_LINEAR)
    strength = np.clip((cm * 255 - t.change_luma / 2) / t.change_luma, 0, 1)[..., None]
    red = np.zeros_like(current)
    red[..., 0] = 255
    out = current.astype(np.float32) * (1 - 0.6 * strength) + red * (0.6 * strength)
    return np.asarray(np.clip(out, 0, 255), np.uint8)
