"""The ops report's arithmetic (tasks/ops_report.py): percentiles, legs, shares; and the
bar chart it draws (cv/charts.py). No server needed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np

from cv.charts import render_bars
from tasks.ops_report import Timeline, chart_markdown, percentile, summarize

T0 = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)


def _t(scan: str, outcome: str, cause: str | None, reason: str | None, took: float) -> Timeline:
    return Timeline(
        scan_id=scan,
        outcome=outcome,
        cause=cause,
        reason=reason,
        uploaded=T0,
        created=T0 + timedelta(seconds=2),
        started=T0 + timedelta(seconds=5),
        ended=T0 + timedelta(seconds=5 + took),
        acknowledged=T0 + timedelta(seconds=6 + took) if outcome != "Crashed" else None,
    )


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 95), percentile(values, 100)) == (
        50.0,
        95.0,
        100.0,
    )
    assert percentile([3.0], 95) == 3.0


def test_summary_counts_times_and_shares() -> None:
    timelines = [
        _t("a", "Completed", None, None, 10),
        _t("b", "Completed", None, None, 30),
        _t("c", "Rejected", "patient", "too_short", 1),
        _t("d", "Rejected", "patient", "too_short", 1),
        _t("e", "Rejected", "patient", "too_few_usable_frames", 4),
        _t("f", "Crashed", "infrastructure", "crashed", 80),
    ]
    report = summarize(timelines, slowest=2)
    assert report["by_outcome"] == {"Completed": 2, "Rejected": 3, "Crashed": 1}
    assert report["by_cause"] == {"patient": 3, "infrastructure": 1}
    assert report["latency"]["started → ended"] == {
        "n": 6,
        "p50_s": 4.0,
        "p95_s": 80.0,
        "max_s": 80.0,
    }
    assert report["latency"]["ended → platform acknowledged"]["n"] == 5  # the crash: never
    assert [s["scan_id"] for s in report["slowest"]] == ["f", "b"]
    assert report["rejections"] == [
        {"reason": "too_short", "count": 2, "share": 0.667},
        {"reason": "too_few_usable_frames", "count": 1, "share": 0.333},
    ]
    assert report["unacknowledged_final"] == 1


def test_bars_scale_to_the_largest_and_the_chart_is_an_inline_png() -> None:
    img = render_bars({"short": 1.0, "long": 4.0}, "title", " s", width=400)
    assert img.shape == (34 + 2 * 26 + 10, 400, 3)
    blue = np.all(img == (31, 119, 180), axis=2)
    short_row, long_row = blue[34 + 13], blue[34 + 26 + 13]
    assert long_row.sum() == 4 * short_row.sum() or abs(long_row.sum() - 4 * short_row.sum()) <= 4
    assert chart_markdown({"x": 1.0}, "runs").startswith("![runs](data:image/png;base64,iVBOR")
