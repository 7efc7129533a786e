"""Decode one upload the way extract_frames does, in a process of its own, and print what
happened as JSON: ``{"reason", "stage", "frames", "message", "peak_rss_mb"}``.

The peak is this process's own high-water mark (``VmHWM``): ``ru_maxrss``, from the parent's
``wait4`` or our own ``getrusage``, starts from the size of the process that forked us (Linux
carries it across exec), and the parent here is a test runner with Prefect and torch loaded.

    python decode_child.py VIDEO [LIMITS_JSON [DECODER_THREADS]]

Decoder threads default to what extract_frames uses on this machine.
"""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

from cv.errors import ScanError
from cv.quality.analysis import assess_scan, raise_if_rejected
from cv.video.frames import decoded_duration, decoder_threads, probe_video, sample_frames
from scanflow.contracts.options import ScanOptions
from scanflow.models.cache import cpu_threads


def peak_rss_mb() -> float:
    """This process's peak resident memory, in MB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KB


def main() -> None:
    path = Path(sys.argv[1])
    limits_json = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    threads = int(sys.argv[3]) if len(sys.argv) > 3 else decoder_threads(cpu_threads())
    options = ScanOptions.model_validate({"limits": limits_json})
    limits = options.limits.video_limits()
    stage, frames = "probe", 0
    out: dict[str, object] = {"reason": None, "stage": "complete"}
    try:
        info = probe_video(path, limits)
        stage = "decode"
        decoded = sample_frames(
            path,
            info,
            limits,
            sample_fps=options.sample_fps,
            max_side=options.max_side,
            on_frame=lambda _frame: None,
            decoder_threads=threads,
        )
        frames = len(decoded.qualities)
        stage = "quality"
        verdict = assess_scan(
            decoded.qualities, decoded_duration(decoded.qualities, info.fps), options.thresholds()
        )
        raise_if_rejected(verdict)
    except ScanError as exc:
        out = {"reason": exc.reason.value, "stage": stage, "message": exc.message}
    out["frames"] = frames
    out["peak_rss_mb"] = round(peak_rss_mb(), 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
