"""Real footage nobody here wrote: the videos Debian's opencv-doc package ships (handheld
H.264, MS-MPEG4, Cinepak, and a file with a damaged header). Skipped when the package is
absent; `make test` installs it where apt is available."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from flows.process_scan import process_scan

DOC = Path("/usr/share/doc/opencv-doc")
FOOTAGE = {
    "box": DOC / "opencv4/html/box.mp4.gz",  # handheld, H.264, muxed without reordering info
    "cup": DOC / "opencv4/html/cup.mp4.gz",  # handheld, H.264
    "vtest": DOC / "examples/data/vtest.avi",  # MS-MPEG4, 80 s
    "tree": DOC / "examples/data/tree.avi",  # Cinepak, frames dropped in the stream
    "megamind-bugy": DOC / "examples/data/Megamind_bugy.avi",  # frame rate in header is wrong
}
pytestmark = [
    pytest.mark.integration,
    pytest.mark.usefixtures("prefect_server"),
    pytest.mark.skipif(not DOC.is_dir(), reason="Debian's opencv-doc is not installed"),
]


def _local(name: str, tmp: Path) -> Path:
    src = FOOTAGE[name]
    if src.suffix != ".gz":
        return src
    out = tmp / src.stem
    with gzip.open(src) as f, open(out, "wb") as g:
        shutil.copyfileobj(f, g)
    return out


@pytest.mark.parametrize("name", sorted(FOOTAGE))
def test_real_footage_is_processed(
    name: str, tmp_path: Path, results_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCANFLOW_INPUT_ROOTS", f"{DOC.as_uri()},{tmp_path.as_uri()}")
    video = _local(name, tmp_path)
    state = process_scan(name, "opencv-doc", video.as_uri(), return_state=True)
    assert state.is_completed(), state.message
    manifest = json.loads((results_dir / "opencv-doc" / name / "manifest.json").read_text())
    assert manifest["quality"]["frames_decoded"] > 50
    assert manifest["artifacts"]["summary_video_frames"] > 0
    assert len(manifest["artifacts"]["keyframes"]) >= 1
