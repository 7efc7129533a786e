"""report.html (scanflow/report.py) of processed scans, opened in headless Chromium (Debian's)
from file://: a first scan and a later one tracked against it. Every image loads, the
summary video loads its metadata and plays, nothing is requested from outside the file, no
script error; screenshots at desktop and phone widths are kept in test-output/report/.

Chromium cannot be asked from outside what a page holds, so the probe is a copy of the
report with a script appended (and its Content-Security-Policy, which forbids scripts,
removed): the pictures and the video are the report's own bytes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from cv.synthetic import SyntheticScan
from flows.process_scan import process_scan
from scanflow.cli.main import main
from scanflow.contracts.manifest import Manifest
from scanflow.settings import REPO_ROOT

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.usefixtures("prefect_server"),
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed"),
]
OUTPUT = REPO_ROOT / "test-output" / "report"
PROBE = """<script>
const errors = [];
window.addEventListener('error', e => errors.push(String(e.message || e.type)), true);
function report(extra) {
  const imgs = [...document.images];
  document.title = JSON.stringify(Object.assign({
    images: imgs.length,
    loaded: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
    without_alt: imgs.filter(i => !i.alt).length,
    h1: document.querySelectorAll('h1').length,
    errors: errors,
  }, extra));
}
window.addEventListener('load', () => {
  const v = document.querySelector('video');
  if (!v) { report({video: 'none'}); return; }
  const meta = new Promise(
    ok => v.readyState >= 1 ? ok() : v.addEventListener('loadedmetadata', ok));
  // played: the clock moved (a 'timeupdate' past 0), however long a loaded machine takes;
  // a video still at 0 after 60 s of virtual time (which can run ahead of the decoder on a
  // loaded machine) is reported as such
  const moved = () => new Promise(ok => {
    const check = () => { if (v.currentTime > 0) ok('played'); };
    v.addEventListener('timeupdate', check);
    setTimeout(() => ok('stuck at 0'), 60000);
    check();
  });
  meta.then(() => { v.muted = true; return v.play(); })
      .then(moved)
      .then(how => report({video: how, duration: v.duration, time: v.currentTime}))
      .catch(e => report({video: 'error ' + e + ' ' + (v.error && v.error.code)}));
});
</script>"""


def _chromium(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            CHROMIUM or "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--allow-file-access-from-files",
            "--autoplay-policy=no-user-gesture-required",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )


def _probe(report: Path, tmp: Path) -> dict[str, Any]:
    page = report.read_text()
    page = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", page)
    probe = tmp / f"probe-{report.parent.name}.html"
    probe.write_text(page.replace("</body>", PROBE + "</body>"))
    out = _chromium(
        f"--user-data-dir={tmp / 'profile'}", "--virtual-time-budget=70000", "--dump-dom",
        probe.as_uri(),
    )  # fmt: skip
    title = re.search(r"<title>(.*?)</title>", out.stdout, re.S)
    assert title and title.group(1).startswith("{"), out.stderr[-2000:]
    return json.loads(title.group(1).replace("&quot;", '"'))  # type: ignore[no-any-return]


def _screenshots(report: Path, tmp: Path, name: str) -> None:
    OUTPUT.mkdir(parents=True, exist_ok=True)
    for width, label in ((1280, "desktop"), (390, "phone")):
        shot = OUTPUT / f"{name}-{label}.png"
        shot.unlink(missing_ok=True)
        _chromium(
            f"--user-data-dir={tmp / 'shots'}", f"--window-size={width},2400",
            "--hide-scrollbars", f"--screenshot={shot}", report.as_uri(),
        )  # fmt: skip
        assert shot.is_file() and shot.stat().st_size > 20_000, shot
        assert int.from_bytes(shot.read_bytes()[16:20], "big") == width  # the PNG's width


def test_the_report_of_a_first_and_a_tracked_scan_opens_in_chromium(
    good_scan: SyntheticScan, later_scan: SyntheticScan, results_dir: Path, tmp_path: Path
) -> None:
    for scan_id, scan in (("rep-1", good_scan), ("rep-2", later_scan)):
        state = process_scan(scan_id, "pt-report", scan.path.as_uri(), return_state=True)
        assert state.is_completed(), state.message
    for scan_id in ("rep-1", "rep-2"):
        folder = results_dir / "pt-report" / scan_id
        manifest = Manifest.model_validate_json((folder / "manifest.json").read_text())
        report = folder / "report.html"
        assert manifest.artifacts.report == report.as_uri()
        page = report.read_text()
        # self-contained: nothing fetched from anywhere, scripts forbidden
        assert not re.search(r'(src|href)="(https?:|//|file:)', page)
        assert "Content-Security-Policy" in page and "<script" not in page
        # every keyframe, with the view it shows
        assert page.count('alt="keyframe at ') == len(manifest.artifacts.keyframes) > 0
        assert re.search(r'alt="keyframe at [\d.]+ s, (front|left|right|upper occlusal)"', page)
        seen = _probe(report, tmp_path)
        assert seen["errors"] == [] and seen["h1"] == 1 and seen["without_alt"] == 0, seen
        assert seen["images"] >= 3 and seen["loaded"] == seen["images"], seen
        assert seen["video"] == "played" and seen["time"] > 0, seen
        assert seen["duration"] == pytest.approx(manifest.artifacts.summary_video_seconds, abs=0.2)
        _screenshots(report, tmp_path, scan_id)
    tracked = (results_dir / "pt-report" / "rep-2" / "report.html").read_text()
    assert "Compared with scan <strong>rep-1</strong>" in tracked
    assert tracked.count("<h3>") == 5  # every standard view, its frames and figures
    first = (results_dir / "pt-report" / "rep-1" / "report.html").read_text()
    assert "No earlier scan" in first


def test_the_patient_page_links_every_scan(
    good_scan: SyntheticScan, later_scan: SyntheticScan, results_dir: Path, tmp_path: Path
) -> None:
    for scan_id, scan in (("pp-1", good_scan), ("pp-2", later_scan)):
        assert process_scan(
            scan_id, "pt-page", scan.path.as_uri(), return_state=True
        ).is_completed()
    assert main(["report", "pt-page"]) == 0
    page = results_dir / "pt-page" / "report.html"
    text = page.read_text()
    assert 'href="pp-1/report.html"' in text and 'href="pp-2/report.html"' in text
    seen = _probe(page, tmp_path)
    assert seen["errors"] == [] and seen["loaded"] == seen["images"] >= 3, seen
    assert main(["report", "nobody"]) == 1
