"""cv.model.viewdata: folder-per-class datasets on disk (written here with real JPEG and PNG
files), both layouts, the seeded held-out draw, the ValueErrors that name what is wrong, and
build_synthetic_dataset rendering small cv.synthetic scans into one whose labels, counts and
provenance agree with the files it wrote."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from cv.images import encode_jpeg, encode_png
from cv.model.viewdata import (
    OTHER,
    SyntheticDatasetSpec,
    build_synthetic_dataset,
    load_image,
    order_labels,
    read_dataset,
)
from cv.synthetic import VIEWS


def _images(folder: Path, n: int, suffix: str = ".jpg", start: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rgb = np.full((8, 8, 3), 128, np.uint8)
    paths = []
    for i in range(start, start + n):
        p = folder / f"{i:03d}{suffix}"
        p.write_bytes(encode_png(rgb) if suffix.lower() == ".png" else encode_jpeg(rgb))
        paths.append(p)
    return paths


def _names(pairs: tuple[tuple[Path, int], ...], labels: tuple[str, ...]) -> set[str]:
    return {f"{labels[c]}/{p.name}" for p, c in pairs}


def test_labels_are_the_standard_views_in_order_then_the_rest_sorted() -> None:
    assert order_labels(["zebra", "other", "left", "front", "molar"]) == (
        "front",
        "left",
        "other",
        "molar",
        "zebra",
    )


def test_a_flat_folder_holds_out_a_share_of_each_class(tmp_path: Path) -> None:
    for label, n in (("left", 10), ("front", 5), ("molar", 1)):
        _images(tmp_path / label, n)
    data = read_dataset(tmp_path, heldout_fraction=0.2, seed=1)
    assert data.labels == ("front", "left", "molar")
    held = Counter(data.labels[c] for _, c in data.heldout)
    train = Counter(data.labels[c] for _, c in data.train)
    assert held == {"left": 2, "front": 1}  # a class of one image keeps it for training
    assert train == {"left": 8, "front": 4, "molar": 1}
    everything = {f"{d.name}/{p.name}" for d in tmp_path.iterdir() for p in d.iterdir()}
    assert _names(data.train, data.labels) | _names(data.heldout, data.labels) == everything
    assert not _names(data.train, data.labels) & _names(data.heldout, data.labels)
    assert data.split == "20% of each class drawn at random (seed 1)"
    assert data.provenance == {}
    # even when the share would round up to it
    most = read_dataset(tmp_path, heldout_fraction=0.6, seed=1)
    assert Counter(most.labels[c] for _, c in most.heldout) == {"left": 6, "front": 3}
    assert [most.labels[c] for _, c in most.train].count("molar") == 1


def test_the_held_out_draw_is_seeded(tmp_path: Path) -> None:
    _images(tmp_path / "front", 20)
    _images(tmp_path / "left", 20)
    first = read_dataset(tmp_path, 0.25, seed=0).heldout
    assert len(first) == 10
    assert read_dataset(tmp_path, 0.25, seed=0).heldout == first
    assert read_dataset(tmp_path, 0.25, seed=1).heldout != first
    # within a class, frames are listed in file order
    assert [p for p, c in first if c == 0] == sorted(p for p, c in first if c == 0)


@pytest.mark.parametrize("heldout_name", ["heldout", "test", "val"])
def test_split_folders_are_taken_as_given(tmp_path: Path, heldout_name: str) -> None:
    _images(tmp_path / "train" / "front", 3)
    _images(tmp_path / "train" / "other", 2)
    _images(tmp_path / heldout_name / "front", 1)
    (tmp_path / "dataset.json").write_text(json.dumps({"synthetic": True, "generator": "me"}))
    data = read_dataset(tmp_path, heldout_fraction=0.9)
    assert data.labels == ("front", "other")
    assert [(p.parent.parent.name, c) for p, c in data.heldout] == [(heldout_name, 0)]
    assert Counter(c for _, c in data.train) == {0: 3, 1: 2}
    assert data.split == f"the {heldout_name}/ folder, as given"
    assert data.provenance == {"synthetic": True, "generator": "me"}


def test_every_class_keeps_a_training_frame(tmp_path: Path) -> None:
    _images(tmp_path / "front", 2)
    _images(tmp_path / "left", 5)
    data = read_dataset(tmp_path, heldout_fraction=0.8)
    assert {data.labels[c] for _, c in data.train} == {"front", "left"}


def test_a_held_out_class_the_training_split_lacks_is_named(tmp_path: Path) -> None:
    _images(tmp_path / "train" / "front", 2)
    _images(tmp_path / "train" / "left", 2)
    _images(tmp_path / "heldout" / "molar", 1)
    with pytest.raises(ValueError, match=r"heldout has classes with no training frames.*molar"):
        read_dataset(tmp_path)


def test_only_image_files_in_visible_folders_count(tmp_path: Path) -> None:
    _images(tmp_path / "front", 2, ".JPG")
    _images(tmp_path / "front", 1, ".png", start=5)
    _images(tmp_path / "left", 1, ".jpeg")
    (tmp_path / "front" / "notes.txt").write_text("not a frame")
    (tmp_path / "front" / "nested").mkdir()
    _images(tmp_path / ".thumbnails", 3)
    (tmp_path / "empty").mkdir()
    (tmp_path / "README.md").write_text("a dataset")
    data = read_dataset(tmp_path, heldout_fraction=0.0)
    assert data.labels == ("front", "left")
    assert sorted(p.name for p, _ in data.train) == ["000.JPG", "000.jpeg", "001.JPG", "005.png"]


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({"front": 3}, "needs at least two class folders of images"),
        ({"front": 3, "left": 0}, "needs at least two class folders of images"),
        ({"train/front": 2, "train/left": 2}, "needs at least two class folders of images"),
        ({}, "needs at least two class folders of images"),
    ],
    ids=["one-class", "one-class-and-an-empty-one", "train-without-held-out", "empty"],
)
def test_too_few_classes_are_a_value_error_naming_the_folder(
    tmp_path: Path, layout: dict[str, int], message: str
) -> None:
    root = tmp_path / "data"
    root.mkdir()
    for folder, n in layout.items():
        (root / folder).mkdir(parents=True)
        _images(root / folder, n)
    with pytest.raises(ValueError, match=f"{re.escape(str(root))} {message}"):
        read_dataset(root)


def test_a_missing_folder_is_a_value_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=f"{re.escape(str(tmp_path / 'nope'))} is not a folder"):
        read_dataset(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is not a folder"):
        read_dataset(tmp_path / "file")


def test_load_image_gives_rgb_pixels_of_jpeg_and_png_files(tmp_path: Path) -> None:
    rgb = np.zeros((12, 20, 3), np.uint8)
    rgb[..., 0] = 250  # red
    (tmp_path / "a.png").write_bytes(encode_png(rgb))
    (tmp_path / "a.jpg").write_bytes(encode_jpeg(rgb))
    np.testing.assert_array_equal(load_image(tmp_path / "a.png"), rgb)
    jpg = load_image(tmp_path / "a.jpg")
    assert jpg.shape == (12, 20, 3) and jpg.dtype == np.uint8
    assert np.abs(jpg.astype(int) - rgb.astype(int)).max() <= 8


def test_load_image_of_a_file_that_is_not_an_image_is_a_value_error(tmp_path: Path) -> None:
    (tmp_path / "bad.jpg").write_text("not an image")
    with pytest.raises(ValueError, match="not a decodable JPEG"):
        load_image(tmp_path / "bad.jpg")


def test_a_bad_image_in_a_dataset_is_named(tmp_path: Path) -> None:
    (tmp_path / "s0003-f00042.jpg").write_text("not an image")
    with pytest.raises(ValueError, match="s0003-f00042.jpg"):
        load_image(tmp_path / "s0003-f00042.jpg")


SPEC = SyntheticDatasetSpec(
    train_seeds=(0, 1),
    heldout_seeds=(100,),
    width=64,
    height=48,
    fps=4.0,
    seconds=3.0,
    defect_fraction=0.2,
    off_target_per_scan=2,
)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Counter[str]]]:
    root = tmp_path_factory.mktemp("views") / "data"
    return root, build_synthetic_dataset(root, SPEC)


def _files(root: Path, split: str) -> list[Path]:
    return sorted((root / split).glob("*/*.jpg"))


def test_the_counts_returned_are_the_files_written(
    synthetic: tuple[Path, dict[str, Counter[str]]],
) -> None:
    root, counts = synthetic
    for split in ("train", "heldout"):
        assert Counter(p.parent.name for p in _files(root, split)) == counts[split]
    provenance = json.loads((root / "dataset.json").read_text())
    assert provenance["synthetic"] is True
    assert provenance["frames"] == {k: dict(c) for k, c in counts.items()}
    assert provenance["spec"]["train_seeds"] == [0, 1] and provenance["spec"]["width"] == 64


def test_held_out_frames_come_only_from_held_out_scans(
    synthetic: tuple[Path, dict[str, Counter[str]]],
) -> None:
    root, _ = synthetic
    assert {p.name[:5] for p in _files(root, "train")} == {"s0000", "s0001"}
    assert {p.name[:5] for p in _files(root, "heldout")} == {"s0100"}
    data = read_dataset(root)
    assert data.split == "the heldout/ folder, as given" and data.provenance["synthetic"] is True
    assert set(data.labels) <= set(VIEWS) | {OTHER} and OTHER in data.labels
    assert load_image(data.train[0][0]).shape == (48, 64, 3)


@pytest.mark.parametrize("seed", [0, 1, 100])
def test_each_scan_labels_defects_and_off_target_frames_other_and_the_rest_by_view(
    synthetic: tuple[Path, dict[str, Counter[str]]], seed: int
) -> None:
    root, _ = synthetic
    split = "heldout" if seed in SPEC.heldout_seeds else "train"
    mine = [p for p in _files(root, split) if p.name.startswith(f"s{seed:04d}-")]
    off_target = [p for p in mine if "-o" in p.name]
    frames = sorted((p for p in mine if "-f" in p.name), key=lambda p: p.name)
    assert len(off_target) == SPEC.off_target_per_scan
    assert {p.parent.name for p in off_target} == {OTHER}
    # frames 0..n-1, each once; dark and glaring ones (a share each) are "other"
    n = len(frames)
    assert [int(p.stem.split("-f")[1]) for p in frames] == list(range(n))
    assert 0.8 * SPEC.seconds * SPEC.fps - 1 <= n <= 1.2 * SPEC.seconds * SPEC.fps + 1
    defects = [p for p in frames if p.parent.name == OTHER]
    assert len(defects) == 2 * round(n * SPEC.defect_fraction)
    # the others carry the view the sweep shows: front first, in the standard order
    views = [VIEWS.index(p.parent.name) for p in frames if p.parent.name != OTHER]
    assert views == sorted(views) and len(set(views)) >= 3
