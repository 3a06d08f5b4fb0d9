import math

import numpy as np
import pytest

from training.gate import Evaluation, GatePolicy, decide, evaluate_scores


def ev(fpr=0.0, auroc=None, recall=None, threshold=1.0, n=50, a=0, finite=True):
    return Evaluation(threshold=threshold, n_normal=n, n_anomalous=a, fpr=fpr, recall=recall, auroc=auroc, finite=finite)


def test_evaluate_scores_counts_at_the_own_threshold():
    e = evaluate_scores([0.1, 0.2, 0.5, 0.9], [0.8, 1.0], threshold=0.5)
    assert e.fpr == 0.5 and e.recall == 1.0  # score >= threshold is a defect
    assert e.auroc == pytest.approx(0.875) and e.finite and e.n_normal == 4 and e.n_anomalous == 2


def test_evaluate_scores_without_anomalies_and_with_nan():
    e = evaluate_scores([0.1, 0.2], [], threshold=0.5)
    assert e.fpr == 0.0 and e.auroc is None and e.recall is None
    bad = evaluate_scores([0.1, float("nan")], [], threshold=0.5)
    assert not bad.finite and bad.fpr is None


def test_first_version_passes_on_absolute_checks_only():
    d = decide(ev(fpr=0.02), None)
    assert d.promote and not d.reasons and any("first version" in n for n in d.notes)


@pytest.mark.parametrize("cand, why", [
    (ev(fpr=0.5), "bound"),
    (ev(threshold=0.0), "threshold"),
    (ev(threshold=math.inf), "threshold"),
    (ev(fpr=None, finite=False), "non-finite"),
    (ev(fpr=None, n=0), "no held-back"),
])
def test_insane_candidates_are_refused_even_without_an_active_version(cand, why):
    d = decide(cand, None)
    assert not d.promote and any(why in r for r in d.reasons)


def test_fpr_rise_beyond_tolerance_is_refused_and_within_is_accepted():
    pol = GatePolicy(fpr_tolerance=0.02, max_fpr=0.2)
    assert not decide(ev(fpr=0.10), ev(fpr=0.04), pol).promote
    ok = decide(ev(fpr=0.05), ev(fpr=0.04), pol)
    assert ok.promote and any("FPR 0.040 -> 0.050" in n for n in ok.notes)
    assert decide(ev(fpr=0.00), ev(fpr=0.08), pol).promote  # better than the active one


def test_auroc_and_recall_drops_are_refused():
    pol = GatePolicy(auroc_tolerance=0.01, recall_tolerance=0.05)
    worse = decide(ev(auroc=0.90, recall=0.9, a=20), ev(auroc=0.99, recall=0.9, a=20), pol)
    assert not worse.promote and "AUROC fell" in worse.summary
    blind = decide(ev(auroc=0.99, recall=0.5, a=20), ev(auroc=0.99, recall=0.9, a=20), pol)
    assert not blind.promote and "recall" in blind.summary
    assert decide(ev(auroc=0.985, recall=0.88, a=20), ev(auroc=0.99, recall=0.9, a=20), pol).promote


def test_different_slices_cannot_be_compared():
    d = decide(ev(n=50), ev(n=40))
    assert not d.promote and "different slices" in d.summary


def test_policy_validates():
    with pytest.raises(ValueError):
        GatePolicy(max_fpr=1.5)


def test_real_scores_worse_model_refused():
    rng = np.random.default_rng(0)
    normals_good, anomalies_good = rng.normal(0, 1, 200), rng.normal(4, 1, 50)
    normals_bad, anomalies_bad = rng.normal(0, 1, 200), rng.normal(0.5, 1, 50)
    good = evaluate_scores(normals_good, anomalies_good, np.quantile(normals_good, 0.99))
    bad = evaluate_scores(normals_bad, anomalies_bad, np.quantile(normals_bad, 0.99))
    assert not decide(bad, good).promote
    assert decide(good, bad).promote
