"""cv.model.predictions: per-frame predictions and view_coverage, the doctor's checklist of
views (numpy only). tests/cv/model/test_heads.py counts a plain case; here: the confidence
and frame-count thresholds at their edges, labels in another order or without some standard
views, nothing usable, mismatched inputs (tests/test_layering.py keeps it free of torch)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cv.model.predictions import (
    EMBEDDING_DIM,
    VIEW_LABELS,
    FramePredictions,
    view_coverage,
)

STANDARD = VIEW_LABELS[:-1]


def _arrays(views: list[int], conf: list[float]) -> tuple[np.ndarray, np.ndarray]:
    return np.array(views, np.int64), np.array(conf, np.float32)


def test_the_labels_are_the_five_standard_views_and_other() -> None:
    assert VIEW_LABELS == (
        "front",
        "left",
        "right",
        "upper_occlusal",
        "lower_occlusal",
        "other",
    )
    assert EMBEDDING_DIM == 1280


def test_a_frame_at_the_confidence_threshold_counts_and_one_below_is_uncertain() -> None:
    views, conf = _arrays([0, 0, 0], [0.7, 0.69, 0.71])
    cov = view_coverage(views, conf, [True] * 3, VIEW_LABELS, min_confidence=0.7)
    assert cov.frames["front"] == 2 and cov.uncertain == 1 and cov.usable == 3
    assert cov.min_confidence == 0.7


def test_unusable_frames_count_for_nothing_however_confident() -> None:
    views, conf = _arrays([1, 1, 2], [0.99, 0.99, 0.2])
    cov = view_coverage(views, conf, [False, False, False], VIEW_LABELS)
    assert cov.usable == 0 and cov.uncertain == 0
    assert sum(cov.frames.values()) == 0
    assert cov.missing == STANDARD


def test_a_view_needs_min_frames_frames_not_to_be_missing() -> None:
    # front 3, left 2, right 1, upper 0 (one uncertain), lower 3, other 5
    views, conf = _arrays(
        [0, 0, 0, 1, 1, 2, 3, 4, 4, 4, 5, 5, 5, 5, 5],
        [0.9] * 6 + [0.1] + [0.9] * 8,
    )
    usable = [True] * 15
    cov = view_coverage(views, conf, usable, VIEW_LABELS, min_frames=2)
    assert cov.missing == ("right", "upper_occlusal")
    assert cov.min_frames == 2 and cov.uncertain == 1
    assert view_coverage(views, conf, usable, VIEW_LABELS, min_frames=3).missing == (
        "left",
        "right",
        "upper_occlusal",
    )
    assert view_coverage(views, conf, usable, VIEW_LABELS, min_frames=1).missing == (
        "upper_occlusal",
    )


def test_other_is_never_a_missing_view() -> None:
    views, conf = _arrays([0, 1, 2, 3, 4], [0.9] * 5)
    cov = view_coverage(views, conf, [True] * 5, VIEW_LABELS, min_frames=1)
    assert cov.frames["other"] == 0 and cov.missing == ()


def test_labels_are_read_by_index_in_the_heads_own_order() -> None:
    labels = ("other", "lower_occlusal", "front", "left", "right", "upper_occlusal")
    views, conf = _arrays([0, 2, 2, 3], [0.9] * 4)
    cov = view_coverage(views, conf, [True] * 4, labels)
    assert cov.frames == {
        "other": 1,
        "lower_occlusal": 0,
        "front": 2,
        "left": 1,
        "right": 0,
        "upper_occlusal": 0,
    }
    # missing views are listed in the standard order, whatever the head's order
    assert cov.missing == ("right", "upper_occlusal", "lower_occlusal")


def test_a_head_without_some_standard_views_reports_only_the_ones_it_knows() -> None:
    labels = ("front", "left", "molar")
    views, conf = _arrays([2, 2, 1], [0.9] * 3)
    cov = view_coverage(views, conf, [True] * 3, labels)
    assert cov.frames == {"front": 0, "left": 1, "molar": 2}
    assert cov.missing == ("front",)


def test_no_frames_at_all_miss_every_standard_view() -> None:
    views, conf = _arrays([], [])
    cov = view_coverage(views, conf, [], VIEW_LABELS)
    assert (cov.usable, cov.uncertain) == (0, 0) and cov.missing == STANDARD


@pytest.mark.parametrize("usable", [[True], [True, True, True]])
def test_inputs_of_different_lengths_are_refused(usable: list[bool]) -> None:
    views, conf = _arrays([0, 1], [0.9, 0.9])
    with pytest.raises(ValueError):
        view_coverage(views, conf, usable, VIEW_LABELS)


def test_a_view_index_beyond_the_labels_is_an_error() -> None:
    views, conf = _arrays([6], [0.9])
    with pytest.raises(IndexError):
        view_coverage(views, conf, [True], VIEW_LABELS)


def test_frame_predictions_are_frozen() -> None:
    pred = FramePredictions(
        np.zeros((2, EMBEDDING_DIM), np.float32),
        np.array([0, 1], np.int64),
        np.array([0.5, 0.9], np.float32),
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        pred.views = np.array([1, 1], np.int64)  # type: ignore[misc]
