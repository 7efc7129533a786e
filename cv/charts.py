"""A horizontal bar chart drawn with OpenCV (no plotting library in the image), for the
operations report: one bar per label, its value written beside it."""

from __future__ import annotations

from collections.abc import Mapping

import cv2
import numpy as np
import numpy.typing as npt

RGB = npt.NDArray[np.uint8]
_BAR = (31, 119, 180)
_TEXT = (30, 30, 30)


def render_bars(values: Mapping[str, float], title: str, unit: str = "", width: int = 720) -> RGB:
    """``values`` (label -> a number >= 0) as bars scaled to the largest, with ``title``."""
    row, top, left, right = 26, 34, 250, 90
    img = np.full((top + row * max(1, len(values)) + 10, width, 3), 255, np.uint8)
    cv2.putText(img, title, (10, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, _TEXT, 1, cv2.LINE_AA)
    largest = max([v for v in values.values() if v > 0], default=1.0)
    for i, (label, value) in enumerate(values.items()):
        y = top + i * row
        cv2.putText(
            img, label[:34], (10, y + 17), cv2.FONT_HERSHEY_SIMPLEX, 0.45, _TEXT, 1, cv2.LINE_AA
        )
        length = int((width - left - right) * max(0.0, value) / largest)
        cv2.rectangle(img, (left, y + 4), (left + max(length, 1), y + row - 4), _BAR, -1)
        cv2.putText(
            img,
            f"{value:g}{unit}",
            (left + length + 6, y + 17),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.45,
            _TEXT,
            1,
            cv2.LINE_AA,
        )
    return img
