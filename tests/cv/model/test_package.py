"""Model packages: what training writes, and every way a package can be bad."""

from __future__ import annotations

import dataclasses
import json
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from cv.errors import ProcessingError, Reason, ScanError
from cv.model.heads import Classifier, ViewHead, classify_frames
from cv.model.network import ModelIdentity, sha256_file
from cv.model.package import open_package
from cv.model.predictions import VIEW_LABELS
from cv.model.viewdata import read_dataset
from cv.synthetic import ScanSpec, render_scan
from scanflow.contracts.options import ModelRef
from scanflow.models.registry import BACKBONE, DEFAULT_PACKAGE, load_package

CPU = torch.device("cpu")


def _load(archive: Path, cache: Path, sha256: str | None = None) -> object:
    ref = ModelRef(uri=archive.as_uri(), sha256=sha256 or sha256_file(archive))
    return load_package(ref, cache, CPU)


def _model_error(archive: Path, cache: Path, sha256: str | None = None) -> str:
    with pytest.raises(ProcessingError) as err:
        _load(archive, cache, sha256)
    assert err.value.reason is Reason.MODEL_ERROR
    return err.value.message


def test_dataset_is_folder_per_class_with_heldout_scans(view_dataset: Path) -> None:
    data = read_dataset(view_dataset)
    assert data.labels == VIEW_LABELS
    assert data.provenance["synthetic"] is True
    train_scans = {p.name.split("-")[0] for p, _ in data.train}
    held_scans = {p.name.split("-")[0] for p, _ in data.heldout}
    assert train_scans and held_scans and not (train_scans & held_scans)


def test_training_writes_a_complete_package(package: Path, tmp_path: Path) -> None:
    with zipfile.ZipFile(package) as zf:
        names = set(zf.namelist())
        card = zf.read("MODEL_CARD.md").decode()
        meta = json.loads(zf.read("package.json"))
        evaluation = json.loads(zf.read("evaluation.json"))
        png = zf.read("confusion.png")
    assert {"head.pt", "labels.json", "evaluation.json", "confusion.png"} <= names
    assert png.startswith(b"\x89PNG")
    assert meta["name"] == "test-views" and meta["version"] == "0.1.0"
    assert meta["training"]["synthetic"] is True
    assert meta["backbone"]["sha256"] == BACKBONE.sha256
    assert meta["preprocessing"]["resize"] == 224
    # the card says plainly what it was trained on, how it did and under which licences
    assert "synthetic data only" in card
    assert "No claim of clinical performance" in card
    assert f"{evaluation['accuracy']:.1%}" in card
    assert "MIT" in card and "BSD-3-Clause" in card and "ImageNet" in card
    spec = open_package(package, sha256_file(package), tmp_path / "unpacked")
    assert spec.labels == VIEW_LABELS


# cv/synthetic.py draws left and right alike, and upper and lower occlusal alike, so only a
# frame's position in the sweep tells those apart; the families below are what must be right.
FAMILY = {
    "front": "front",
    "left": "buccal",
    "right": "buccal",
    "upper_occlusal": "occlusal",
    "lower_occlusal": "occlusal",
    "other": "other",
}


def test_a_small_training_run_is_far_above_chance(package: Path) -> None:
    evaluation = json.loads(zipfile.ZipFile(package).read("evaluation.json"))
    assert evaluation["accuracy"] >= 0.5  # chance: 1/6; every held-out scan is unseen
    assert evaluation["per_class_recall"]["other"] >= 0.9
    cm = np.array(evaluation["confusion"])
    labels = evaluation["labels"]
    fam = [FAMILY[lab] for lab in labels]
    right = sum(
        cm[i, j] for i in range(len(labels)) for j in range(len(labels)) if fam[i] == fam[j]
    )
    assert right / cm.sum() >= 0.8


