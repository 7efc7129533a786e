"""The summary plays in a real browser: headless Chromium (Debian's) loads it in a <video>
element over HTTP on loopback and reaches ``canplay`` with the right duration. An MPEG-4
Part 2 ("mp4v") file, which browsers refuse, is the control that shows the check can fail."""

from __future__ import annotations

import functools
import http.server
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import pytest

from cv.summary.render import SUMMARY_FPS, SummaryFrame, render_summary_video

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed"),
]
PAGE = """<html><head><title>loading</title></head><body>
<video id="v" src="{src}" preload="auto" muted></video>
<script>
const v = document.getElementById('v');
v.addEventListener('canplay', () => {{ document.title = 'canplay ' + v.duration; }});
v.addEventListener('error', () => {{ document.title = 'error ' + (v.error && v.error.code); }});
</script></body></html>"""


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _title_in_browser(root: Path, base: str, video: str) -> str:
    (root / "page.html").write_text(PAGE.format(src=video))
    out = subprocess.run(
        [
            CHROMIUM or "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={root / 'profile'}",
            "--virtual-time-budget=10000",
            "--dump-dom",
            f"{base}/page.html",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    match = re.search(r"<title>(.*?)</title>", out.stdout)
    return match.group(1) if match else f"no page: {out.stderr[-300:]}"


def test_summary_plays_in_chromium(site: tuple[Path, str]) -> None:
    root, base = site
    frames = [np.full((360, 640, 3), (30 * i) % 255, np.uint8) for i in range(7)]
    info = [SummaryFrame(float(i), 50.0, True, "front") for i in range(7)]
    written = render_summary_video(root / "summary.mp4", frames, info, seconds_per_frame=0.5)
    title = _title_in_browser(root, base, "summary.mp4")
    assert title.startswith("canplay"), title
    assert float(title.split()[1]) == pytest.approx(written / SUMMARY_FPS, abs=0.11)


def test_an_mp4v_file_does_not_play(site: tuple[Path, str]) -> None:
    root, base = site
    with av.open(str(root / "mp4v.mp4"), "w") as c:
        s = c.add_stream("mpeg4", rate=10)
        s.width, s.height, s.pix_fmt = 320, 240, "yuv420p"
        for i in range(20):
            frame = av.VideoFrame.from_ndarray(
                np.full((240, 320, 3), i * 10, np.uint8), format="rgb24"
            )
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    assert _title_in_browser(root, base, "mp4v.mp4").startswith("error")
