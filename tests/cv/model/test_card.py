"""cv.model.card: the model card says what the package's own facts say (synthetic training
data or not, the held-out figures per class, the backbone's provenance, the training
settings) and nothing beyond; the confusion figure is a PNG whose cells are coloured by row
share, truth by row and prediction by column. Real Evaluation figures from cv.model.heads;
the PNG is decoded by OpenCV."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from cv.images import decode_jpeg
from cv.model.card import model_card, render_confusion
from cv.model.heads import Evaluation, evaluate
from cv.model.network import Backbone

LABELS = ("front", "left", "other")
# truth 0 0 1 1 2 against predictions 0 1 1 1 1: confusion ((1, 1, 0), (0, 2, 0), (0, 1, 0))
EVALUATION = evaluate(np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 1, 1]), LABELS)
BACKBONE = Backbone("mobilenet-test", "v7", "ab" * 32, source="a test wheel", licence="MIT")
PREPROCESSING = {"mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375]}


def _training(synthetic: bool, **extra: Any) -> dict[str, Any]:
    return {
        "synthetic": synthetic,
        "dataset": "views-2024",
        "split": "the heldout/ folder, as given",
        "train_frames": 12,
        "train_frames_per_class": {"front": 5, "left": 4, "other": 3},
        "heldout_frames_per_class": {"front": 2, "left": 2, "other": 1},
        **extra,
    }


def _card(training: dict[str, Any], backbone: Backbone = BACKBONE) -> str:
    return model_card(
        "views",
        "1.2.3",
        backbone,
        LABELS,
        training,
        EVALUATION,
        "2024-01-02T03:04:05+00:00",
        "scanflow-model/1",
        PREPROCESSING,
    )


def test_a_synthetic_package_says_so_in_its_data_figures_and_limitations() -> None:
    spec = {"width": 320, "height": 240, "train_seeds": [0, 1, 2]}
    card = _card(_training(True, dataset_provenance={"synthetic": True, "spec": spec}))
    assert "**Trained and evaluated on synthetic data only**" in card
    assert "It has never seen a real mouth." in card
    assert '- rendered with: `{"width": 320, "height": 240, "train_seeds": [0, 1, 2]}`' in card
    assert "(synthetic frames from scans not used in training; real scans will differ)" in card
    assert "- Synthetic training data: expect lower accuracy on real scans" in card
    assert "expect those two to be confused more than the others" in card


def test_a_package_trained_on_real_frames_claims_nothing_synthetic() -> None:
    card = _card(_training(False))
    assert "synthetic" not in card.lower()
    assert "Trained on the labelled frames described below." in card
    assert "- Accuracy holds only for frames like the training data." in card
    assert "rendered with" not in card


def test_the_card_reports_the_held_out_figures_per_class() -> None:
    card = _card(_training(False))
    assert card.startswith("# Model card: views 1.2.3\n")
    assert "Created 2024-01-02T03:04:05+00:00. Package format `scanflow-model/1`." in card
    assert "Accuracy on 5 held-out frames: **60.0%**." in card
    assert "- frames: 12 for training, 5 held out" in card
    assert "- dataset: `views-2024`" in card and "- split: the heldout/ folder, as given" in card
    # view | train frames | held-out frames | recall | precision ("–": never predicted)
    assert "| front | 5 | 2 | 50.0% | 100.0% |" in card
    assert "| left | 4 | 2 | 100.0% | 50.0% |" in card
    assert "| other | 3 | 1 | 0.0% | – |" in card
    assert "`front`, `left`, `other`" in card and "softmax over 3 views" in card
    assert "No claim of clinical performance is made." in card


def test_missing_counts_and_figures_read_as_zero_and_a_dash() -> None:
    training = _training(False, train_frames_per_class={}, heldout_frames_per_class={})
    nothing = Evaluation(LABELS, 0, 0.0, dict.fromkeys(LABELS), dict.fromkeys(LABELS), ())
    card = model_card("views", "1", BACKBONE, LABELS, training, nothing, "now", "f", PREPROCESSING)
    assert "| front | 0 | 0 | – | – |" in card
    assert "Accuracy on 0 held-out frames: **0.0%**." in card


def test_the_backbone_provenance_and_preprocessing_are_stated() -> None:
    card = _card(_training(False))
    assert f"- weights: mobilenet-test v7, sha256 `{'ab' * 32}`" in card
    assert "- source: a test wheel" in card and "- licence: MIT" in card
    assert "mean [123.675, 116.28, 103.53] and std [58.395, 57.12, 57.375]" in card
    unknown = _card(_training(False), Backbone("b", "v", "cd" * 32))
    assert "- source: not recorded" in unknown and "- licence: not recorded" in unknown


def test_the_training_settings_are_stated_when_recorded() -> None:
    config = {"epochs": 300, "learning_rate": 0.05, "weight_decay": 0.0001, "seed": 4}
    card = _card(_training(False, config=config))
    assert (
        "Head training: 300 epochs of full-batch Adam (learning rate 0.05, weight decay "
        "0.0001) on class-balanced cross-entropy, seed 4; the backbone is frozen."
    ) in card
    assert "Head training" not in _card(_training(False))


def _cell(img: np.ndarray, row: int, col: int, cell: int = 56) -> tuple[int, ...]:
    """A pixel inside a cell, away from its border and its count."""
    margin = 130
    return tuple(int(c) for c in img[margin + row * cell + 6, margin + col * cell + cell - 6])


def test_the_confusion_figure_is_a_png_of_one_cell_per_pair_of_labels() -> None:
    png = render_confusion(EVALUATION)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    img = decode_jpeg(png)
    assert img.shape == (130 + 3 * 56 + 10, 130 + 3 * 56 + 10, 3)
    assert decode_jpeg(render_confusion(EVALUATION, cell=30)).shape[:2] == (230, 230)


@pytest.mark.parametrize(
    ("cell", "colour"),
    [
        ((1, 1), (55, 255, 55)),  # every "left" frame right: full green
        ((0, 0), (155, 255, 155)),  # half of the "front" frames right: pale green
        ((2, 1), (255, 55, 55)),  # the "other" frame taken for "left": full red
        ((0, 1), (255, 155, 155)),  # half of the "front" frames taken for "left"
        ((1, 2), (255, 255, 255)),  # nothing: white (the truth is by row, not column)
        ((2, 2), (255, 255, 255)),
    ],
)
def test_cells_are_shaded_by_the_share_of_their_row(
    cell: tuple[int, int], colour: tuple[int, int, int]
) -> None:
    img = decode_jpeg(render_confusion(EVALUATION))
    assert _cell(img, *cell) == colour


def test_a_class_without_frames_does_not_break_the_figure() -> None:
    ev = evaluate(np.array([0, 0]), np.array([0, 0]), ["front", "left"])
    img = decode_jpeg(render_confusion(ev))
    assert _cell(img, 0, 0) == (55, 255, 55) and _cell(img, 1, 1) == (255, 255, 255)
