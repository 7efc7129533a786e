"""Calibration error (cv/model/evaluation.py) on confidences whose truth is known."""

from __future__ import annotations

import numpy as np
import pytest

from cv.model.evaluation import expected_calibration_error


def test_a_model_right_as_often_as_it_says_is_calibrated() -> None:
    confidence = np.array([0.9] * 10 + [0.6] * 10, np.float32)
    correct = np.array([True] * 9 + [False] + [True] * 6 + [False] * 4)
    assert expected_calibration_error(confidence, correct) == pytest.approx(0.0, abs=1e-6)


def test_an_overconfident_model_is_off_by_the_gap() -> None:
    confidence = np.ones(8, np.float32)  # always sure
    correct = np.array([True, False] * 4)  # right half the time
    assert expected_calibration_error(confidence, correct) == pytest.approx(0.5)
    # two bins: 0.95 sure and right 3 of 4 (gap 0.2), 0.55 sure and right 1 of 4 (gap 0.3)
    confidence = np.array([0.95] * 4 + [0.55] * 4, np.float32)
    correct = np.array([True, True, True, False, True, False, False, False])
    assert expected_calibration_error(confidence, correct) == pytest.approx(0.25)
    assert expected_calibration_error(np.array([], np.float32), np.array([], bool)) == 0.0