def test_the_default_head_names_views_of_a_scan_it_never_saw(tmp_path: Path) -> None:
    import av

    model = load_package(DEFAULT_PACKAGE, tmp_path / "cache", CPU)
    scan = render_scan(tmp_path / "unseen.mp4", ScanSpec(seed=555, duration_s=6.0, fps=6.0))
    with av.open(str(scan.path)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    pred = classify_frames(model, frames, batch_size=8)
    names = [model.labels[int(v)] for v in pred.views]
    truth = [t.view for t in scan.frames]
    assert np.mean([FAMILY[a] == FAMILY[b] for a, b in zip(names, truth, strict=True)]) >= 0.8
    assert np.mean([a == b for a, b in zip(names, truth, strict=True)]) >= 0.5


def test_the_shipped_default_package_is_intact_and_loads(tmp_path: Path) -> None:
    assert DEFAULT_PACKAGE.uri is not None
    archive = Path(DEFAULT_PACKAGE.uri.removeprefix("file://"))
    assert sha256_file(archive) == DEFAULT_PACKAGE.sha256
    model = _load(archive, tmp_path, DEFAULT_PACKAGE.sha256)
    assert model.identity == ModelIdentity(  # type: ignore[attr-defined]
        "view-classifier", "1.0.0", DEFAULT_PACKAGE.sha256
    )
    card = (archive.parent / "MODEL_CARD.md").read_text()
    assert "synthetic data only" in card and "Held-out evaluation" in card


def test_wrong_hash_is_a_model_error(package: Path, tmp_path: Path) -> None:
    msg = _model_error(package, tmp_path, "0" * 64)
    assert "sha256" in msg and package.name in msg


def test_truncated_package_is_a_model_error(package: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.zip"
    cut.write_bytes(package.read_bytes()[: package.stat().st_size // 2])
    assert "sha256" in _model_error(cut, tmp_path / "a", sha256_file(package))
    # even when the reference carries the truncated file's own hash, it cannot be opened
    assert "not a readable package" in _model_error(cut, tmp_path / "b")


def test_package_without_labels_is_a_model_error(
    make_package: Callable[..., Path], tmp_path: Path
) -> None:
    bad = make_package("nolabels", lambda d: (d / "labels.json").unlink())
    assert "has no labels" in _model_error(bad, tmp_path)


def test_head_of_the_wrong_shape_is_a_model_error(
    make_package: Callable[..., Path], tmp_path: Path
) -> None:
    def edit(d: Path) -> None:
        torch.save(ViewHead(6, in_dim=512).state_dict(), d / "head.pt")

    msg = _model_error(make_package("narrow", edit), tmp_path)
    assert "does not fit" in msg and "head" in msg


def test_labels_that_do_not_match_the_head_are_a_model_error(
    make_package: Callable[..., Path], tmp_path: Path
) -> None:
    def edit(d: Path) -> None:
        (d / "labels.json").write_text(json.dumps(["front", "back"]))

    assert "does not fit 2 labels" in _model_error(make_package("fewer", edit), tmp_path)


def test_foreign_architecture_is_a_model_error(
    make_package: Callable[..., Path], tmp_path: Path
) -> None:
    def edit(d: Path) -> None:
        meta = json.loads((d / "package.json").read_text())
        meta["architecture"] = {"backbone": "resnet50", "head": "linear", "embedding_dim": 2048}
        (d / "package.json").write_text(json.dumps(meta))

    assert "architecture" in _model_error(make_package("resnet", edit), tmp_path)


def test_bundled_backbone_of_another_network_is_a_model_error(
    make_package: Callable[..., Path], tmp_path: Path
) -> None:
    def edit(d: Path) -> None:
        torch.save({"layer.weight": torch.zeros(3, 3)}, d / "backbone.pth")
        meta = json.loads((d / "package.json").read_text())
        meta["backbone"].update(bundled=True, sha256=sha256_file(d / "backbone.pth"))
        (d / "package.json").write_text(json.dumps(meta))

    assert "cannot load backbone.pth" in _model_error(make_package("foreign", edit), tmp_path)


def test_altered_member_is_a_model_error(make_package: Callable[..., Path], tmp_path: Path) -> None:
    def edit(d: Path) -> None:
        (d / "labels.json").write_text(json.dumps(list(reversed(VIEW_LABELS))))

    bad = make_package("swapped", edit, rehash=False)
    assert "does not match its recorded sha256" in _model_error(bad, tmp_path)


def test_streaming_classifier_matches_the_batch_call_and_stays_bounded(tmp_path: Path) -> None:
    """Frames pushed while a video decodes get the predictions classify_frames gives them,
    in order; the queue holds at most two batches; a failure reaches the producer."""
    import threading

    import av

    from cv.model.streaming import StreamingClassifier

    model = load_package(DEFAULT_PACKAGE, tmp_path / "cache", CPU)
    scan = render_scan(tmp_path / "s.mp4", ScanSpec(seed=9, duration_s=4.2, fps=5.0))
    with av.open(str(scan.path)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    expected = classify_frames(model, frames, batch_size=4)
    with StreamingClassifier(lambda: model, batch_size=4) as stream:
        for rgb in frames:
            stream.push(rgb)
            assert stream._queue.qsize() <= 8
        got = stream.finish()
    assert len(frames) % 4 != 0  # the last, partial batch is classified too
    np.testing.assert_array_equal(got.views, expected.views)
    np.testing.assert_allclose(got.embeddings, expected.embeddings, atol=1e-5)
    assert stream.busy_s > 0 and stream.model is model

    # with the embeddings spilled to a file while decoding: the same predictions
    spill = tmp_path / "emb.f32"
    with StreamingClassifier(lambda: model, batch_size=4, spill=spill) as spilled:
        for rgb in frames:
            spilled.push(rgb)
        got_spilled = spilled.finish()
    assert spill.stat().st_size == len(frames) * got.embeddings.shape[1] * 4
    np.testing.assert_array_equal(got_spilled.embeddings, got.embeddings)
    np.testing.assert_array_equal(got_spilled.views, got.views)

    # a model that fails: the error reaches push or finish, and nothing hangs
    broken = StreamingClassifier(lambda: dataclasses.replace(model, head=None), batch_size=2)
    with pytest.raises(TypeError), broken:
        for rgb in frames * 5:
            broken.push(rgb)
        broken.finish()
    assert not any(t.name == "classify" and t.is_alive() for t in threading.enumerate())

    # leaving early (decoding failed) stops the thread
    with pytest.raises(RuntimeError), StreamingClassifier(lambda: model, batch_size=4) as early:
        early.push(frames[0])
        raise RuntimeError("decoding failed")
    assert not early._thread.is_alive()


def test_streaming_classifier_takes_frames_while_its_model_loads(tmp_path: Path) -> None:
    """While the model loads, decoded frames wait in the backlog (the decoder is not held
    up); then they are classified in order. A model that fails to load fails the stream
    with its model_error, at the producer's next push or at finish."""
    import threading

    from cv.model.streaming import StreamingClassifier

    model = load_package(DEFAULT_PACKAGE, tmp_path / "cache", CPU)
    rng = np.random.default_rng(3)
    frames = [rng.integers(0, 255, (90, 160, 3), np.uint8) for _ in range(20)]
    loaded = threading.Event()

    def slow_load() -> Classifier:
        assert loaded.wait(30)
        return model

    with StreamingClassifier(slow_load, batch_size=4, backlog=24) as stream:
        for rgb in frames:
            stream.push(rgb)  # 20 frames, backlog 24: no push waits for the load
        assert stream._queue.qsize() == 20 and stream.model is None
        loaded.set()
        got = stream.finish()
    expected = classify_frames(model, frames, batch_size=4)
    np.testing.assert_array_equal(got.views, expected.views)

    # once the model has loaded, a decoder that outruns it holds two batches queued, not
    # the backlog: a long scan peaks no higher than a short one
    many = frames * 3
    with StreamingClassifier(lambda: model, batch_size=4, backlog=24) as steady:
        steady.wait_loaded()
        queued = []
        for rgb in many:
            steady.push(rgb)
            queued.append(steady._queue.qsize())
        got = steady.finish()
    assert max(queued) <= 8, queued
    np.testing.assert_array_equal(got.views, np.tile(expected.views, 3))

    def bad_load() -> Classifier:
        raise ScanError(Reason.MODEL_ERROR, "the package's sha256 does not match")

    bad = StreamingClassifier(bad_load, batch_size=4)
    with pytest.raises(ScanError) as err, bad:
        for rgb in frames:
            bad.push(rgb)
        bad.finish()
    assert err.value.reason is Reason.MODEL_ERROR
    assert not bad._thread.is_alive()
