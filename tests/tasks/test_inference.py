"""load_model and run_inference (tasks/inference.py), and the readers of what it stores.

The model tests load the shipped view classifier, pinned (no Prefect Variable to read, no
server), on the CPU, once for the module (about half a second), and classify the kept frames
extract_frames stores from the synthetic ``good_scan`` into a file:// results store; the task
functions are called directly with their run logger disabled. KeptImages and the readers
(load_embeddings, load_views) need no model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from prefect.logging import disable_run_logger

from cv.errors import ProcessingError, Reason, ScanError
from cv.images import decode_jpeg
from cv.model.predictions import EMBEDDING_DIM, FramePredictions
from cv.synthetic import VIEWS, SyntheticScan
from scanflow.contracts.options import ModelRef, ScanOptions
from scanflow.contracts.stages import (
    MIN_VIEW_CONFIDENCE,
    FramesResult,
    InferenceResult,
    InferenceWhileDecoding,
    ModelInfo,
)
from scanflow.models.cache import load_predictions, save_predictions
from scanflow.models.registry import BACKBONE_IDENTITY, DEFAULT_PACKAGE
from scanflow.storage import FileStore
from tasks.frames import extract_frames
from tasks.inference import (
    KeptImages,
    load_embeddings,
    load_model,
    load_views,
    run_inference,
)

COLUMNS = ["kept_index", "frame_index", "time_s", "usable", "view", "confidence"]


@pytest.fixture(scope="module")
def frames(good_scan: SyntheticScan, tmp_path_factory: pytest.TempPathFactory) -> FramesResult:
    """good_scan's kept frames, extracted without a model (nothing predicted ahead)."""
    base = tmp_path_factory.mktemp("kept")
    with disable_run_logger():
        return extract_frames.fn(
            str(good_scan.path), (base / "scan").as_uri(), str(base / "work"), ScanOptions()
        )


# -- load_model and run_inference (the shipped model) ---------------------------------------


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def model(cache_dir: str) -> ModelInfo:
    with disable_run_logger():
        return load_model.fn(DEFAULT_PACKAGE, "cpu", cache_dir)


@pytest.fixture(scope="module")
def classified(
    good_scan: SyntheticScan,
    model: ModelInfo,
    cache_dir: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[FramesResult, InferenceResult]:
    """good_scan extracted with the model (it classifies while decoding), then inferred."""
    base = tmp_path_factory.mktemp("classified")
    scan_uri = (base / "scan").as_uri()
    with disable_run_logger():
        frames = extract_frames.fn(
            str(good_scan.path), scan_uri, str(base / "work"), ScanOptions(), model, cache_dir
        )
        return frames, run_inference.fn(frames, scan_uri, model, 4, cache_dir)


def _infer(frames: FramesResult, folder: Path, model: ModelInfo, cache_dir: str) -> InferenceResult:
    with disable_run_logger():
        return run_inference.fn(frames, (folder / "scan").as_uri(), model, 4, cache_dir, 1)


def test_load_model_records_the_pinned_package_it_loaded(model: ModelInfo) -> None:
    assert (model.name, model.version, model.sha256, model.uri) == (
        DEFAULT_PACKAGE.name,
        DEFAULT_PACKAGE.version,
        DEFAULT_PACKAGE.sha256,
        DEFAULT_PACKAGE.uri,
    )
    assert model.source == "pinned in the run's options"
    assert model.device == "cpu"
    assert model.labels == [*VIEWS, "other"]
    assert model.backbone_sha256 == BACKBONE_IDENTITY.sha256


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"sha256": "f" * 64}, "expected ffffffffffff"),  # the bytes are not the pinned ones
        ({"name": "another-model"}, "asks for name 'another-model'"),
        ({"version": "9.9.9"}, "asks for version '9.9.9'"),
    ],
)
def test_load_model_refuses_a_package_that_is_not_the_one_pinned(
    change: dict[str, str], says: str, cache_dir: str
) -> None:
    pinned = DEFAULT_PACKAGE.model_copy(update=change)
    with pytest.raises(ProcessingError) as caught, disable_run_logger():
        load_model.fn(pinned, "cpu", cache_dir)
    assert caught.value.reason is Reason.MODEL_ERROR
    assert says in caught.value.message


