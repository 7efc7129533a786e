"""What Prefect costs: process-scan through a real Prefect server against a plain script
that makes the same cv/ calls and the same store writes, on the same video, in one run.

The plain script decodes as the flow does (the same decoder threads, non-reference frames
skipped where the flow skips them) and classifies the kept frames while decoding on the
same streaming classifier, and writes what the flow writes (frames, frame_quality.json,
embeddings.npy, views.json, summary.mp4, the contact sheet and keyframes, trend.json and
trend.png, report.html, manifest.json), so that flow / plain measures Prefect alone; each
flow run is a patient's first scan (nothing to compare with: the plain script compares
nothing). Its report.html is rendered from the warm-up flow run's manifest of the same
video (the pictures and the video it embeds are the same sizes). Also prints the
decode floor, defined as bench/pipeline.py defines it: Debian's ``ffmpeg -threads 0``
decoding every frame, in its own process.

    python bench/orchestration.py [--seconds 30] [--width 1920 --height 1080] [--repeats 3]

Prints medians and ratios; the sample video is cached under bench/out/.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from samples import sample_scan  # bench/ is this script's folder: on sys.path

ROOT = Path(__file__).resolve().parents[1]

OUT = ROOT / "bench" / "out"


def decode_floor(path: Path) -> float:
    """FFmpeg's own decode of every frame (bench/pipeline.py's floor)."""
    cmd = ["ffmpeg", "-v", "error", "-threads", "0", "-i", str(path), "-f", "null", "-"]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL)
    return time.perf_counter() - start


def plain_pipeline(path: Path, root: Path, manifest: Any) -> float:
    """The same cv/ calls as process-scan, with the same writes, and no Prefect;
    ``manifest``: a flow run's manifest of the same video, for report.html."""
    import numpy as np

    from cv.images import encode_jpeg, encode_png
    from cv.model.streaming import StreamingClassifier
    from cv.quality.analysis import Fault, assess_scan, frame_limits, scan_faults
    from cv.summary.render import (
        SummaryFrame,
        choose_keyframes,
        choose_segments,
        contact_sheet,
        render_summary_video,
    )
    from cv.tracking.registration import best_frame_per_view
    from cv.tracking.trend import render_trend
    from cv.video.frames import (
        decoded_duration,
        decoder_threads,
        probe_video,
        sample_frames,
        skips_frames,
    )
    from scanflow.contracts.options import ScanOptions
    from scanflow.models.cache import classifier, cpu_threads
    from scanflow.models.registry import DEFAULT_PACKAGE
    from scanflow.report import scan_report
    from tasks._frames import STREAM_BATCH
    from tasks.frames import frame_quality_json

    start = time.perf_counter()
    opts = ScanOptions()
    limits = opts.limits.video_limits()
    root.mkdir(parents=True, exist_ok=True)
    (root / "frames").mkdir(exist_ok=True)
    info = probe_video(path, limits)
    kept = []
    cache = str(root / "models")
    # as the flow: the model loads in the classifier's thread while decoding starts
    stream = StreamingClassifier(
        lambda: classifier(DEFAULT_PACKAGE, cache, opts.device),
        min(opts.batch_size, STREAM_BATCH),
        max(1, cpu_threads() // 2),
        backlog=64,
    )

    def on_frame(f):  # type: ignore[no-untyped-def]
        (root / "frames" / f"{f.quality.index:06d}.jpg").write_bytes(encode_jpeg(f.rgb))
        stream.push(f.rgb)
        kept.append(f)

    with stream:
        qualities = sample_frames(
            path,
            info,
            limits,
            sample_fps=opts.sample_fps,
            max_side=opts.max_side,
            on_frame=on_frame,
            decoder_threads=decoder_threads(cpu_threads()),
            reference_only=skips_frames(info, opts.decode == "reference"),
        ).qualities
        pred = stream.finish()
    emb = pred.embeddings
    verdict = assess_scan(qualities, decoded_duration(qualities, info.fps), opts.thresholds())
    faults = scan_faults(qualities, frame_limits(qualities, opts.thresholds()), opts.thresholds())
    (root / "frame_quality.json").write_bytes(frame_quality_json(qualities, faults))
    usable = [faults[k.quality.index] == Fault.NONE for k in kept]
    buf = io.BytesIO()
    np.save(buf, emb)
    (root / "embeddings.npy").write_bytes(buf.getvalue())
    labels = classifier(DEFAULT_PACKAGE, cache, opts.device).labels
    rows = [
        [i, k.quality.index, round(k.quality.time_s, 4), u, labels[int(v)], round(float(c), 4)]
        for i, (k, u, v, c) in enumerate(
            zip(kept, usable, pred.views, pred.confidence, strict=True)
        )
    ]
    (root / "views.json").write_text(json.dumps({"labels": list(labels), "rows": rows}))
    info_s = [
        SummaryFrame(k.quality.time_s, k.quality.sharpness, u)
        for k, u in zip(kept, usable, strict=False)
    ]
    keys = choose_keyframes(emb, [k.quality.sharpness for k in kept], usable, opts.keyframes)
    segs = choose_segments(info_s, int(opts.summary_max_s / 0.5))
    render_summary_video(
        root / "summary.mp4",
        [kept[i].rgb for i in segs],
        [info_s[i] for i in segs],
        seconds_per_frame=0.5,
    )
    (root / "contact_sheet.jpg").write_bytes(
        encode_jpeg(contact_sheet([kept[i].rgb for i in keys], [info_s[i] for i in keys]), 85)
    )
    for i in keys:
        (root / f"key-{i}.jpg").write_bytes(encode_jpeg(kept[i].rgb))
    views = best_frame_per_view(
        [labels[int(v)] for v in pred.views], [k.quality.sharpness for k in kept], usable
    )
    point = {"usable": verdict.usable, "views": len(views)}
    (root / "trend.json").write_text(json.dumps({"scans": [point]}))
    series = {  # three panels, as the flow's
        "usable": [verdict.usable_fraction],
        "coverage": [verdict.time_coverage],
        "views": [len(views) / len(labels)],
    }
    trend = render_trend(series, ["today"])
    (root / "trend.png").write_bytes(encode_png(trend))
    (root / "report.html").write_text(scan_report(manifest))
    (root / "manifest.json").write_text(manifest.model_dump_json(indent=2))
    return time.perf_counter() - start


def flow_manifest(scan_id: str) -> Any:
    """The manifest flow_pipeline's run of ``scan_id`` wrote."""
    from scanflow.contracts.manifest import manifest_uri, read_manifest
    from scanflow.settings import Settings
    from scanflow.storage import join

    scan = join(Settings().results_root, f"bench-patient-{scan_id}", scan_id)
    return read_manifest(manifest_uri(scan))


def flow_pipeline(path: Path, scan_id: str) -> float:
    """The flow, for a patient of the scan's own: no earlier scan to track against, as the
    plain script tracks nothing (with one, the flow would also register each view)."""
    from flows.process_scan import process_scan
    from scanflow.local.prefork import skip_heartbeat_join

    # as the worker's runs: heartbeats on, the run's end not held for the heartbeat thread's
    # 1 s sleep (Prefect's sync engine joins it: ~0.5 s a run, up to 1 s)
    skip_heartbeat_join()
    start = time.perf_counter()
    process_scan(scan_id, f"bench-patient-{scan_id}", path.as_uri())
    return time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--width", type=int, default=1920)
    ap.add_argument("--height", type=int, default=1080)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    home = Path(tempfile.mkdtemp(prefix="scanflow-bench-"))
    os.environ.update(
        {
            "SCANFLOW_HOME": str(home),
            "SCANFLOW_SERVER_PORT": "4297",
            "PREFECT_API_URL": "http://127.0.0.1:4297/api",
            "PREFECT_HOME": str(home / "prefect"),
            "DO_NOT_TRACK": "1",
            "PREFECT_LOGGING_LEVEL": "WARNING",
            "SCANFLOW_INPUT_ROOTS": OUT.as_uri(),  # the flow may read the rendered scans
        }
    )
    from scanflow.local.stack import LocalStack
    from scanflow.settings import Settings

    stack = LocalStack(Settings())
    stack.start_server()
    try:
        path = sample_scan(args.seconds, args.width, args.height)
        # warm-up: model load, imports, first-run database work
        flow_pipeline(path, "warm")
        manifest = flow_manifest("warm")
        plain_pipeline(path, home / "plain-warm", manifest)
        floor, plain, flow = [], [], []
        for i in range(args.repeats):  # interleaved so machine noise hits all alike
            floor.append(decode_floor(path))
            plain.append(plain_pipeline(path, home / f"plain-{i}", manifest))
            flow.append(flow_pipeline(path, f"run-{i}"))
    finally:
        stack.down()
    m = {k: statistics.median(v) for k, v in (("floor", floor), ("plain", plain), ("flow", flow))}
    print(f"video: {path.name}, {path.stat().st_size / 1e6:.1f} MB, repeats={args.repeats}")
    print(f"decode floor (ffmpeg -threads 0): {m['floor']:.2f} s")
    print(f"plain script (same cv/ calls):    {m['plain']:.2f} s")
    print(f"flow through Prefect server:      {m['flow']:.2f} s")
    print(f"ratio flow / plain:  {m['flow'] / m['plain']:.3f}   (target <= 1.10)")
    print(f"ratio flow / floor:  {m['flow'] / m['floor']:.3f}   (target <= 1.5)")
    print(f"ratio plain / floor: {m['plain'] / m['floor']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
