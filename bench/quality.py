"""How well the frame-quality detectors find known faults in synthetic scans.

    python bench/quality.py [--seeds 3] [--fps 15] [--decode all|reference]

Renders 20 s scans with runs of blurred, dark and glaring frames and scope jumps at known
frames, at three resolutions and several seeds, and prints precision and recall of each
detector against that truth (a jump counts as found on its frame and the one after).

``--decode reference`` measures only the frames the flow measures when it skips
non-reference frames (ScanOptions.decode, the default at 24 fps and above): each measured
frame is matched to its source frame by its time, the truth is that of the measured frames,
and a jump counts as found on the first two measured frames at or after it. Compare
``--fps 30 --decode all`` with ``--fps 30 --decode reference``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

from cv.quality.analysis import Fault, QualityThresholds, frame_limits, scan_faults  # noqa: E402
from cv.synthetic import ScanSpec, render_scan  # noqa: E402
from cv.video.frames import VideoLimits, probe_video, sample_frames  # noqa: E402


def _runs(rng: np.random.Generator, n: int, count: int, length: int) -> frozenset[int]:
    out: set[int] = set()
    for start in rng.choice(np.arange(10, n - length - 10), count, replace=False):
        out |= set(range(int(start), int(start) + length))
    return frozenset(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--fps", type=float, default=15.0)
    ap.add_argument("--decode", choices=["all", "reference"], default="all")
    args = ap.parse_args()
    measured_frames = total_frames = 0
    totals: dict[str, list[int]] = {k: [0, 0, 0] for k in ("blurred", "dark", "glare", "fast")}
    jumps_found = jumps_total = measured_jumps = measured_found = 0
    with tempfile.TemporaryDirectory() as tmp:
        for w, h in ((320, 240), (640, 480), (1280, 720)):
            for seed in range(args.seeds):
                rng = np.random.default_rng(1000 * seed + w)
                n = int(20 * args.fps)
                k = args.fps / 15  # runs and margins in time, as at 15 fps
                blurred = _runs(rng, n, 4, round(8 * k))
                dark = _runs(rng, n, 3, round(6 * k)) - blurred
                glare = _runs(rng, n, 3, round(6 * k)) - blurred - dark
                fast = frozenset(int(i) for i in rng.choice(n - 20, 5, replace=False) + 10)
                fast -= blurred | dark | glare
                scan = render_scan(
                    Path(tmp) / "s.mp4",
                    ScanSpec(
                        width=w,
                        height=h,
                        duration_s=20,
                        fps=args.fps,
                        seed=seed,
                        blurred=blurred,
                        dark=dark,
                        glare=glare,
                        fast=fast,
                    ),
                )
                info = probe_video(scan.path, VideoLimits())
                q = sample_frames(
                    scan.path,
                    info,
                    VideoLimits(),
                    sample_fps=2,
                    max_side=320,
                    on_frame=lambda f: None,
                    reference_only=args.decode == "reference",
                ).qualities
                # each measured frame's source frame, by its time
                src = [round(x.time_s * args.fps) for x in q]
                measured_frames += len(src)
                total_frames += len(scan.frames)
                t = QualityThresholds()
                faults = scan_faults(q, frame_limits(q, t), t)
                for name, kind in (
                    ("blurred", Fault.BLURRED),
                    ("dark", Fault.DARK),
                    ("glare", Fault.GLARE),
                ):
                    pred = [bool(f & kind) for f in faults]
                    truth = [getattr(scan.frames[i], name) for i in src]
                    tot = totals[name]
                    tot[0] += sum(p and t_ for p, t_ in zip(pred, truth, strict=True))
                    tot[1] += sum(pred)
                    tot[2] += sum(truth)
                pred = [bool(f & Fault.FAST) for f in faults]
                jumps = [i for i, f in enumerate(scan.frames) if f.fast]
                # the first two measured frames at or after each jump
                after = {i: [j for j, s_ in enumerate(src) if s_ >= i][:2] for i in jumps}
                near = {p for i in jumps for p in after[i]}
                jumps_total += len(jumps)
                found = [any(pred[p] for p in after[i]) for i in jumps]
                jumps_found += sum(found)
                # a jump of one frame that was not decoded cannot be kept nor counted
                seen = set(src)
                measured_jumps += sum(i in seen for i in jumps)
                measured_found += sum(f for i, f in zip(jumps, found, strict=True) if i in seen)
                tot = totals["fast"]
                tot[0] += sum(pred[i] for i in near)
                tot[1] += sum(pred)
                tot[2] += 2 * len(jumps)
    print(
        f"{'fault':8} {'precision':>9} {'recall':>7}  (scans: 3 sizes x {args.seeds} seeds, "
        f"{args.fps:g} fps, decode {args.decode}: {measured_frames} of {total_frames} frames)"
    )
    for name, (tp, predicted, actual) in totals.items():
        print(f"{name:8} {tp / max(1, predicted):9.3f} {tp / max(1, actual):7.3f}")
    # frame recall counts a jump twice (its frame and the next); skipping frames can merge
    # the two into one measured frame: the jumps found are comparable across both paths
    print(f"jumps found: {jumps_found} of {jumps_total} ({jumps_found / max(1, jumps_total):.3f})")
    print(
        f"jumps found among those whose frame was measured: {measured_found} of "
        f"{measured_jumps} ({measured_found / max(1, measured_jumps):.3f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
