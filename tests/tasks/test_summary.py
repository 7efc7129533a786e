"""render_summary (tasks/summary.py): summary.mp4, the contact sheet and the keyframes it
writes into a file:// results store, decoded back with PyAV and OpenCV.

Its inputs are real stage outputs: the kept frames extract_frames stores from the synthetic
``good_scan``, and a views.json and embeddings.npy written in run_inference's format from
the scan's known truth (each kept frame's true view, one embedding direction per view), so
the keyframes to expect are known without a model. Called directly, run logger disabled.
"""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
from prefect.logging import disable_run_logger

from cv.images import decode_jpeg
from cv.model.predictions import EMBEDDING_DIM
from cv.summary.render import SUMMARY_FPS
from cv.synthetic import VIEWS, SyntheticScan
from scanflow.contracts.options import ScanOptions
from scanflow.contracts.stages import (
    FramesResult,
    InferenceResult,
    ModelInfo,
    SummaryResult,
    ViewCoverage,
)
from scanflow.storage import FileStore
from tasks.frames import extract_frames, load_frame
from tasks.summary import render_summary

LABELS = [*VIEWS, "other"]
COLUMNS = ["kept_index", "frame_index", "time_s", "usable", "view", "confidence"]


@pytest.fixture(scope="module")
def stages(
    good_scan: SyntheticScan, tmp_path_factory: pytest.TempPathFactory
) -> tuple[FramesResult, InferenceResult, Path]:
    """extract_frames' result, an InferenceResult whose files hold the truth, the scan folder."""
    base = tmp_path_factory.mktemp("summary")
    scan = base / "results" / "pt-1" / "scan-1"
    with disable_run_logger():
        frames = extract_frames.fn(
            str(good_scan.path), scan.as_uri(), str(base / "work"), ScanOptions()
        )
    views = [good_scan.frames[k.index].view for k in frames.kept]
    rows = [
        [i, k.index, round(k.time_s, 4), k.usable, v, 0.9]
        for i, (k, v) in enumerate(zip(frames.kept, views, strict=True))
    ]
    (scan / "views.json").write_text(
        json.dumps({"labels": LABELS, "columns": COLUMNS, "rows": rows})
    )
    embeddings = np.zeros((len(views), EMBEDDING_DIM), np.float32)
    for i, v in enumerate(views):
        embeddings[i, LABELS.index(v)] = 1.0  # frames of one view are alike, views differ
    np.save(scan / "embeddings.npy", embeddings)
    inference = InferenceResult(
        embeddings_uri=(scan / "embeddings.npy").as_uri(),
        views_uri=(scan / "views.json").as_uri(),
        model=ModelInfo(name="truth", version="0", sha256="0" * 64, device="cpu"),
        views=ViewCoverage(
            frames={}, uncertain=0, usable=0, missing=[], min_confidence=0.5, min_frames=1
        ),
        frames=len(views),
        frames_per_second=1.0,
    )
    return frames, inference, scan


def _render(
    stages: tuple[FramesResult, InferenceResult, Path], work: Path, **options: float
) -> SummaryResult:
    frames, inference, scan = stages
    work.mkdir(parents=True, exist_ok=True)
    with disable_run_logger():
        return render_summary.fn(
            frames, inference, scan.as_uri(), str(work), ScanOptions(**options)
        )


def _decode_video(uri: str) -> list[np.ndarray]:
    with av.open(str(FileStore.path(uri))) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.codec_context.pix_fmt) == ("h264", "yuv420p")
        return [f.to_ndarray(format="rgb24") for f in container.decode(stream)]


def test_the_summary_video_shows_every_kept_frame_for_half_a_second(
    stages: tuple[FramesResult, InferenceResult, Path], tmp_path: Path
) -> None:
    frames, _, scan = stages
    result = _render(stages, tmp_path)
    assert result.video_uri == (scan / "summary.mp4").as_uri()
    decoded = _decode_video(result.video_uri)
    # 12 kept frames fit in summary_max_s (20 s): each shown 0.5 s at SUMMARY_FPS
    assert len(decoded) == result.video_frames == 12 * 5
    assert result.video_seconds == pytest.approx(result.video_frames / SUMMARY_FPS)
    assert decoded[0].shape == (240, 320, 3)
    # the video's frames are the kept frames, in order (under an overlay of figures)
    for i, kept in enumerate(frames.kept):
        shown = decoded[i * 5 + 2].astype(int)
        assert np.median(np.abs(shown - load_frame(kept))) < 12, i