def test_load_model_refuses_a_reference_without_a_sha256(cache_dir: str) -> None:
    pinned = ModelRef(uri=DEFAULT_PACKAGE.uri)
    with pytest.raises(ProcessingError) as caught, disable_run_logger():
        load_model.fn(pinned, "cpu", cache_dir)
    assert caught.value.reason is Reason.MODEL_ERROR
    assert "needs a uri and a sha256" in caught.value.message


def test_run_inference_stores_the_predictions_made_while_decoding(
    classified: tuple[FramesResult, InferenceResult], model: ModelInfo
) -> None:
    frames, result = classified
    ahead = frames.inference
    assert ahead is not None and ahead.model_sha256 == model.sha256
    pred = load_predictions(ahead.path)
    # what was predicted while decoding is what is stored: nothing computed again
    assert result.threads == ahead.threads
    assert result.frames == len(frames.kept) == 12
    assert result.frames_per_second == pytest.approx(12 / ahead.seconds)
    embeddings = load_embeddings(result.embeddings_uri)
    assert embeddings.shape == (12, EMBEDDING_DIM) and embeddings.dtype == np.float32
    assert np.array_equal(embeddings, pred.embeddings)
    labels, rows = load_views(result.views_uri)
    assert labels == model.labels
    assert [r["view"] for r in rows] == [labels[int(v)] for v in pred.views]
    assert [r["confidence"] for r in rows] == [round(float(c), 4) for c in pred.confidence]


def test_views_json_has_one_row_per_kept_frame_in_order(
    classified: tuple[FramesResult, InferenceResult], model: ModelInfo, good_scan: SyntheticScan
) -> None:
    frames, result = classified
    assert result.views_uri.endswith("/scan/views.json")
    doc = json.loads(FileStore.path(result.views_uri).read_text())
    assert doc["model"] == {"name": model.name, "version": model.version, "sha256": model.sha256}
    assert doc["columns"] == COLUMNS
    _, rows = load_views(result.views_uri)
    assert [r["kept_index"] for r in rows] == list(range(12))
    assert [(r["frame_index"], r["time_s"], r["usable"]) for r in rows] == [
        (k.index, round(k.time_s, 4), k.usable) for k in frames.kept
    ]
    # the rows line up with the frames: the usable ones name the view the scan truly shows
    usable = [r for r in rows if r["usable"]]
    right = sum(r["view"] == good_scan.frames[r["frame_index"]].view for r in usable)
    assert right >= len(usable) - 1


def test_the_coverage_returned_counts_the_usable_frames_of_each_view(
    classified: tuple[FramesResult, InferenceResult],
) -> None:
    _, result = classified
    _, rows = load_views(result.views_uri)
    usable = [r for r in rows if r["usable"]]
    sure = [r for r in usable if r["confidence"] >= MIN_VIEW_CONFIDENCE]
    cov = result.views
    assert cov.usable == len(usable) == 11
    assert cov.uncertain == len(usable) - len(sure)
    assert cov.frames == {v: sum(r["view"] == v for r in sure) for v in [*VIEWS, "other"]}
    assert cov.missing == [v for v in VIEWS if cov.frames[v] < cov.min_frames]
    assert cov.min_confidence == MIN_VIEW_CONFIDENCE


def test_predictions_of_another_model_are_not_used(
    frames: FramesResult, model: ModelInfo, cache_dir: str, tmp_path: Path
) -> None:
    stale = _three_predictions(tmp_path)  # had they been used, 3 rows for 12 frames would fail
    others = frames.model_copy(
        update={"inference": stale.model_copy(update={"model_sha256": "e" * 64})}
    )
    result = _infer(others, tmp_path, model, cache_dir)
    assert result.threads == 1  # computed here, on the threads it was given
    assert len(load_views(result.views_uri)[1]) == 12
    assert load_embeddings(result.embeddings_uri).shape == (12, EMBEDDING_DIM)


def test_predictions_that_do_not_match_the_kept_frames_fail_the_stage(
    frames: FramesResult, model: ModelInfo, cache_dir: str, tmp_path: Path
) -> None:
    ahead = _three_predictions(tmp_path).model_copy(update={"model_sha256": model.sha256})
    with pytest.raises(RuntimeError, match="3 predictions for 12 kept frames"):
        _infer(frames.model_copy(update={"inference": ahead}), tmp_path, model, cache_dir)
    assert not (tmp_path / "scan").exists()  # nothing stored


