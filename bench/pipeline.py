"""The whole pipeline against the decoding floor, and its memory.

    python bench/pipeline.py [--samples 1080p,720p,4k-hevc] [--seconds 60] [--repeats 3]
                             [--memory-short 60 --memory-long 600] [--memory-repeats 3]
                             [--skip-memory] [--skip-speed]

1. Speed, per sample (rendered once into bench/out/): a 60 s 1080p30 H.264 scan at ~16
   Mbit/s (the issue's figure), a 60 s 720p30 H.264 one at 6 Mbit/s, and a 10 s 4K30 HEVC
   one at 40 Mbit/s as phones record. Interleaved, `repeats` times, each in its own process:
   Debian's `ffmpeg -threads 0 -i scan.mp4 -f null -` (the floor: decoding every frame, the
   one definition the benches share), the same with the flow's decoding threads, and
   `scanflow process` through a real Prefect server decoding every frame (`decode: all`,
   the flow before it skipped non-reference frames) and as it runs by default. Prints wall
   and CPU-second medians, their ratios to the floor (target <= 1.25), the stages' times
   (from the manifest) and the flow's peak memory.
2. Memory: peak RSS of `scanflow process` on the 60 s 1080p scan (target < 1.5 GB), and on a
   short and a long 640x360 scan, interleaved `memory-repeats` times (the long one must peak
   no higher than the short one: decoding streams, buffers are bounded). A peak is a maximum
   over a fluctuating process, so single runs vary by ~10 MiB: medians are compared.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from samples import sample_scan  # bench/ is this script's folder: on sys.path

ROOT = Path(__file__).resolve().parents[1]

OUT = ROOT / "bench" / "out"


def _peak_rss(pid: int) -> int:
    """VmHWM of a running process, in bytes (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def run_measured(cmd: list[str], env: dict[str, str]) -> tuple[float, int, str]:
    """Wall seconds, peak RSS (bytes) and stdout of one child process.

    The peak is the child's own high-water mark (VmHWM), read every 20 ms while it runs:
    not wait4's ru_maxrss, which for a child that Python spawns with vfork starts at this
    (large) process's peak.
    """
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    peak = 0
    out_parts: list[str] = []
    err_parts: list[str] = []
    readers = [
        threading.Thread(
            target=lambda: out_parts.append(proc.stdout.read() if proc.stdout else "")
        ),
        threading.Thread(
            target=lambda: err_parts.append(proc.stderr.read() if proc.stderr else "")
        ),
    ]
    for r in readers:
        r.start()
    while proc.poll() is None:
        peak = max(peak, _peak_rss(proc.pid))
        time.sleep(0.02)
    elapsed = time.perf_counter() - start
    for r in readers:
        r.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} failed: {''.join(err_parts)[-2000:]}")
    return elapsed, peak, "".join(out_parts)


# name: seconds, width, height, bits/s, encoder (the 4K sample is short: x265 renders it
# at a few frames a second here)
SAMPLES = {
    "1080p": (60.0, 1920, 1080, 16_000_000, "libx264"),
    "720p": (60.0, 1280, 720, 6_000_000, "libx264"),
    "4k-hevc": (10.0, 3840, 2160, 40_000_000, "libx265"),
}


