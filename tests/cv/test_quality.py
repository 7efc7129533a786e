from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cv.errors import Reason, RejectedScan
from cv.frames import VideoLimits, decoded_duration, probe_video, sample_frames
from cv.quality import (
    QualityThresholds,
    assess_scan,
    is_usable,
    raise_if_rejected,
    sharpness_threshold,
)
from cv.synthetic import ScanSpec, SyntheticScan, render_scan


def _qualities(path: Path):
    info = probe_video(path, VideoLimits())
    q = sample_frames(
        path, info, VideoLimits(), sample_fps=2, max_side=320, on_frame=lambda f: None
    )
    return q, decoded_duration(q, info.fps)


def test_defective_frames_are_found(good_scan: SyntheticScan) -> None:
    q, _ = _qualities(good_scan.path)
    t = QualityThresholds()
    thr = sharpness_threshold(q, t)
    for truth, fq in zip(good_scan.frames, q, strict=True):
        # the encoder smears a defect into its neighbours; judge frames well inside it
        if truth.blurred and truth.index - 1 in good_scan.spec.blurred:
            assert fq.sharpness < thr, truth
        if truth.dark or truth.glare or truth.blurred:
            assert not is_usable(fq, thr, t), truth
    clean = [
        fq
        for truth, fq in zip(good_scan.frames, q, strict=True)
        if not (truth.blurred or truth.dark or truth.glare or truth.fast)
    ]
    assert np.mean([is_usable(fq, thr, t) for fq in clean]) > 0.9


def test_good_scan_is_usable(good_scan: SyntheticScan) -> None:
    q, duration = _qualities(good_scan.path)
    verdict = assess_scan(q, duration, QualityThresholds())
    assert verdict.usable and verdict.reason is None
    assert verdict.frames_decoded == 90
    assert 0.7 < verdict.usable_fraction < 0.95  # 18 of 90 frames were damaged on purpose
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


def test_short_scan_is_too_short(scans_dir: Path) -> None:
    scan = render_scan(scans_dir / "short.mp4", ScanSpec(duration_s=1.0, seed=5))
    q, duration = _qualities(scan.path)
    verdict = assess_scan(q, duration, QualityThresholds())
    assert verdict.reason is Reason.TOO_SHORT
    assert "1.0 s" in (verdict.guidance or "")
