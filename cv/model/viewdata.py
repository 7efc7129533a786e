"""Folder-per-class datasets of labelled frames for the view head.

    DATA_DIR/
     ├── train/<label>/*.jpg      (optional split folders; "heldout", "test" or "val"
     └── heldout/<label>/*.jpg     for the held-out part)
    or
    DATA_DIR/<label>/*.jpg         (held-out frames are then drawn at random, per class)

``build_synthetic_dataset`` writes one from cv.synthetic renders: each frame labelled with
the view its centre shows, dark and glaring frames (nothing to see) and off-target frames
(the scope pointed out of the mouth) labelled ``other``. Held-out frames come from scans
with seeds never used for training, so no training scan leaks into the evaluation.
"""

from __future__ import annotations

import json
import random
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import numpy.typing as npt

from cv.images import decode_jpeg, encode_jpeg
from cv.model.predictions import VIEW_LABELS
from cv.synthetic import ScanSpec, render_scan

OTHER = "other"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
HELDOUT_NAMES = ("heldout", "test", "val")
PROVENANCE = "dataset.json"  # optional: where the frames came from (synthetic or not)


@dataclass(frozen=True)
class SyntheticDatasetSpec:
    """Which synthetic scans to render and how to label their frames."""

    train_seeds: tuple[int, ...] = tuple(range(8))
    heldout_seeds: tuple[int, ...] = (100, 101, 102)
    width: int = 480
    height: int = 360
    fps: float = 6.0
    seconds: float = 10.0  # per scan, varied by ±20% with the seed
    defect_fraction: float = 0.08  # of frames rendered dark, and again glaring
    off_target_per_scan: int = 8


