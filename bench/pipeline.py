"""The whole pipeline against the decoding floor, and its memory.

    python bench/pipeline.py [--seconds 60] [--repeats 3] [--memory-short 60 --memory-long 600]
                             [--memory-repeats 3] [--skip-memory] [--skip-speed]

1. Speed: a 60 s 1080p30 synthetic scan at ~16 Mbit/s (rendered once into bench/out/).
   Interleaved, `repeats` times: Debian's `ffmpeg -threads 0 -i scan.mp4 -f null -` (the
   floor: decoding every frame), the same with as many threads as the flow's decoder uses
   (a stricter floor), and `scanflow process` on the same file through a real
   Prefect server, each in its own process. Prints medians, the ratio (target <= 1.5,
   stretch 1.2) and the time of each stage (from the manifest).
2. Memory: peak RSS of `scanflow process` on the 60 s 1080p scan (target < 1.5 GB), and on a
   short and a long 640x360 scan, interleaved `memory-repeats` times (the long one must peak
   no higher than the short one: decoding streams, buffers are bounded). A peak is a maximum
   over a fluctuating process, so single runs vary by ~10 MiB: medians are compared.
"""

from __future__ import annotations

import argparse
import json
import os
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--memory-short", type=float, default=60.0)
    ap.add_argument("--memory-long", type=float, default=600.0)
    ap.add_argument("--memory-repeats", type=int, default=3)
    ap.add_argument("--skip-memory", action="store_true")
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
    from cv.video.frames import decoder_threads
    from scanflow.local.stack import LocalStack
    from scanflow.models.cache import cpu_threads
    from scanflow.settings import Settings

    stack = LocalStack(Settings())
    stack.start_server()
    scanflow = [sys.executable, "-m", "scanflow.cli.main", "process"]
    try:
        if not args.skip_speed:
            video = sample_scan(args.seconds, 1920, 1080, 16_000_000)

            def decode(threads: int) -> list[str]:
                flags = ["-v", "error", "-threads", str(threads)]
                return [str(ffmpeg), *flags, "-i", str(video), "-f", "null", "-"]

            floor_cmd = decode(0)
            # the flow decodes with more threads than ffmpeg's default
            # (cv.video.frames.decoder_threads):
            # ffmpeg given as many is a stricter floor, printed beside the issue's
            ours = decoder_threads(cpu_threads())
            same_cmd = decode(ours)
            run_measured(floor_cmd, env)  # warm the page cache
            run_measured(scanflow + [str(video), "--scan-id", "warm", "--patient-id", "b"], env)
            floors, sames, flows, rss, manifests = [], [], [], [], []
            for i in range(args.repeats):
                floors.append(run_measured(floor_cmd, env)[0])
                sames.append(run_measured(same_cmd, env)[0])
                t, peak, out = run_measured(
                    scanflow + [str(video), "--scan-id", f"run-{i}", "--patient-id", "b"], env
                )
                flows.append(t)
                rss.append(peak)
                manifests.append(out.strip().splitlines()[-1])
            floor, flow = statistics.median(floors), statistics.median(flows)
            print(
                f"video: {video.name}, {video.stat().st_size / 1e6:.0f} MB, "
                f"{video.stat().st_size * 8 / args.seconds / 1e6:.1f} Mbit/s, "
                f"repeats={args.repeats}"
            )
            print(
                f"ffmpeg -threads 0 decode (floor): {floor:.2f} s  {[round(x, 2) for x in floors]}"
            )
            print(f"scanflow process (whole flow):    {flow:.2f} s  {[round(x, 2) for x in flows]}")
            print(f"ratio pipeline / floor: {flow / floor:.3f}   (target <= 1.5, stretch 1.2)")
            same = statistics.median(sames)
            print(
                f"ffmpeg -threads {ours} decode (the flow's thread count): {same:.2f} s  "
                f"{[round(x, 2) for x in sames]}; ratio pipeline / that: {flow / same:.3f}"
            )
            m = json.loads(Path(manifests[-1].removeprefix("file://")).read_text())
            print(
                "stages (last run, s): "
                + ", ".join(f"{k} {v:.2f}" for k, v in m["timings_s"].items())
            )
            print(f"peak RSS, 1080p {args.seconds:g} s: {max(rss) / 2**20:.0f} MiB (target < 1536)")
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
