from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cv.errors import Reason, RejectedScan
from cv.quality.analysis import (
    Fault,
    FrameQuality,
    QualityThresholds,
    assess_scan,
    frame_limits,
    raise_if_rejected,
    scan_faults,
    time_coverage,
)
from cv.synthetic import ScanSpec, SyntheticScan, render_scan
from cv.video.frames import VideoLimits, decoded_duration, probe_video, sample_frames


def _qualities(path: Path) -> tuple[list[FrameQuality], float]:
    info = probe_video(path, VideoLimits())
    q = sample_frames(
        path, info, VideoLimits(), sample_fps=2, max_side=320, on_frame=lambda f: None
    ).qualities
    return q, decoded_duration(q, info.fps)


def _runs(rng: np.random.Generator, n: int, count: int, length: int) -> frozenset[int]:
    out: set[int] = set()
    for start in rng.choice(np.arange(10, n - length - 10), count, replace=False):
        out |= set(range(int(start), int(start) + length))
    return frozenset(out)


def _precision_recall(pred: list[bool], truth: list[bool]) -> tuple[float, float]:
    tp = sum(p and t for p, t in zip(pred, truth, strict=True))
    return tp / max(1, sum(pred)), tp / max(1, sum(truth))


@pytest.fixture(scope="module", params=[(320, 240), (1280, 720)], ids=["320x240", "1280x720"])
def faulty_scan(request: pytest.FixtureRequest, scans_dir: Path) -> SyntheticScan:
    """20 s with runs of blurred, dark, glaring and jumping frames at known places."""
    w, h = request.param
    rng = np.random.default_rng(w)
    n = 300
    blurred = _runs(rng, n, 4, 8)
    dark = _runs(rng, n, 3, 6) - blurred
    glare = _runs(rng, n, 3, 6) - blurred - dark
    fast = frozenset(int(i) for i in rng.choice(n - 20, 5, replace=False) + 10) - blurred
    fast -= dark | glare
    return render_scan(
        scans_dir / f"faulty-{w}.mp4",
        ScanSpec(
            width=w,
            height=h,
            duration_s=20,
            fps=15,
            seed=2,
            blurred=blurred,
            dark=dark,
            glare=glare,
            fast=fast,
        ),
    )


def test_detectors_score_against_the_truth(faulty_scan: SyntheticScan) -> None:
    q, _ = _qualities(faulty_scan.path)
    t = QualityThresholds()
    limits = frame_limits(q, t)
    faults = scan_faults(q, limits, t)
    truth = faulty_scan.frames
    for kind, attr in ((Fault.BLURRED, "blurred"), (Fault.DARK, "dark"), (Fault.GLARE, "glare")):
        p, r = _precision_recall(
            [bool(f & kind) for f in faults], [getattr(f, attr) for f in truth]
        )
        assert p >= 0.95 and r >= 0.95, (kind, p, r)
    # a jump shows as motion on the frame that jumps and on the one that jumps back
    fast_pred = [bool(f & Fault.FAST) for f in faults]
    near = {i + d for i, f in enumerate(truth) if f.fast for d in (0, 1)}
    assert all(fast_pred[i] for i, f in enumerate(truth) if f.fast)
    assert sum(fast_pred[i] for i in near) / max(1, sum(fast_pred)) >= 0.95


def test_good_scan_is_usable(good_scan: SyntheticScan) -> None:
    q, duration = _qualities(good_scan.path)
    verdict = assess_scan(q, duration, QualityThresholds())
    assert verdict.usable and verdict.reason is None
    assert verdict.frames_decoded == 90
    assert 0.7 < verdict.usable_fraction < 0.95  # 18 of 90 frames were damaged on purpose
    assert verdict.time_coverage == 1.0 and verdict.longest_gap_s < 1.5
    raise_if_rejected(verdict)


def test_blurred_scan_is_rejected_with_guidance(scans_dir: Path) -> None:
    scan = render_scan(
        scans_dir / "blurry.mp4", ScanSpec(duration_s=5, seed=3, blurred=frozenset(range(0, 64)))
    )
    q, duration = _qualities(scan.path)
    verdict = assess_scan(q, duration, QualityThresholds())
    assert not verdict.usable
    assert verdict.reason is Reason.TOO_FEW_USABLE_FRAMES
    assert "closer" in (verdict.guidance or "")
    with pytest.raises(RejectedScan) as err:
        raise_if_rejected(verdict)
    assert err.value.reason is Reason.TOO_FEW_USABLE_FRAMES
    assert "usable" in err.value.message


def test_dark_scan_asks_for_light(scans_dir: Path) -> None:
    scan = render_scan(
        scans_dir / "dark.mp4", ScanSpec(duration_s=5, seed=4, dark=frozenset(range(0, 75)))
    )
    q, duration = _qualities(scan.path)
    verdict = assess_scan(q, duration, QualityThresholds())
    assert verdict.reason is Reason.TOO_FEW_USABLE_FRAMES
    assert "light" in (verdict.guidance or "")


def test_glaring_scan_asks_to_reduce_glare(scans_dir: Path) -> None:
    scan = render_scan(
        scans_dir / "glare.mp4", ScanSpec(duration_s=5, seed=6, glare=frozenset(range(0, 75)))
    )
    q, duration = _qualities(scan.path)
    verdict = assess_scan(q, duration, QualityThresholds())
    assert verdict.reason is Reason.TOO_FEW_USABLE_FRAMES
    assert "glare" in (verdict.guidance or "")


def test_half_a_scan_lost_is_rejected_for_coverage(scans_dir: Path) -> None:
    # usable frames are plentiful, but the second half of the scan shows nothing usable
    scan = render_scan(
        scans_dir / "half.mp4", ScanSpec(duration_s=10, seed=8, blurred=frozenset(range(40, 150)))
    )
    q, duration = _qualities(scan.path)
    verdict = assess_scan(q, duration, QualityThresholds())
    assert verdict.usable_fraction >= QualityThresholds().min_usable_fraction
    assert verdict.time_coverage < 0.5 and verdict.longest_gap_s > 5
    assert verdict.reason is Reason.TOO_FEW_USABLE_FRAMES


def test_short_scan_is_too_short(scans_dir: Path) -> None:
    scan = render_scan(scans_dir / "short.mp4", ScanSpec(duration_s=1.0, seed=5))
    q, duration = _qualities(scan.path)
    verdict = assess_scan(q, duration, QualityThresholds())
    assert verdict.reason is Reason.TOO_SHORT
    assert "1.0 s" in (verdict.guidance or "")


def test_time_coverage_counts_seconds_with_a_usable_frame() -> None:
    qs = [FrameQuality(i, i * 0.5, 100, 128, 0, 0, 0) for i in range(10)]  # 5 s
    usable = [True, True, False, False, False, False, True, False, False, False]
    coverage, gap = time_coverage(qs, usable, 5.0)
    assert coverage == pytest.approx(2 / 5)  # seconds 0 and 3
    assert gap == pytest.approx(2.5)  # from 0.5 s to 3.0 s