def _off_target(rng: np.random.Generator, width: int, height: int) -> npt.NDArray[np.uint8]:
    """A frame that is not the inside of a mouth: smooth colour fields and blobs."""
    small = rng.integers(0, 256, (3, 4, 3)).astype(np.uint8)
    img = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    for _ in range(int(rng.integers(1, 5))):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        axes = (
            int(rng.integers(width // 10, width // 2)),
            int(rng.integers(height // 10, height // 2)),
        )
        cv2.ellipse(img, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1)
    noise = rng.normal(0, 6, img.shape)
    img = np.clip(img.astype(np.float64) + noise, 0, 255).astype(np.uint8)
    return np.asarray(cv2.GaussianBlur(img, (0, 0), float(rng.uniform(0.5, 3.0))), np.uint8)


def _decode_all(path: Path) -> list[npt.NDArray[np.uint8]]:
    with av.open(str(path)) as container:
        return [
            np.asarray(f.to_ndarray(format="rgb24"), np.uint8)
            for f in container.decode(container.streams.video[0])
        ]


def build_synthetic_dataset(root: Path, spec: SyntheticDatasetSpec) -> dict[str, Counter[str]]:
    """Render synthetic scans and write their frames into a folder-per-class dataset.

    Args:
        root: the dataset folder (``train/`` and ``heldout/`` are made under it).
        spec: seeds, size, length and how many defect and off-target frames.
    Returns:
        Frames written per split and label.
    """
    counts: dict[str, Counter[str]] = {"train": Counter(), "heldout": Counter()}
    splits = [("train", s) for s in spec.train_seeds] + [("heldout", s) for s in spec.heldout_seeds]
    with tempfile.TemporaryDirectory(prefix="scanflow-views-") as tmp:
        for split, seed in splits:
            rng = np.random.default_rng(10_000 + seed)
            seconds = spec.seconds * float(rng.uniform(0.8, 1.2))
            n = max(1, int(round(seconds * spec.fps)))
            k = int(round(n * spec.defect_fraction))
            picks = rng.permutation(n)
            scan = render_scan(
                Path(tmp) / f"scan-{seed}.mp4",
                ScanSpec(
                    width=spec.width,
                    height=spec.height,
                    fps=spec.fps,
                    duration_s=seconds,
                    seed=seed,
                    dark=frozenset(int(i) for i in picks[:k]),
                    glare=frozenset(int(i) for i in picks[k : 2 * k]),
                ),
            )
            frames = _decode_all(scan.path)
            for rgb, truth in zip(frames, scan.frames, strict=False):
                label = OTHER if truth.dark or truth.glare else truth.view
                _write(root / split / label / f"s{seed:04d}-f{truth.index:05d}.jpg", rgb)
                counts[split][label] += 1
            for j in range(spec.off_target_per_scan):
                rgb = _off_target(rng, spec.width, spec.height)
                _write(root / split / OTHER / f"s{seed:04d}-o{j:03d}.jpg", rgb)
                counts[split][OTHER] += 1
    provenance = {
        "synthetic": True,
        "generator": "cv/synthetic.py via cv/model/viewdata.py",
        "spec": asdict(spec),
        "frames": {k: dict(sorted(c.items())) for k, c in counts.items()},
    }
    (root / PROVENANCE).write_text(json.dumps(provenance, indent=2) + "\n")
    return counts


def _write(path: Path, rgb: npt.NDArray[np.uint8]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_jpeg(rgb))


@dataclass(frozen=True)
class LabelledFrames:
    """A dataset split into training and held-out frames, with its class names."""

    labels: tuple[str, ...]
    train: tuple[tuple[Path, int], ...]
    heldout: tuple[tuple[Path, int], ...]
    split: str  # how the held-out frames were chosen, in words
    provenance: dict[str, Any]  # dataset.json, if the folder has one


def order_labels(names: Sequence[str]) -> tuple[str, ...]:
    """The standard views in their usual order, then any other class names sorted."""
    known = [v for v in VIEW_LABELS if v in names]
    return tuple(known + sorted(set(names) - set(known)))


def _class_dirs(folder: Path) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for d in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(f for f in d.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        if files:
            out[d.name] = files
    return out


def read_dataset(root: Path, heldout_fraction: float = 0.2, seed: int = 0) -> LabelledFrames:
    """List a folder-per-class dataset.

    Args:
        root: ``root/train/<label>/`` with ``root/heldout|test|val/<label>/``, or
            ``root/<label>/``.
        heldout_fraction: without split folders, the share of each class held out.
        seed: without split folders, seeds the draw of held-out frames.
    Returns:
        Paths with class indices, and the class names in index order.
    Raises:
        ValueError: when the folder holds fewer than two classes of images, or a split
            folder has a class the training split lacks.
    """
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder")
    heldout_dir = next((root / n for n in HELDOUT_NAMES if (root / n).is_dir()), None)
    if (root / "train").is_dir() and heldout_dir is not None:
        train_dirs, held_dirs = _class_dirs(root / "train"), _class_dirs(heldout_dir)
        extra = set(held_dirs) - set(train_dirs)
        if extra:
            raise ValueError(f"{heldout_dir} has classes with no training frames: {extra}")
        split = f"the {heldout_dir.name}/ folder, as given"
    else:
        all_dirs = _class_dirs(root)
        rng = random.Random(seed)
        train_dirs, held_dirs = {}, {}
        for label, files in all_dirs.items():
            files = files[:]
            rng.shuffle(files)
            # every class keeps a training frame, whatever the fraction
            k = min(round(len(files) * heldout_fraction), len(files) - 1)
            held_dirs[label], train_dirs[label] = sorted(files[:k]), sorted(files[k:])
        split = f"{heldout_fraction:.0%} of each class drawn at random (seed {seed})"
    labels = order_labels(list(train_dirs))
    if len(labels) < 2:
        raise ValueError(f"{root} needs at least two class folders of images")
    index = {lab: i for i, lab in enumerate(labels)}

    def pairs(dirs: dict[str, list[Path]]) -> tuple[tuple[Path, int], ...]:
        return tuple((p, index[lab]) for lab in labels for p in dirs.get(lab, []))

    prov_path = root / PROVENANCE
    provenance = json.loads(prov_path.read_text()) if prov_path.is_file() else {}
    return LabelledFrames(labels, pairs(train_dirs), pairs(held_dirs), split, provenance)


def load_image(path: Path) -> npt.NDArray[np.uint8]:
    """RGB pixels of a dataset image; a bad one is named (a dataset has thousands)."""
    try:
        return decode_jpeg(path.read_bytes())
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc
