"""What a model rollout costs and what it sees, on a local stack of its own
(scanflow.local.sandbox), through the command line as an operator runs it:

- shadow against full re-processing: two scans of one patient (the same synthetic mouth,
  so tracking compares every view) processed by production
  (the shipped default), then, interleaved ``--repeats`` times, the second scan processed
  again in full (``scanflow process``: decoding, inference, summary, tracking) and a shadow
  run over both scans (``scanflow model shadow``: stored frames, no decoding). Prints the
  medians of a scan's seconds for each and their ratio, measured in the same run.
- evaluation: ``scanflow model evaluate`` of the shipped model and of a worse candidate (the
  shipped package with its class names rotated, the "shuffled labels" candidate) on a
  rendered labelled set, with the shadow gate's verdict on each.

    .venv/bin/python bench/rollout.py [--seconds 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scanflow.local.sandbox import Sandbox  # noqa: E402
from scanflow.models.registry import DEFAULT_PACKAGE  # noqa: E402
from tests.support.models import repack  # noqa: E402

PATIENT = "bench-pt"


def _rotate_labels(folder: Path) -> None:
    names = json.loads((folder / "labels.json").read_text())
    (folder / "labels.json").write_text(json.dumps(names[1:] + names[:1]))


def _ok(out: Any, what: str) -> str:
    if out.returncode not in (0, 1):
        raise RuntimeError(
            f"{what} exited {out.returncode}:\n{out.stdout[-2000:]}{out.stderr[-2000:]}"
        )
    return str(out.stdout)


def _json(stdout: str) -> dict[str, Any]:
    return json.loads(stdout[stdout.index("{\n") :])  # type: ignore[no-any-return]


def _manifest(box: Sandbox, scan: str) -> dict[str, Any]:
    return json.loads((box.home / "results" / PATIENT / scan / "manifest.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="each scan's length")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-rollout-"))
    default = DEFAULT_PACKAGE.uri
    assert default is not None
    worse = repack(Path(default.removeprefix("file://")), work / "rotated.zip", _rotate_labels)
    with Sandbox("bench-rollout") as box:
        for i in (1, 2):
            video = work / f"scan-{i}.mp4"
            # the same mouth scanned twice (one seed): tracking compares every view
            _ok(
                box.cli("sample", str(video), "--seconds", str(args.seconds), "--seed", "7"),
                "sample",
            )
            _ok(
                box.cli("process", str(video), "--patient-id", PATIENT, "--scan-id", f"s-{i}"),
                "process",
            )
        full, shadow = [], []
        for _ in range(args.repeats):
            _ok(box.cli("process", str(work / "scan-2.mp4"), "--patient-id", PATIENT,
                        "--scan-id", "s-2"), "process again")  # fmt: skip
            m = _manifest(box, "s-2")
            full.append(_ts(m["completed_at"]) - _ts(m["started_at"]))
            report = _json(_ok(box.cli("model", "shadow", default, "--json"), "shadow"))
            shadow.append(report["seconds_per_scan"])
        data = work / "views"
        _ok(box.cli("model", "dataset", str(data), "--train-scans", "1", "--heldout-scans", "2",
                    "--width", "320", "--height", "240"), "dataset")  # fmt: skip
        held = data / "heldout"
        shipped = _json(_ok(box.cli("model", "evaluate", default, str(held), "--json"), "evaluate"))
        rotated = _json(
            _ok(
                box.cli("model", "evaluate", str(worse), str(held), "--against", default, "--json"),
                "evaluate",
            )  # fmt: skip
        )
        gate = _json(_ok(box.cli("model", "shadow", str(worse), "--json"), "shadow worse"))
    f, s = statistics.median(full), statistics.median(shadow)
    frames = _manifest_frames(report)
    print(f"scan: {args.seconds:.0f} s synthetic 640x480 at 30 fps, {frames} kept frames")
    print(f"full re-process of a scan:  median {f:6.2f} s  ({', '.join(f'{x:.2f}' for x in full)})")
    print(
        f"shadow of a scan (frames):  median {s:6.2f} s  ({', '.join(f'{x:.2f}' for x in shadow)})"
    )
    print(f"shadow / full re-process:   {s / f:.3f}")
    print()
    print(f"evaluation on {shipped['frames']} held-out labelled frames (synthetic, 320x240):")
    for name, r in (("shipped", shipped["candidate"]), ("rotated labels", rotated["candidate"])):
        print(f"  {name:15s} {r['model']['name']} {r['model']['version']}: "
              f"accuracy {r['accuracy']:.1%}, ECE {r['ece']:.3f}")  # fmt: skip
    print(f"shadow gate, rotated labels over the 2 scans: {gate['gate']['why']} "
          f"(tracking verdicts changed: {gate['tracking_verdicts_changed']})")  # fmt: skip


def _ts(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text).timestamp()


def _manifest_frames(report: dict[str, Any]) -> int:
    return int(report["frames"] // max(1, len(report["scans"])))


if __name__ == "__main__":
    started = time.monotonic()
    main()
    print(f"(bench ran {time.monotonic() - started:.0f} s)")
