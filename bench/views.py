"""What the pictures cost: a scan of the bench's 60 s 1080p30 sample processed twice (the
second a later scan of the same mouth, so tracking adds change maps), on a local stack of
its own, through ``scanflow process``; then, from its stored results, the size of
report.html and of the run's UI artifact, and the time to build each (median of
``--repeats``), against the run's own time measured in the same run.

    .venv/bin/python bench/views.py [--seconds 60] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository

from samples import sample_scan  # noqa: E402  (bench/ is on sys.path)

from scanflow.local.sandbox import Sandbox  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    video = sample_scan(args.seconds, 1920, 1080)
    with Sandbox("bench-views") as box:
        for scan in ("v-1", "v-2"):
            out = box.cli(
                "process", str(video), "--patient-id", "pt", "--scan-id", scan, timeout=900
            )
            if out.returncode != 0:
                raise RuntimeError(out.stderr[-3000:])
        folder = box.home / "results" / "pt" / "v-2"
        raw = json.loads((folder / "manifest.json").read_text())
        run_s = (
            datetime.fromisoformat(raw["completed_at"]) - datetime.fromisoformat(raw["started_at"])
        ).total_seconds()
        # the same code the run uses, timed here on the stored results
        from scanflow.contracts.manifest import Manifest
        from scanflow.report import scan_report
        from tasks.manifest import _markdown

        m = Manifest.model_validate(raw)
        uri = (folder / "manifest.json").as_uri()
        report_s, artifact_s, links_s = [], [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            page = scan_report(m)
            report_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            markdown = _markdown(m, uri, ("inline", 0))
            artifact_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            plain = _markdown(m, uri, ("links", 0))
            links_s.append(time.perf_counter() - t)
        video_kb = (folder / "summary.mp4").stat().st_size / 1024
    r, a, n = (statistics.median(x) for x in (report_s, artifact_s, links_s))
    print(f"scan: {args.seconds:.0f} s 1920x1080 30 fps; the run took {run_s:.2f} s")
    print(f"report.html:            {len(page) / 1024:8.0f} KiB (summary video {video_kb:.0f} KiB "
          f"inside), built in {r * 1000:6.0f} ms = {r / run_s:.1%} of the run")  # fmt: skip
    print(f"UI artifact, inline:    {len(markdown) / 1024:8.0f} KiB, built in {a * 1000:6.0f} ms "
          f"= {a / run_s:.1%} of the run")  # fmt: skip
    print(f"UI artifact, links:     {len(plain) / 1024:8.1f} KiB, built in {n * 1000:6.1f} ms")
    print(f"pictures and report add {(r + a - n) * 1000:.0f} ms = {(r + a - n) / run_s:.1%}")


if __name__ == "__main__":
    main()
