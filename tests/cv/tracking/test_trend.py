"""cv.tracking.trend.render_trend: the image's size, where each scan's point lands (value 0
at a panel's bottom line, 1 at its top, in the series' colour), gaps for unknown values, one
scan, and the PNG that tasks/tracking.py stores of it (encoded and decoded by OpenCV)."""

from __future__ import annotations

import numpy as np
import pytest

from cv.images import decode_jpeg, encode_png
from cv.tracking.trend import render_trend

BLUE, RED, GREEN = (31, 119, 180), (214, 39, 40), (44, 160, 44)  # the first panels' colours
LEFT, RIGHT, TOP, PANEL = 60, 20, 24, 150  # the layout render_trend draws with by default


def _y(panel: int, value: float) -> int:
    """Where render_trend puts ``value`` in ``panel`` (0 at the bottom line, 1 at the top)."""
    y0, bottom = panel * PANEL, panel * PANEL + PANEL - 16
    return int(round(bottom - (bottom - y0 - TOP) * value))


def _x(i: int, n: int, width: int = 720) -> int:
    return int(LEFT + (width - LEFT - RIGHT) * i / (n - 1))


def _is(img: np.ndarray, x: int, y: int, colour: tuple[int, int, int]) -> bool:
    return tuple(int(c) for c in img[y, x]) == colour


def test_the_image_has_one_panel_per_series_and_a_label_strip() -> None:
    img = render_trend({"a": [0.1, 0.2], "b": [0.3, 0.4], "c": [0.5, 0.6]}, ["x", "y"])
    assert img.shape == (3 * PANEL + 30, 720, 3) and img.dtype == np.uint8
    small = render_trend({"a": [0.1]}, ["x"], width=300, panel_height=80)
    assert small.shape == (80 + 30, 300, 3)


def test_each_scan_is_a_point_at_its_value_in_its_series_colour() -> None:
    series = {"usable": [0.0, 0.5, 1.0], "coverage": [1.0, 0.25, 0.75], "views": [0.6] * 3}
    img = render_trend(series, ["2024-01-01", "2024-02-01", "2024-03-01"])
    for panel, (values, colour) in enumerate(zip(series.values(), (BLUE, RED, GREEN), strict=True)):
        for i, v in enumerate(values):
            assert _is(img, _x(i, 3), _y(panel, v), colour), (panel, i, v)
    # the line between two points is drawn: half way from (0, 0.0) to (1, 0.5)
    assert _is(img, (_x(0, 3) + _x(1, 3)) // 2, _y(0, 0.25), BLUE)


def test_values_outside_zero_to_one_are_drawn_at_the_edge() -> None:
    img = render_trend({"a": [-0.5, 1.7]}, ["x", "y"])
    assert _is(img, _x(0, 2), _y(0, 0.0), BLUE)
    assert _is(img, _x(1, 2), _y(0, 1.0), BLUE)


def test_an_unknown_value_has_no_point_and_the_line_joins_its_neighbours() -> None:
    img = render_trend({"a": [0.2, None, 0.8]}, ["x", "y", "z"])
    assert _is(img, _x(0, 3), _y(0, 0.2), BLUE) and _is(img, _x(2, 3), _y(0, 0.8), BLUE)
    column = img[: PANEL - 16, _x(1, 3)]
    # no point at the middle scan: only the line from the first to the third crosses there
    blue_rows = np.flatnonzero((column == BLUE).all(axis=1))
    assert blue_rows.size and abs(blue_rows.mean() - _y(0, 0.5)) <= 2


def test_one_scan_is_a_single_point_in_the_middle() -> None:
    img = render_trend({"a": [0.3]}, ["2024-05-01"])
    middle = LEFT + (720 - LEFT - RIGHT) // 2
    assert _is(img, middle, _y(0, 0.3), BLUE)
    blue = np.argwhere((img == BLUE).all(axis=2))
    assert np.abs(blue[:, 1] - middle).max() <= 5  # the dot and nothing else


def test_a_series_with_no_known_values_draws_no_points() -> None:
    img = render_trend({"a": [None, None]}, ["x", "y"])
    assert not (img == BLUE).all(axis=2).any()


def test_a_series_of_the_wrong_length_is_refused() -> None:
    with pytest.raises(ValueError):
        render_trend({"a": [0.1, 0.2, 0.3]}, ["x", "y"])


def test_the_png_stored_of_it_decodes_to_the_same_image() -> None:
    img = render_trend({"a": [0.1, 0.9], "b": [0.5, None]}, ["x", "y"], width=400)
    np.testing.assert_array_equal(decode_jpeg(encode_png(img)), img)