def _three_predictions(folder: Path) -> InferenceWhileDecoding:
    """Predictions for 3 frames, saved as extract_frames saves its own."""
    path = folder / "predictions.npz"
    rng = np.random.default_rng(0)
    save_predictions(
        FramePredictions(
            rng.random((3, EMBEDDING_DIM), dtype=np.float32),
            np.zeros(3, np.int64),
            np.ones(3, np.float32),
        ),
        path,
    )
    return InferenceWhileDecoding(path=str(path), model_sha256="", seconds=1.0, threads=7)


# -- KeptImages -----------------------------------------------------------------------------


def test_kept_images_is_a_sequence_of_the_kept_frames_pixels(frames: FramesResult) -> None:
    images = KeptImages(frames.kept)
    assert len(images) == 12
    first = decode_jpeg(Path(frames.kept[0].local_path).read_bytes())
    assert np.array_equal(images[0], first)
    assert np.array_equal(images[-1], decode_jpeg(Path(frames.kept[-1].local_path).read_bytes()))
    batch = images[2:5]
    assert isinstance(batch, list) and len(batch) == 3
    for image, k in zip(batch, frames.kept[2:5], strict=True):
        assert np.array_equal(image, decode_jpeg(Path(k.local_path).read_bytes()))
    assert images[20:] == []
    with pytest.raises(IndexError):
        images[12]


def test_kept_images_reads_the_store_when_the_run_has_no_local_copy(
    frames: FramesResult, tmp_path: Path
) -> None:
    moved = [k.model_copy(update={"local_path": str(tmp_path / "x.jpg")}) for k in frames.kept]
    assert np.array_equal(KeptImages(moved)[3], KeptImages(frames.kept)[3])
    lost = moved[0].model_copy(update={"uri": (tmp_path / "gone.jpg").as_uri()})
    with pytest.raises(ScanError) as caught:
        KeptImages([lost])[0]
    assert caught.value.reason is Reason.NOT_FOUND


# -- load_embeddings and load_views ---------------------------------------------------------


def _saved(folder: Path, array: np.ndarray, version: tuple[int, int] | None = None) -> str:
    path = folder / "embeddings.npy"
    if version is None:
        np.save(path, array)
    else:
        with path.open("wb") as f:
            np.lib.format.write_array(f, array, version=version)
    return path.as_uri()


def test_load_embeddings_reads_what_np_save_wrote_as_a_read_only_view(tmp_path: Path) -> None:
    array = np.random.default_rng(1).random((5, EMBEDDING_DIM), dtype=np.float32)
    got = load_embeddings(_saved(tmp_path, array))
    assert got.dtype == np.float32 and np.array_equal(got, array)
    assert not got.flags.writeable  # a view over the fetched bytes, not a copy


@pytest.mark.parametrize(
    "array",
    [
        np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4)),
        np.arange(6, dtype=">f8").reshape(2, 3),  # another byte order
        np.zeros((0, EMBEDDING_DIM), np.float32),  # a scan without kept frames
    ],
    ids=["fortran-order", "big-endian", "empty"],
)
def test_load_embeddings_reads_any_layout_np_save_writes(array: np.ndarray, tmp_path: Path) -> None:
    got = load_embeddings(_saved(tmp_path, array))
    assert got.shape == array.shape and got.dtype == array.dtype
    assert np.array_equal(got, array)


def test_load_embeddings_reads_version_2_headers(tmp_path: Path) -> None:
    array = np.arange(10, dtype=np.float32).reshape(2, 5)
    assert np.array_equal(load_embeddings(_saved(tmp_path, array, (2, 0))), array)


def test_load_views_gives_one_dict_per_row_by_column(tmp_path: Path) -> None:
    path = tmp_path / "views.json"
    rows = [[0, 3, 0.2, True, "front", 0.91], [1, 9, 0.6, False, "other", 0.4]]
    path.write_text(json.dumps({"labels": ["front", "other"], "columns": COLUMNS, "rows": rows}))
    labels, got = load_views(path.as_uri())
    assert labels == ["front", "other"]
    assert got == [dict(zip(COLUMNS, r, strict=True)) for r in rows]
    assert got[1]["view"] == "other" and got[1]["usable"] is False


def test_load_views_refuses_a_row_that_does_not_match_the_columns(tmp_path: Path) -> None:
    path = tmp_path / "views.json"
    path.write_text(json.dumps({"labels": [], "columns": COLUMNS, "rows": [[0, 3, 0.2]]}))
    with pytest.raises(ValueError):
        load_views(path.as_uri())