def test_a_short_summary_shows_the_best_frame_of_each_part_of_the_scan(
    stages: tuple[FramesResult, InferenceResult, Path], tmp_path: Path
) -> None:
    frames, _, _ = stages
    result = _render(stages, tmp_path, summary_max_s=2.0)  # 4 frames of 0.5 s
    decoded = _decode_video(result.video_uri)
    assert len(decoded) == result.video_frames == 4 * 5
    assert result.video_seconds == pytest.approx(2.0)
    # the parts are kept frames 0-2, 3-5, 6-8 and 9-11; in the second, frame 3 is blurred
    assert not frames.kept[3].usable
    for part, frame in enumerate(decoded[2::5]):
        best = max(frames.kept[3 * part : 3 * part + 3], key=lambda k: (k.usable, k.sharpness))
        errors = [np.median(np.abs(frame.astype(int) - load_frame(k))) for k in frames.kept]
        assert frames.kept[int(np.argmin(errors))] == best, part


def test_one_keyframe_is_chosen_per_view_each_a_stored_copy_of_its_kept_frame(
    stages: tuple[FramesResult, InferenceResult, Path],
    good_scan: SyntheticScan,
    tmp_path: Path,
) -> None:
    frames, _, scan = stages
    result = _render(stages, tmp_path, keyframes=12)
    # as many as there are distinct views: a sixth frame would repeat one
    assert len(result.keyframes) == len(VIEWS)
    kept = [frames.kept[k.kept_index] for k in result.keyframes]
    assert sorted(good_scan.frames[k.index].view for k in kept) == sorted(VIEWS)
    assert all(k.usable for k in kept)
    assert [k.kept_index for k in result.keyframes] == sorted(
        k.kept_index for k in result.keyframes
    )
    stored = sorted(p.name for p in (scan / "keyframes").iterdir())
    assert stored == sorted(f"{k.index:06d}.jpg" for k in kept)
    for key, k in zip(result.keyframes, kept, strict=True):
        assert key.uri == (scan / "keyframes" / f"{k.index:06d}.jpg").as_uri()
        assert (key.time_s, key.sharpness) == (k.time_s, k.sharpness)
        image = decode_jpeg(FileStore.path(key.uri).read_bytes())
        assert image.shape == (240, 320, 3)
        assert np.abs(image.astype(int) - load_frame(k)).mean() < 3


def test_fewer_keyframes_when_the_run_asks_for_fewer(
    stages: tuple[FramesResult, InferenceResult, Path], tmp_path: Path
) -> None:
    frames, _, _ = stages
    result = _render(stages, tmp_path, keyframes=2)
    assert len(result.keyframes) == 2
    # the sharpest usable kept frame comes first in the choice
    sharpest = max((k for k in frames.kept if k.usable), key=lambda k: k.sharpness)
    assert sharpest.index in {frames.kept[k.kept_index].index for k in result.keyframes}


def test_the_contact_sheet_tiles_the_keyframes_in_order(
    stages: tuple[FramesResult, InferenceResult, Path], tmp_path: Path
) -> None:
    frames, _, scan = stages
    result = _render(stages, tmp_path)
    assert result.contact_sheet_uri == (scan / "contact_sheet.jpg").as_uri()
    sheet = decode_jpeg(FileStore.path(result.contact_sheet_uri).read_bytes()).astype(int)
    # 5 keyframes, 4 to a row, 320x240 tiles: two rows, the second with one tile
    assert sheet.shape == (2 * 240, 4 * 320, 3)
    for i, key in enumerate(result.keyframes):
        r, c = divmod(i, 4)
        tile = sheet[r * 240 : (r + 1) * 240, c * 320 : (c + 1) * 320]
        assert np.median(np.abs(tile - load_frame(frames.kept[key.kept_index]))) < 12, i
    background = sheet[240 + 8 :, 320 + 8 :]  # away from the JPEG's blur at the tile's edge
    assert np.abs(background - 24).mean() < 2  # the rest is the sheet's background