def _cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _speed(
    name: str,
    video: Path,
    seconds: float,
    repeats: int,
    ffmpeg: str,
    scanflow: list[str],
    env: dict[str, str],
) -> None:
    """One sample, interleaved ``repeats`` times: the floor (``ffmpeg -threads 0``), ffmpeg
    with the flow's decoding threads, and the flow decoding every frame (``decode: all``,
    how it ran before non-reference frames were skipped) and as it runs by default. Wall
    and CPU seconds of each, medians, ratios to the floor."""
    from cv.video.frames import decoder_threads
    from scanflow.models.cache import cpu_threads

    def decode(threads: int) -> list[str]:
        flags = ["-v", "error", "-threads", str(threads)]
        return [ffmpeg, *flags, "-i", str(video), "-f", "null", "-"]

    def flow(scan: str, options: dict[str, object] | None = None) -> list[str]:
        extra = ["--options", json.dumps(options)] if options else []
        return scanflow + [str(video), "--scan-id", scan, "--patient-id", "b", *extra]

    ours = decoder_threads(cpu_threads())
    runs: dict[str, list[str]] = {
        "ffmpeg -threads 0 (the floor)": decode(0),
        f"ffmpeg -threads {ours} (the flow's threads)": decode(ours),
        "flow, every frame decoded": flow("all-{i}", {"decode": "all"}),
        "flow (default)": flow("run-{i}"),
    }
    run_measured(decode(0), env)  # warm the page cache and the flow's imports
    run_measured(flow(f"warm-{name}"), env)
    wall: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    manifest, peak = "", 0
    for i in range(repeats):
        for label, cmd in runs.items():
            before = _cpu_children()
            t, rss, out = run_measured([c.replace("{i}", f"{name}-{i}") for c in cmd], env)
            wall[label].append(t)
            cpu[label].append(_cpu_children() - before)
            if label == "flow (default)":
                manifest, peak = out.strip().splitlines()[-1], max(peak, rss)
    size = video.stat().st_size
    print(
        f"\n== {name}: {video.name}, {size / 1e6:.0f} MB, {size * 8 / seconds / 1e6:.1f} Mbit/s, "
        f"repeats={repeats}"
    )
    floor, floor_cpu = statistics.median(wall[next(iter(runs))]), 0.0
    for label in runs:
        w, c = statistics.median(wall[label]), statistics.median(cpu[label])
        floor_cpu = floor_cpu or c
        print(
            f"{label:44} wall {w:6.2f} s {[round(x, 2) for x in wall[label]]}  "
            f"ratio {w / floor:.3f} | CPU {c:6.2f} s  ratio {c / floor_cpu:.3f}"
        )
    m = json.loads(Path(manifest.removeprefix("file://")).read_text())
    print(
        "stages (last default run, s): "
        + ", ".join(f"{k} {v:.2f}" for k, v in m["timings_s"].items())
    )
    print(f"peak RSS of the flow: {peak / 2**20:.0f} MiB (target < 1536 at 1080p)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--memory-short", type=float, default=60.0)
    ap.add_argument("--memory-long", type=float, default=600.0)
    ap.add_argument("--memory-repeats", type=int, default=3)
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument(
        "--samples", default="1080p,720p,4k-hevc", help=f"comma-separated: {', '.join(SAMPLES)}"
    )
    ap.add_argument("--skip-speed", action="store_true", help="only the memory comparison")
    args = ap.parse_args()
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        print("Debian's ffmpeg is needed for the floor: apt-get install ffmpeg")
        return 2

    home = Path(tempfile.mkdtemp(prefix="scanflow-bench-"))
    env = dict(
        os.environ,
        SCANFLOW_HOME=str(home),
        SCANFLOW_SERVER_PORT="4298",
        PREFECT_API_URL="http://127.0.0.1:4298/api",
        PREFECT_HOME=str(home / "prefect"),
        DO_NOT_TRACK="1",
        PREFECT_LOGGING_LEVEL="WARNING",
    )
    os.environ.update(env)
    from scanflow.local.stack import LocalStack
    from scanflow.settings import Settings

    stack = LocalStack(Settings())
    stack.start_server()
    scanflow = [sys.executable, "-m", "scanflow.cli.main", "process"]
    try:
        if not args.skip_speed:
            for name in args.samples.split(","):
                seconds, w, h, rate, codec = SAMPLES[name]
                if name == "1080p":
                    seconds = args.seconds
                video = sample_scan(seconds, w, h, rate, codec)
                _speed(name, video, seconds, args.repeats, ffmpeg, scanflow, env)
        if not args.skip_memory:
            peaks: dict[float, list[int]] = {args.memory_short: [], args.memory_long: []}
            for i in range(args.memory_repeats):
                for seconds in peaks:
                    clip = sample_scan(seconds, 640, 360, 2_000_000)
                    _, peak, _ = run_measured(
                        scanflow
                        + [
                            str(clip),
                            "--scan-id",
                            f"mem-{seconds:g}-{i}",
                            "--patient-id",
                            "m",
                            "--options",
                            json.dumps({"limits": {"max_duration_s": 3600}}),
                        ],
                        env,
                    )
                    peaks[seconds].append(peak)
            for seconds, runs in peaks.items():
                print(
                    f"peak RSS, 640x360 {seconds:g} s: median "
                    f"{statistics.median(runs) / 2**20:.0f} MiB  "
                    f"{[round(r / 2**20) for r in runs]}"
                )
            short, long = (statistics.median(peaks[k]) for k in peaks)
            print(f"ratio of median peaks long / short: {long / short:.3f}   (target <= 1.0, flat)")
    finally:
        stack.down()
        shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
