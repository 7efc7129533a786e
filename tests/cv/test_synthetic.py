"""cv.synthetic: the truth a rendered scan reports is what the video holds. Small scans are
rendered by the real H.264 writer and decoded back with PyAV: frame count and times, which
frames are blurred, dark or glaring, the views the sweep passes through, and a later scan
whose teeth moved by known offsets (checked on the rendered mouth itself)."""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from cv.synthetic import (
    VIEWS,
    ScanSpec,
    SyntheticScan,
    _layout,
    _render_canvas,
    later_scan,
    render_scan,
)

W, H = 96, 64  # small: the scans below render and decode in a few tens of milliseconds


def _decode(path: Path) -> tuple[list[np.ndarray], list[float]]:
    with av.open(str(path)) as c:
        frames = list(c.decode(video=0))
    return [f.to_ndarray(format="rgb24") for f in frames], [float(f.time) for f in frames]


def _sharpness(rgb: np.ndarray) -> float:
    return float(cv2.Laplacian(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var())


@pytest.fixture(scope="module")
def defects(tmp_path_factory: pytest.TempPathFactory) -> SyntheticScan:
    spec = ScanSpec(
        width=W,
        height=H,
        fps=10.0,
        duration_s=3.0,
        seed=3,
        blurred=frozenset({5, 6}),
        dark=frozenset({10}),
        glare=frozenset({20}),
        fast=frozenset({25}),
    )
    return render_scan(tmp_path_factory.mktemp("synthetic") / "defects.mp4", spec)


def test_the_truth_has_one_entry_per_frame_of_the_video(defects: SyntheticScan) -> None:
    frames, times = _decode(defects.path)
    assert len(defects.frames) == len(frames) == 30
    assert [t.index for t in defects.frames] == list(range(30))
    assert [t.time_s for t in defects.frames] == pytest.approx([i / 10 for i in range(30)])
    assert times == pytest.approx([t.time_s for t in defects.frames], abs=1e-3)
    assert all(f.shape == (H, W, 3) for f in frames)


def test_the_defect_flags_are_the_frames_the_spec_names(defects: SyntheticScan) -> None:
    flagged = {
        kind: {t.index for t in defects.frames if getattr(t, kind)}
        for kind in ("blurred", "dark", "glare", "fast")
    }
    assert flagged == {"blurred": {5, 6}, "dark": {10}, "glare": {20}, "fast": {25}}


def test_the_flagged_frames_look_blurred_dark_or_glaring(defects: SyntheticScan) -> None:
    frames, _ = _decode(defects.path)
    sharp = [_sharpness(frames[i]) for i in (3, 4, 7, 8)]
    assert max(_sharpness(frames[i]) for i in (5, 6)) < 0.2 * min(sharp)
    brightness = [float(f.mean()) for f in frames]
    assert brightness[10] < 0.3 * min(brightness[9], brightness[11])
    assert brightness[20] > 1.2 * max(brightness[19], brightness[21])
    assert brightness[20] > 200


def test_the_sweep_passes_through_every_view_in_order(defects: SyntheticScan) -> None:
    steady = [VIEWS.index(t.view) for t in defects.frames if not t.fast]
    assert steady == sorted(steady)
    assert set(steady) == set(range(len(VIEWS)))
    # the frame where the scope jumps (two views away) shows none of its neighbours' views
    jump = VIEWS.index(defects.frames[25].view)
    before, after = VIEWS.index(defects.frames[24].view), VIEWS.index(defects.frames[26].view)
    assert not before <= jump <= after


def test_rendering_is_seeded(tmp_path: Path) -> None:
    # at a generous bitrate, so that x264's threaded rate control (which makes the bytes of
    # two encodes differ a little at constant quality) does not blur the comparison
    spec = ScanSpec(width=W, height=H, fps=5.0, duration_s=1.0, seed=7, bitrate=4_000_000)
    a, _ = _decode(render_scan(tmp_path / "a.mp4", spec).path)
    b, _ = _decode(render_scan(tmp_path / "b.mp4", spec).path)
    c, _ = _decode(render_scan(tmp_path / "c.mp4", ScanSpec(**{**vars(spec), "seed": 8})).path)
    same = [np.abs(x.astype(int) - y.astype(int)).mean() for x, y in zip(a, b, strict=True)]
    other = [np.abs(x.astype(int) - y.astype(int)).mean() for x, y in zip(a, c, strict=True)]
    assert max(same) < 0.5 and min(other) > 3


def test_variable_frame_rate_alternates_short_and_long_intervals(tmp_path: Path) -> None:
    scan = render_scan(
        tmp_path / "vfr.mp4", ScanSpec(width=W, height=H, fps=10.0, duration_s=1.0, vfr=True)
    )
    truth = [t.time_s for t in scan.frames]
    assert np.diff(truth) == pytest.approx([0.05, 0.15] * 4 + [0.05])
    _, times = _decode(scan.path)
    assert times == pytest.approx(truth, abs=1e-3)


def test_later_scan_keeps_the_mouth_and_moves_the_camera() -> None:
    first = ScanSpec(width=W, height=H, seed=4, dark=frozenset({3}))
    later = later_scan(first, {6: (5.0, -3.0)}, seed=11)
    assert later.seed == first.seed and later.camera_seed == 11
    assert later.tooth_shifts == {6: (5.0, -3.0)} and later.dark == first.dark
    assert first.tooth_shifts == {} and first.camera_seed is None


def test_a_later_scan_moves_the_chosen_tooth_by_its_offset_and_nothing_else() -> None:
    """On the mouth the camera sweeps: the tooth's pixels reappear shifted by the offset,
    and every pixel outside the old and new places of that tooth is unchanged."""
    first = ScanSpec(width=W, height=H, seed=3)
    tooth, (dx, dy) = 4, (6, -3)
    later = later_scan(first, {tooth: (float(dx), float(dy))}, seed=9)
    view_h = H * 2
    view_w = int(view_h * W / H * 1.3)
    teeth = _layout(np.random.default_rng(first.seed), view_w, view_h)
    before = _render_canvas(first, teeth, view_w, view_h).astype(int)
    after = _render_canvas(later, teeth, view_w, view_h).astype(int)

    t = teeth[tooth]
    x0, x1 = round(t.x - t.w / 4), round(t.x + t.w / 4)  # the tooth's middle: only it there
    y0, y1 = round(t.y - t.h / 4), round(t.y + t.h / 4)
    moved = after[y0 + dy : y1 + dy, x0 + dx : x1 + dx]
    assert np.abs(moved - before[y0:y1, x0:x1]).max() <= 1
    assert np.abs(after[y0:y1, x0:x1] - before[y0:y1, x0:x1]).mean() > 5  # it did move

    changed = np.argwhere(np.abs(after - before).max(axis=2) > 0)
    ys, xs = changed[:, 0], changed[:, 1]
    margin = 3  # the anti-aliased edge
    assert xs.min() >= t.x - t.w / 2 - margin and xs.max() <= t.x + t.w / 2 + dx + margin
    assert ys.min() >= t.y - t.h / 2 + dy - margin and ys.max() <= t.y + t.h / 2 + margin


def test_a_later_scan_reports_the_same_teeth_and_frame_count(tmp_path: Path) -> None:
    first = ScanSpec(width=W, height=H, fps=5.0, duration_s=2.0, seed=2)
    a = render_scan(tmp_path / "a.mp4", first)
    b = render_scan(tmp_path / "b.mp4", later_scan(first, {0: (4.0, 0.0)}, seed=5))
    assert a.teeth == b.teeth and len(a.teeth) == 7 * 2 + 6 * 2 * 2 + 6 * 2
    assert len(a.frames) == len(b.frames) == 10
    # another camera path over the same mouth: the frames differ
    fa, _ = _decode(a.path)
    fb, _ = _decode(b.path)
    assert not np.array_equal(fa[3], fb[3])
