"""How well tracking finds a moved tooth: synthetic first visit, then later visits with one
front tooth moved by known offsets (and another camera path). For each view: is it flagged
changed, and how far does tracking say the change moved, against the truth.

    python bench/tracking.py [--shifts 8 16 30 50]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

ROOT = Path(__file__).resolve().parents[1]

from cv.synthetic import VIEWS, ScanSpec, SyntheticScan, later_scan, render_scan  # noqa: E402
from cv.tracking.registration import register  # noqa: E402

W, H = 640, 480
CROP_SCALE = W / (int(H * 2 * W / H * 1.3) * 0.8)  # canvas px -> frame px (see synthetic.py)


def _middle_frames(scan: SyntheticScan) -> dict[str, np.ndarray]:
    with av.open(str(scan.path)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    out = {}
    for view in VIEWS:
        idx = [f.index for f in scan.frames if f.view == view]
        out[view] = frames[idx[len(idx) // 2]]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--shifts", type=float, nargs="+", default=[8, 16, 30, 50])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        first = render_scan(
            Path(tmp) / "a.mp4", ScanSpec(width=W, height=H, duration_s=10, fps=15, seed=3)
        )
        before = _middle_frames(first)
        moved = [i for i, t in enumerate(first.teeth) if t.view == "front"][6]
        print(
            f"{'shift (frame px)':>16} {'measured':>9} {'error':>7}  changed views   "
            "false alarms  s/view"
        )
        errors = []
        for k, shift in enumerate(args.shifts):
            later = render_scan(
                Path(tmp) / f"b{k}.mp4", later_scan(first.spec, {moved: (shift, 0.0)}, seed=5 + k)
            )
            now = _middle_frames(later)
            flagged, measured, seconds = [], None, 0.0
            for view in VIEWS:
                start = time.perf_counter()
                r, _ = register(now[view], before[view])
                seconds += time.perf_counter() - start
                if r.changed:
                    flagged.append(view)
                if view == "front":
                    measured = r.displacement_px
            truth = shift * CROP_SCALE
            err = (measured - truth) if measured is not None else float("nan")
            errors.append(abs(err) / truth)
            print(
                f"{truth:16.1f} {measured or 0:9.1f} {err:+7.1f}  {','.join(flagged) or '-':15} "
                f"{len([v for v in flagged if v != 'front']):12d}  {seconds / len(VIEWS):.2f}"
            )
        print(f"mean relative displacement error: {np.nanmean(errors):.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
