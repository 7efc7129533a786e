"""Bad uploads end as Failed runs whose message carries a reason code and a clear cause."""

from __future__ import annotations

from pathlib import Path

import pytest

from cv.synthetic import ScanSpec, SyntheticScan, render_scan
from flows.process_scan import process_scan

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_server")]


def _bad_inputs(tmp: Path, good: SyntheticScan) -> dict[str, tuple[Path, str, str]]:
    empty = tmp / "empty.mp4"
    empty.write_bytes(b"")
    text = tmp / "text.mp4"
    text.write_text("not a video at all\n" * 100)
    cut = tmp / "cut.mp4"
    cut.write_bytes(good.path.read_bytes()[: good.path.stat().st_size // 2])
    blurry = render_scan(
        tmp / "blurry.mp4", ScanSpec(duration_s=5, seed=9, blurred=frozenset(range(75)))
    ).path
    return {
        "empty": (empty, "unreadable_video", "empty"),
        "text": (text, "unreadable_video", "not a readable video"),
        "truncated": (cut, "unreadable_video", "bad-truncated.mp4"),  # named after the scan
        "missing": (tmp / "never-uploaded.mp4", "not_found", "never-uploaded.mp4"),
        "blurry": (blurry, "too_few_usable_frames", "closer"),
    }


@pytest.mark.parametrize("case", ["empty", "text", "truncated", "missing", "blurry"])
def test_bad_input_fails_with_a_reason(
    case: str, tmp_path: Path, good_scan: SyntheticScan, results_dir: Path
) -> None:
    path, reason, words = _bad_inputs(tmp_path, good_scan)[case]
    state = process_scan(f"bad-{case}", "patient-bad", path.as_uri(), return_state=True)
    assert state.is_failed(), state
    assert f"[{reason}]" in state.message
    assert words in state.message
    # nothing half-published: no manifest for a failed scan
    assert not (results_dir / "patient-bad" / f"bad-{case}" / "manifest.json").exists()


def test_invalid_ids_are_refused(good_scan: SyntheticScan, results_dir: Path) -> None:
    state = process_scan("../escape", "patient-x", good_scan.path.as_uri(), return_state=True)
    assert state.is_failed()
    assert "scan_id" in state.message
    assert not any(results_dir.rglob("*"))
