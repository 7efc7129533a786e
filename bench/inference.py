"""Inference speed of the default model, and its share of the pipeline.

1. Frames per second of the default view classifier (backbone + head, preprocessing
   included) at batch sizes 1, 16 and 64, on the CPU (pinned to ``--cores`` CPUs, one
   thread each) or on a GPU (``--device cuda``). Frames are 640x360, the size the flow keeps.
2. The inference share of process-scan on a 60 s 1080p30 scan at ~16 Mbit/s, on 2 cores:
   the flow runs through a real Prefect server (started here, on a free port, in a
   temporary home) and its manifest's stage timings are read: (load_model +
   run_inference) / all stages. Target: at most 20 %.

    python bench/inference.py [--device cpu|cuda] [--batches 1 16 64] [--frames 128]
                              [--no-pipeline] [--seconds 60] [--cores 2] [--repeats 2]

The sample video is rendered once and cached in bench/out/.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from samples import sample_scan  # bench/ is this script's folder: on sys.path

from scanflow.local.loopback import free_port

ROOT = Path(__file__).resolve().parents[1]

OUT = ROOT / "bench" / "out"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def throughput(device: str, batches: list[int], n_frames: int, repeats: int) -> None:
    import numpy as np
    import torch

    from cv.model.heads import classify_frames
    from scanflow.models.registry import DEFAULT_PACKAGE, load_package
    from tasks.inference import cpu_threads

    dev = torch.device(device)
    with tempfile.TemporaryDirectory() as cache:
        model = load_package(DEFAULT_PACKAGE, Path(cache), dev)
    threads = cpu_threads() if dev.type == "cpu" else None
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else _cpu_name()
    print(f"device: {device} ({name}); torch {torch.__version__}; threads {threads or '-'}")
    print(f"model: {model.identity.name} {model.identity.version} ({len(model.labels)} views)")
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (360, 640, 3), dtype=np.uint8) for _ in range(n_frames)]
    classify_frames(model, frames[: max(batches)], max(batches), threads)  # warm-up
    results: dict[int, list[float]] = {b: [] for b in batches}
    for _ in range(repeats):  # interleaved, so machine noise hits every batch size alike
        for b in batches:
            if dev.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            classify_frames(model, frames, b, threads)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            results[b].append(n_frames / (time.perf_counter() - start))
    for b in batches:
        v = results[b]
        print(
            f"batch {b:4d}: {statistics.median(v):7.1f} frames/s "
            f"(median of {len(v)}, min {min(v):.1f}, max {max(v):.1f}; {n_frames} frames each)"
        )
    if dev.type == "cpu":
        base = _issue2_baseline(frames, 16, threads, repeats)
        print("for comparison, issue 2's path at batch 16 (BatchNorm unfolded, float32 NCHW")
        print(f"  preprocessing, no head): {base:7.1f} frames/s")


def _issue2_baseline(frames: list, batch: int, threads: int | None, repeats: int) -> float:  # type: ignore[type-arg]
    """Frames/s of the embedding path as issue 2 left it, measured here side by side."""
    import cv2
    import numpy as np
    import torch

    from cv.model.network import INPUT_SIZE, MEAN, STD, MobileNetV2, torch_threads
    from scanflow.models.registry import installed_backbone

    net = MobileNetV2()
    net.load_state_dict(torch.load(installed_backbone(), map_location="cpu", weights_only=True))
    net.eval()
    mean, std = np.array(MEAN, np.float32), np.array(STD, np.float32)

    def prep(chunk: list) -> torch.Tensor:  # type: ignore[type-arg]
        out = np.empty((len(chunk), 3, INPUT_SIZE, INPUT_SIZE), np.float32)
        for i, rgb in enumerate(chunk):
            h, w = rgb.shape[:2]
            sq = min(h, w)
            y0, x0 = (h - sq) // 2, (w - sq) // 2
            img = cv2.resize(
                rgb[y0 : y0 + sq, x0 : x0 + sq],
                (INPUT_SIZE, INPUT_SIZE),
                interpolation=cv2.INTER_AREA,
            )
            out[i] = ((img.astype(np.float32) - mean) / std).transpose(2, 0, 1)
        return torch.from_numpy(out)

    rates = []
    with torch_threads(threads), torch.inference_mode():
        net.embed(prep(frames[:batch]))
        for _ in range(repeats):
            start = time.perf_counter()
            for i in range(0, len(frames), batch):
                net.embed(prep(frames[i : i + batch]))
            rates.append(len(frames) / (time.perf_counter() - start))
    return statistics.median(rates)


def _configure(cores: int) -> None:
    """Pin the CPUs and point Prefect at our own server: before torch or Prefect is imported
    (Prefect reads its settings at import; torch sizes its thread pool at first use)."""
    allowed = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, allowed[:cores])
    home = Path(tempfile.mkdtemp(prefix="scanflow-bench-"))
    port = free_port()
    os.environ.update(
        {
            "SCANFLOW_HOME": str(home),
            "SCANFLOW_SERVER_PORT": str(port),
            "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
            "PREFECT_HOME": str(home / "prefect"),
            "DO_NOT_TRACK": "1",
            "PREFECT_LOGGING_LEVEL": "WARNING",
            "SCANFLOW_INPUT_ROOTS": OUT.as_uri(),  # the flow may read the rendered scans
        }
    )


def pipeline_share(seconds: float, repeats: int) -> None:
    from scanflow.local.stack import LocalStack
    from scanflow.settings import Settings

    stack = LocalStack(Settings())
    stack.start_server()
    try:
        from flows.process_scan import process_scan
        from scanflow.contracts.manifest import read_manifest

        path = sample_scan(seconds, 1920, 1080)
        warm = sample_scan(4.0, 640, 360)
        process_scan("warm", "bench", warm.as_uri())  # imports, model load, first DB work
        shares, added, totals, infer = [], [], [], []
        for i in range(repeats):
            m = read_manifest(process_scan(f"run-{i}", "bench", path.as_uri()))
            t = m.timings_s
            inference = t.get("load_model", 0.0) + t["run_inference"]
            total = sum(t.values())
            shares.append(inference / total)
            added.append(inference / (total - inference))
            totals.append(total)
            infer.append(inference)
            kept = m.views.usable if m.views else 0
            print(
                f"run {i}: stages {total:.1f} s, inference {inference:.2f} s "
                f"(load_model {t.get('load_model', 0):.2f} s, run_inference "
                f"{t['run_inference']:.2f} s), {kept} usable kept frames; "
                + ", ".join(f"{k} {v:.1f}" for k, v in t.items())
            )
    finally:
        stack.down()
    print(
        f"pipeline on {path.name} ({path.stat().st_size / 1e6:.0f} MB), "
        f"{len(os.sched_getaffinity(0))} cores, median of {repeats}:"
    )
    print(f"  all stages:  {statistics.median(totals):.1f} s")
    print(f"  inference:   {statistics.median(infer):.2f} s")
    print(f"  inference share of the pipeline: {statistics.median(shares):.1%}  (target <= 20%)")
    print(f"  time inference adds to the rest: {statistics.median(added):.1%}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--frames", type=int, default=128, help="frames per measurement")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-pipeline", action="store_true", help="skip the pipeline share")
    ap.add_argument("--no-throughput", action="store_true", help="skip frames per second")
    ap.add_argument("--seconds", type=float, default=60.0, help="length of the pipeline scan")
    ap.add_argument("--cores", type=int, default=2, help="CPUs this benchmark may use")
    ap.add_argument("--pipeline-repeats", type=int, default=2)
    args = ap.parse_args()
    if args.device.startswith("cuda"):
        import torch  # before _configure: the CUDA check needs no CPU pinning

        if not torch.cuda.is_available():
            print(f"no CUDA device here (torch {torch.__version__}); nothing measured")
            return 2
    _configure(args.cores)
    try:
        if not args.no_throughput:
            throughput(args.device, args.batches, args.frames, args.repeats)
        if not args.no_pipeline:
            pipeline_share(args.seconds, args.pipeline_repeats)
    finally:
        shutil.rmtree(os.environ["SCANFLOW_HOME"], ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
