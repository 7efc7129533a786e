from __future__ import annotations

from pathlib import Path

import av
import numpy as np

from cv.images import decode_jpeg, encode_jpeg
from cv.summary.render import (
    SummaryFrame,
    choose_keyframes,
    choose_segments,
    contact_sheet,
    render_summary_video,
)


def test_segments_take_the_best_frame_of_each_part() -> None:
    frames = [
        SummaryFrame(t, s, u)
        for t, s, u in [
            (0, 5, True),
            (1, 9, True),
            (2, 50, False),
            (3, 7, True),
            (4, 1, True),
            (5, 2, True),
        ]
    ]
    assert choose_segments(frames, 3) == [1, 3, 5]  # usable beats sharper-but-unusable
    assert choose_segments(frames, 2) == [1, 3]
    assert choose_segments(frames, 100) == list(range(6))
    assert choose_segments([], 3) == []


def test_keyframes_are_sharp_and_diverse() -> None:
    # three clusters of near-identical embeddings; one frame per cluster is wanted
    rng = np.random.default_rng(0)
    centres = np.eye(3, 8, dtype=np.float32)
    emb = np.concatenate([c + 0.01 * rng.normal(size=(5, 8)) for c in centres]).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    sharp = list(rng.uniform(10, 20, 15))
    sharp[7] = 100.0  # the sharpest frame seeds the choice
    usable = [True] * 15
    usable[12] = False
    chosen = choose_keyframes(emb, sharp, usable, 3)
    assert 7 in chosen
    assert sorted(i // 5 for i in chosen) == [0, 1, 2]
    assert 12 not in choose_keyframes(emb, sharp, usable, 14)


def test_summary_video_is_browser_h264(tmp_path: Path) -> None:
    frames = [np.full((241, 321, 3), v, np.uint8) for v in (40, 120, 200)]
    info = [SummaryFrame(float(i), 10.0, i != 1, "front") for i in range(3)]
    path = tmp_path / "s.mp4"
    written = render_summary_video(path, frames, info, seconds_per_frame=0.5)
    assert written == 15
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        assert s.codec_context.name == "h264"
        assert s.codec_context.profile == "High"
        assert s.codec_context.pix_fmt == "yuv420p"
        assert (s.width, s.height) == (320, 240)
        assert sum(1 for _ in c.decode(s)) == 15
    head = path.read_bytes()[:4096]
    assert head.find(b"moov") < head.find(b"mdat") or b"mdat" not in head  # faststart


def test_contact_sheet_and_jpeg_roundtrip() -> None:
    frames = [np.full((120, 160, 3), v, np.uint8) for v in range(0, 250, 50)]
    info = [SummaryFrame(float(i), 1.0, True) for i in range(5)]
    sheet = contact_sheet(frames, info, columns=3, tile_width=80)
    assert sheet.shape == (2 * 60, 3 * 80, 3)
    back = decode_jpeg(encode_jpeg(sheet))
    assert back.shape == sheet.shape
