from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from cv.synthetic import VIEWS, ScanSpec, SyntheticScan, later_scan, render_scan
from cv.tracking.registration import best_frame_per_view, pair_frames, register, render_change_map


def _texture(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.integers(0, 255, (300, 400), dtype=np.uint8), (0, 0), 1.5)
    return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)


def test_a_shifted_view_registers_and_nothing_changed() -> None:
    a = _texture(0)
    m = np.float32([[1, 0, 12], [0, 1, -7]])
    b = cv2.warpAffine(a, m, (400, 300), borderMode=cv2.BORDER_REFLECT)
    r, change_map = register(a, b)
    assert r.trustworthy, r.reason
    assert r.inliers >= 25 and r.reprojection_px < 2.0
    assert r.changed is False and r.change_score is not None and r.change_score < 0.001
    assert change_map is not None and change_map.max() < 0.2


def test_unrelated_images_are_not_trusted() -> None:
    r, change_map = register(_texture(1), _texture(2))
    assert not r.trustworthy and r.reason
    assert r.change_score is None and change_map is None


def test_a_flat_image_is_not_trusted() -> None:
    flat = np.full((300, 400, 3), 200, np.uint8)
    r, _ = register(flat, flat)
    assert not r.trustworthy and r.reason and "features" in r.reason


def test_pairs_follow_similarity() -> None:
    cur = np.eye(3, dtype=np.float32)
    prev = np.eye(3, dtype=np.float32)[[2, 0, 1]]
    pairs = pair_frames(cur, prev, 3)
    assert {(p.current, p.previous) for p in pairs} == {(0, 1), (1, 2), (2, 0)}
    assert pair_frames(cur, prev[:0], 3) == []


def test_best_frame_per_view_prefers_usable_then_sharp() -> None:
    views = ["front", "front", "left", None, "left"]
    best = best_frame_per_view(views, [5, 9, 7, 99, 8], [True, False, True, True, True])
    assert best == {"front": 0, "left": 4}


W, H = 640, 480
CROP_SCALE = W / (int(H * 2 * W / H * 1.3) * 0.8)  # canvas px -> frame px (see synthetic.py)


def _middle_frame_per_view(scan: SyntheticScan) -> dict[str, np.ndarray]:
    with av.open(str(scan.path)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    out = {}
    for view in VIEWS:
        idx = [f.index for f in scan.frames if f.view == view]
        out[view] = frames[idx[len(idx) // 2]]
    return out


@pytest.fixture(scope="module")
def first_visit(tmp_path_factory: pytest.TempPathFactory) -> SyntheticScan:
    return render_scan(
        tmp_path_factory.mktemp("trk") / "a.mp4",
        ScanSpec(width=W, height=H, duration_s=10, fps=15, seed=3),
    )


@pytest.mark.parametrize("shift", [16.0, 30.0, 50.0])
def test_moved_tooth_is_flagged_in_its_view_only(
    first_visit: SyntheticScan, shift: float, tmp_path: Path
) -> None:
    front = [i for i, t in enumerate(first_visit.teeth) if t.view == "front"]
    moved = front[6]  # a tooth in the middle of the front view
    second = render_scan(
        tmp_path / "b.mp4", later_scan(first_visit.spec, {moved: (shift, 0.0)}, seed=5)
    )
    now, before = _middle_frame_per_view(second), _middle_frame_per_view(first_visit)
    for view in VIEWS:
        r, change_map = register(now[view], before[view])
        assert r.trustworthy, (view, r.reason)
        assert r.changed is (view == "front"), (view, r.change_score)
        if view == "front":
            truth = shift * CROP_SCALE
            assert r.displacement_px == pytest.approx(truth, rel=0.3), (truth, r)
            assert change_map is not None
            tinted = render_change_map(now[view], change_map)
            assert tinted.shape == now[view].shape
            assert (tinted[..., 0].astype(int) - now[view][..., 0]).max() > 30  # red where moved
