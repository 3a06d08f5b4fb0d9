"""benchmarks.bench_coreset_draws: margins of every (seed, coreset draw) pair over the kNN bar (issue 13)."""

from __future__ import annotations

import pytest

from benchmarks.bench_coreset_draws import METHODS, coreset_seed, merge, render, summarise

BAR = {"image_auroc": 0.80, "pixel_auroc": 0.90, "aupro": 0.60}


def metrics(i: float, p: float, a: float) -> dict:
    return {"image_auroc": i, "pixel_auroc": p, "aupro": a}


def test_draw_zero_is_the_models_own_coreset_and_later_draws_never_hit_another_seed() -> None:
    assert coreset_seed(2, 0) == 2
    seeds = {coreset_seed(s, d) for s in range(3) for d in range(5)}
    assert len(seeds) == 15


def test_margins_average_the_categories_first_and_count_pairs_meeting_the_bar() -> None:
    a, b = list(METHODS)[:2]
    # two categories; seed 0 with two draws, the pair (s0, d1) misses the pixel bar for method a
    per_cat = {
        "x": {"0": {"0": {a: metrics(0.82, 0.91, 0.62), b: metrics(0.70, 0.80, 0.50)},
                    "1": {a: metrics(0.82, 0.89, 0.62), b: metrics(0.70, 0.80, 0.50)}}},
        "y": {"0": {"0": {a: metrics(0.80, 0.90, 0.60), b: metrics(0.70, 0.80, 0.50)},
                    "1": {a: metrics(0.80, 0.90, 0.60), b: metrics(0.70, 0.80, 0.50)},
                    "2": {a: metrics(0.0, 0.0, 0.0), b: metrics(0.0, 0.0, 0.0)}}},  # a draw only y has: ignored
    }
    for cat in per_cat.values():  # the other methods: at the bar exactly
        for draws in cat.values():
            for rows in draws.values():
                rows.update({m: dict(BAR) for m in METHODS if m not in rows})
    res = summarise(per_cat, BAR)
    assert res["seeds"] == [0]
    ra = res["methods"][a]
    assert ra["margin_by_pair"]["s0d0"]["pixel_auroc"] == pytest.approx(0.005)
    assert ra["margin_by_pair"]["s0d1"]["pixel_auroc"] == pytest.approx(-0.005)
    assert ra["margin_mean"]["pixel_auroc"] == pytest.approx(0.0, abs=1e-12)
    assert ra["margin_min"]["image_auroc"] == pytest.approx(0.01)
    assert (ra["pairs_meeting_bar"], ra["pairs"]) == (1, 2)
    assert res["methods"][b]["pairs_meeting_bar"] == 0
    text = render(res | {"machine": "m", "load_average_start_end": [0.1, 0.2]})
    assert f"| {a} | pixel_auroc | +0.0000 | -0.0050 | +0.0050 | 1 of 2 |" in text


def test_a_method_run_later_merges_into_the_earlier_rows_and_keeps_its_own_draws() -> None:
    a, b, c = list(METHODS)[:3]
    old = {"x": {"0": {"0": {a: metrics(0.9, 0.9, 0.7)}, "1": {a: metrics(0.9, 0.9, 0.7)}}}}
    new = {"x": {"0": {"0": {c: metrics(0.7, 0.8, 0.5)}}}}
    got = merge(old, new)
    assert set(got["x"]["0"]["0"]) == {a, c} and set(got["x"]["0"]["1"]) == {a}
    assert old == {"x": {"0": {"0": {a: metrics(0.9, 0.9, 0.7)}, "1": {a: metrics(0.9, 0.9, 0.7)}}}}  # untouched
    res = summarise(got, BAR)
    assert res["methods"][a]["pairs"] == 2 and res["methods"][c]["pairs"] == 1 and b not in res["methods"]


def test_each_method_is_the_memory_of_the_quality_row_it_is_named_after() -> None:
    # draw 0 must reproduce quality.json's row of the same name: same bank size, k, metric and weight
    from benchmarks.bench_memory import row_fields

    for name, (size, k, metric, weight) in METHODS.items():
        f = row_fields(name)
        assert (f["memory_size"], f["memory_k"], f["memory_metric"], f["memory_weight"]) == (size, k, metric, weight)
        assert (f["memory_dims"], f["memory_stride"], f["decoder_blocks"]) == (0, 8, 4), name
