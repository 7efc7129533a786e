from __future__ import annotations

import cv2
import numpy as np

from cv.tracking import compare_scans, pair_frames, register


def _texture(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.integers(0, 255, (300, 400), dtype=np.uint8), (0, 0), 1.5)
    return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)


def test_a_shifted_view_registers_and_shows_little_change() -> None:
    a = _texture(0)
    m = np.float32([[1, 0, 12], [0, 1, -7]])
    b = cv2.warpAffine(a, m, (400, 300), borderMode=cv2.BORDER_REFLECT)
    r = register(a, b)
    assert r.trustworthy, r.reason
    assert r.inliers >= 25 and r.reprojection_px < 2.0
    assert r.change_score is not None and r.change_score < 0.05


def test_unrelated_images_are_not_trusted() -> None:
    r = register(_texture(1), _texture(2))
    assert not r.trustworthy
    assert r.change_score is None and r.reason


def test_a_flat_image_is_not_trusted() -> None:
    flat = np.full((300, 400, 3), 200, np.uint8)
    r = register(flat, flat)
    assert not r.trustworthy and r.reason == "too few features"


def test_pairs_follow_similarity() -> None:
    cur = np.eye(3, dtype=np.float32)
    prev = np.eye(3, dtype=np.float32)[[2, 0, 1]]
    pairs = pair_frames(cur, prev, 3)
    assert {(p.current, p.previous) for p in pairs} == {(0, 1), (1, 2), (2, 0)}
    assert pair_frames(cur, prev[:0], 3) == []


def test_compare_scans_pairs_and_registers_keyframes() -> None:
    frames = [_texture(i) for i in range(3)]
    emb = np.eye(3, 4, dtype=np.float32)
    result = compare_scans(frames, emb, frames, emb, pairs=3)
    assert result.trusted_pairs == 3
    assert result.mean_similarity == 1.0
    assert result.mean_change is not None and result.mean_change < 0.01
