"""The camera section's AUROC statistics (benchmarks/camera_section.py): pure functions."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from benchmarks.camera_section import auroc_rank, paired_auroc_diff_ci


def test_auroc_rank_matches_sklearn_with_ties() -> None:
    rng = np.random.default_rng(3)
    y = np.r_[np.zeros(30, int), np.ones(50, int)]
    s = np.round(rng.normal(size=80) + y * 0.7, 1)  # rounded: many ties
    assert auroc_rank(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


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
