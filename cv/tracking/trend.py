"""A small line chart of a patient's figures across scans, drawn with OpenCV (no plotting
library in the image): one panel per series, scans along the x axis."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import cv2
import numpy as np
import numpy.typing as npt

RGB = npt.NDArray[np.uint8]
_COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189))


def render_trend(
    series: Mapping[str, Sequence[float | None]],
    labels: Sequence[str],
    *,
    width: int = 720,
    panel_height: int = 150,
) -> RGB:
    """Draw each series (values in 0..1, None where unknown) as its own panel.

    Args:
        series: name -> one value per scan, oldest first.
        labels: one short label per scan (e.g. the scan date).
        width: image width in pixels.
        panel_height: height of each panel.
    Returns:
        An RGB image.
    """
    n = len(labels)
    img = np.full((panel_height * len(series) + 30, width, 3), 255, np.uint8)
    left, right, top = 60, 20, 24
    xs = [left + (width - left - right) * (i / max(1, n - 1) if n > 1 else 0.5) for i in range(n)]
    for p, (name, values) in enumerate(series.items()):
        y0 = p * panel_height
        bottom = y0 + panel_height - 16

        def y_of(v: float, y0: int = y0, bottom: int = bottom) -> int:
            return int(round(bottom - (bottom - y0 - top) * min(1.0, max(0.0, v))))

        colour = _COLOURS[p % len(_COLOURS)]
        cv2.putText(
            img, name, (left, y0 + 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (30, 30, 30), 1, cv2.LINE_AA
        )
        for v in (0.0, 0.5, 1.0):
            cv2.line(img, (left, y_of(v)), (width - right, y_of(v)), (225, 225, 225), 1)
            cv2.putText(
                img,
                f"{v:.1f}",
                (14, y_of(v) + 4),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.4,
                (110, 110, 110),
                1,
                cv2.LINE_AA,
            )
        points = [(int(x), y_of(v)) for x, v in zip(xs, values, strict=True) if v is not None]
        for a, b in zip(points, points[1:], strict=False):
            cv2.line(img, a, b, colour, 2, cv2.LINE_AA)
        for pt in points:
            cv2.circle(img, pt, 4, colour, -1, cv2.LINE_AA)
    for x, label in zip(xs, labels, strict=True):
        cv2.putText(
            img,
            label,
            (int(x) - 30, img.shape[0] - 10),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.4,
            (60, 60, 60),
            1,
            cv2.LINE_AA,
        )
    return img
