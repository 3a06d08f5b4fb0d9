"""Pure chart math: p-chart limits, bucket arithmetic, shift labels, gap filling, throughput."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dashboard import charts


def test_p_chart_limits_follow_each_buckets_n() -> None:
    pc = charts.p_chart([100, 400, 100], [5, 20, 20])
    pbar = 45 / 600
    assert pc.center == pytest.approx(pbar)
    sd = np.sqrt(pbar * (1 - pbar) / np.array([100, 400, 100]))
    assert pc.ucl == pytest.approx(pbar + 3 * sd)
    assert pc.lcl == pytest.approx(np.maximum(pbar - 3 * sd, 0))
    assert pc.ucl[1] < pc.ucl[0]  # bigger sample, tighter limits
    assert pc.rate == pytest.approx([0.05, 0.05, 0.2])
    assert pc.out.tolist() == [False, False, True]


def test_p_chart_flags_low_points_and_clips_limits() -> None:
    pc = charts.p_chart([1000, 1000, 1000, 10], [100, 100, 0, 10])
    assert pc.out[2]  # zero defects in a large bucket is below the lower limit
    assert pc.ucl.max() <= 1.0 and pc.lcl.min() >= 0.0
    assert charts.p_chart([], []).out.size == 0


@pytest.mark.parametrize("n,d,msg", [([0], [0], "at least one"), ([5], [6], "between"), ([5, 5], [1], "same length")])
def test_p_chart_rejects_bad_input(n, d, msg) -> None:
    with pytest.raises(ValueError, match=msg):
        charts.p_chart(n, d)


def test_bucket_start_and_shift_label() -> None:
    assert charts.bucket_start(125.0, 60) == 120.0
    assert charts.bucket_start(-1.0, 60) == -60.0
    t = 1_767_225_600.0  # 2026-01-01 00:00 UTC: belongs to the 22-06 shift that began the day before
    assert charts.bucket_start(t, charts.SHIFT_S, 6 * 3600) == t - 2 * 3600
    assert charts.shift_label(t) == "2025-12-31 22-06"
    assert charts.shift_label(t + 7 * 3600) == "2026-01-01 06-14"
    assert charts.shift_label(t + 15 * 3600) == "2026-01-01 14-22"
    with pytest.raises(ValueError):
        charts.bucket_start(1.0, 0)


def test_fill_buckets_inserts_zero_rows_for_gaps() -> None:
    rows = [{"start": 60.0, "inspected": 3, "defects": 1}, {"start": 240.0, "inspected": 2, "defects": 0}]
    out = charts.fill_buckets(rows, 30.0, 300.0, 60.0)
    assert [r["start"] for r in out] == [0.0, 60.0, 120.0, 180.0, 240.0]
    assert [r["inspected"] for r in out] == [0, 3, 0, 0, 2]
    assert charts.fill_buckets(rows, 0.0, 1e9, 1.0, max_buckets=10) == rows  # too many buckets: left sparse


def test_throughput_per_min() -> None:
    # over the active span (first..last frame, clipped to the range), never the range's average
    assert charts.throughput_per_min(600, 0.0, 86400.0, 0.0, 3600.0) == 10.0
    assert charts.throughput_per_min(600, 1800.0, 86400.0, 0.0, 3600.0) == 20.0
    assert charts.throughput_per_min(600, 0.0, 3600.0, 10.0, 20.0) == 600.0  # at least a minute
    assert charts.throughput_per_min(600, None, None, 0.0, 600.0) == 60.0
    assert charts.throughput_per_min(5, None, None, 0.0, 1.0) == 5.0  # at least a minute
    assert charts.throughput_per_min(0, 0.0, 60.0, None, None) == 0.0
    assert charts.fmt_ts(0.0) == "1970-01-01 00:00:00 UTC" and charts.fmt_ts(None) == "-"
    assert math.isclose(charts.BUCKETS["shift (8 h)"][0], 28800.0)


def test_fmt_metrics_shows_a_dash_for_none() -> None:
    assert charts.fmt_metrics({}) == "-" and charts.fmt_metrics(None) == "-"
    assert charts.fmt_metrics({"b": 1, "a": 0.5}) == '{"a": 0.5, "b": 1}'


def test_fmt_ms_keeps_tiles_short() -> None:
    assert charts.fmt_ms(None) == "-"
    assert charts.fmt_ms(85.4) == "85 ms"
    assert charts.fmt_ms(10_293) == "10.3 s"
    assert charts.fmt_ms(250_000) == "4.2 min"


def test_family_rate_joins_family_frames_to_inspected_buckets():
    inspected = [{"start": 0.0, "inspected": 10}, {"start": 60.0, "inspected": 0}, {"start": 120.0, "inspected": 5}]
    family = [{"start": 120.0, "frames": 2}, {"start": 60.0, "frames": 1}]
    assert charts.family_rate(inspected, family) == [{"start": 0.0, "inspected": 10, "frames": 0},
                                                     {"start": 120.0, "inspected": 5, "frames": 2}]
