"""Measuring decoding in a process of its own, and the table of outcomes printed at the end
of the run (registered in conftest.py; with several test processes, each fills its cells)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHILD = Path(__file__).with_name("decode_child.py")

# input -> column -> value
REPORT: dict[str, dict[str, Any]] = {}
COLUMNS = (
    "what",
    "expected",
    "outcome",
    "reason",
    "flow s",
    "stopped at",
    "decode s",
    "peak RSS MB",
    "via worker",
    "scanflow process",
)


def record(case: str, **values: Any) -> None:
    REPORT.setdefault(case, {}).update(values)


def table(reports: list[dict[str, dict[str, Any]]]) -> list[str]:
    """The rows of every process's report, merged cell by cell."""
    rows: dict[str, dict[str, Any]] = {}
    for report in reports:
        for case, row in report.items():
            rows.setdefault(case, {}).update({k: v for k, v in row.items() if v not in ("", None)})
    lines = ["| input | " + " | ".join(COLUMNS) + " |", "|" + "---|" * (len(COLUMNS) + 1)]
    for case, row in rows.items():
        cells = []
        for column in COLUMNS:
            value = row.get(column, "")
            cells.append(f"{value:.1f}" if isinstance(value, float) else str(value))
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    return lines


@dataclass(frozen=True)
class Decoded:
    reason: str | None
    stage: str
    frames: int
    message: str | None
    seconds: float
    peak_rss_mb: float


def decode_in_child(
    path: Path, limits: dict[str, Any] | None = None, threads: int | None = None
) -> Decoded:
    """Probe and decode ``path`` as extract_frames does, in a fresh process (with
    ``threads`` decoder threads instead of the flow's, if given); its wall time and peak
    RSS."""
    args = [sys.executable, str(CHILD), str(path), json.dumps(limits or {})]
    if threads is not None:
        args.append(str(threads))
    started = time.monotonic()
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    return Decoded(
        out["reason"], out["stage"], out["frames"], out.get("message"), seconds, out["peak_rss_mb"]
    )
