"""The camera section's AUROC statistics (benchmarks/camera_section.py): pure functions."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.camera_section import decide_oversample, paired_auroc_diff_ci


def test_identical_scores_give_a_zero_interval() -> None:
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(20, int), np.ones(40, int)]
    s = rng.normal(size=60) + y
    assert paired_auroc_diff_ci(y, s, s.copy(), draws=200) == (0.0, 0.0)


def test_interval_covers_a_small_perturbation_and_excludes_a_ruined_ranking() -> None:
    rng = np.random.default_rng(1)
    y = np.r_[np.zeros(40, int), np.ones(80, int)]
    ref = rng.normal(size=120) + 1.5 * y
    jitter = ref + rng.normal(scale=0.01, size=120)
    lo, hi = paired_auroc_diff_ci(y, ref, jitter, draws=500)
    assert lo <= 0.0 <= hi and hi - lo < 0.02
    lo, hi = paired_auroc_diff_ci(y, ref, rng.normal(size=120), draws=500)  # scores unrelated to the labels
    assert hi < 0.0


def _auroc(diffs: dict[str, dict[str, list[float]]]) -> dict:
    variants = {"default": 2.0, "coarsest": 1.0, "oversample4": 4.0}
    return {"variants": variants, "categories": {
        cat: {name: {"difference": d[0], "difference_by_seed": {str(i): x for i, x in enumerate(d)}}
              for name, d in per.items()} for cat, per in diffs.items()}}


def test_the_cheapest_variant_within_the_bound_on_every_category_is_chosen() -> None:
    a = _auroc({"a": {"coarsest": [0.004, -0.002], "default": [0.001, 0.0], "oversample4": [0.0, 0.0]},
                "b": {"coarsest": [-0.004, -0.004], "default": [0.002, -0.001], "oversample4": [0.0, 0.001]}})
    got = decide_oversample(a)
    assert got["chosen"] == "coarsest" and got["met"] and got["oversample"] == 1.0
    assert got["means"]["coarsest"]["b"] == pytest.approx(-0.004)


def test_a_category_off_by_more_than_the_bound_rules_a_variant_out() -> None:
    a = _auroc({"a": {"coarsest": [0.0], "default": [0.0], "oversample4": [0.0]},
                "tire": {"coarsest": [-0.02], "default": [-0.03], "oversample4": [-0.004]}})
    assert decide_oversample(a)["chosen"] == "oversample4"


def test_when_none_meets_the_bound_the_smallest_worst_miss_is_reported() -> None:
    a = _auroc({"tire": {"coarsest": [-0.02, 0.0], "default": [-0.03, -0.03], "oversample4": [-0.009, -0.006]}})
    got = decide_oversample(a)
    assert got["chosen"] == "oversample4" and not got["met"] and got["worst"]["oversample4"] == pytest.approx(0.0075)
