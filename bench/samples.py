"""Synthetic scans for the benchmarks, rendered once and cached under bench/out/."""

from __future__ import annotations

from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"


def sample_scan(
    seconds: float, width: int, height: int, bitrate: int = 16_000_000, codec: str = "libx264"
) -> Path:
    """A 30 fps scan with a run of blurred and of dark frames, at ``bitrate`` bits/s,
    one slice a frame as phones write it (a sliced file decodes in parallel more easily);
    ``codec="libx265"`` for HEVC, as phones record."""
    from cv.synthetic import ScanSpec, render_scan

    # "1slice": earlier samples were sliced, and are not reused
    kind = "" if codec == "libx264" else "-hevc"
    path = OUT / f"scan-{width}x{height}-{seconds:g}s-{bitrate // 1000}k{kind}-1slice.mp4"
    if not path.is_file():
        OUT.mkdir(parents=True, exist_ok=True)
        print(f"rendering {path.name} (once) ...", flush=True)
        render_scan(
            path,
            ScanSpec(
                width=width,
                height=height,
                fps=30.0,
                duration_s=seconds,
                seed=11,
                bitrate=bitrate,
                blurred=frozenset(range(100, 130)),
                dark=frozenset(range(400, 420)),
                one_slice=True,
                codec=codec,
            ),
        )
    return path
