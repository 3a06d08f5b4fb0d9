"""Metrics against scikit-learn, a brute-force AUPRO, and cases worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from training import metrics as M


def _sk_f1_max(y: np.ndarray, s: np.ndarray) -> float:
    p, r, _ = precision_recall_curve(y, s)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
    return float(f1.max())


@pytest.mark.parametrize("seed", range(12))
def test_image_metrics_match_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 400))
    y = rng.random(n) < rng.uniform(0.1, 0.9)
    y[0], y[1] = True, False
    # Rounded scores force many ties, which is where hand-rolled ROC/PR code usually goes wrong.
    s = np.round(rng.normal(size=n) + y * rng.uniform(0, 2), int(rng.integers(0, 3)))
    assert M.image_auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert M.image_ap(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert M.f1_max(y, s) == pytest.approx(_sk_f1_max(y, s), abs=1e-12)


def test_hand_computed_image_case() -> None:
    y = np.array([0, 0, 1, 1])
    s = np.array([0.1, 0.4, 0.35, 0.8])
    assert M.image_auroc(y, s) == pytest.approx(0.75)  # 3 of 4 (pos, neg) pairs ordered
    # thresholds 0.8: P=1 R=.5 ; 0.35: P=2/3 R=1  -> AP = .5*1 + .5*2/3
    assert M.image_ap(y, s) == pytest.approx(0.5 + 1 / 3)
    assert M.f1_max(y, s) == pytest.approx(0.8)  # at 0.35: 2*(2/3)*1/(5/3)
    assert M.best_f1_threshold(y, s) == pytest.approx(0.35)


def test_undefined_metrics_are_nan_and_bad_input_raises() -> None:
    assert np.isnan(M.image_auroc([0, 0, 0], [0.1, 0.2, 0.3]))
    assert np.isnan(M.image_ap([0, 0], [0.1, 0.2]))
    assert M.image_auroc([1, 1], [0.1, 0.2]) != M.image_auroc([1, 1], [0.1, 0.2])  # nan
    with pytest.raises(ValueError, match="NaN"):
        M.image_auroc([0, 1], [0.1, np.nan])
    with pytest.raises(ValueError, match="differ"):
        M.image_auroc([0, 1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="0/1"):
        M.image_auroc([0, 2], [0.1, 0.2])


@pytest.mark.parametrize("seed", range(4))
def test_pixel_metrics_match_sklearn_on_flattened(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    shapes = [(17, 23), (9, 31), (20, 20)]
    masks = [rng.random(sh) < 0.15 for sh in shapes]
    maps = [np.round(rng.random(sh) + 0.7 * m, 2).astype(np.float32) for sh, m in zip(shapes, masks)]
    y = np.concatenate([m.ravel() for m in masks])
    s = np.concatenate([a.ravel() for a in maps])
    assert M.pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(y, s), abs=1e-9)
    assert M.pixel_ap(masks, maps) == pytest.approx(average_precision_score(y, s), abs=1e-9)
    assert M.pixel_f1_max(masks, maps) == pytest.approx(_sk_f1_max(y, s), abs=1e-9)
    both = M.pixel_metrics(masks, maps)
    assert both["pixel_auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-9)
    with pytest.raises(ValueError, match="map is"):
        M.pixel_auroc(masks, [maps[1], maps[0], maps[2]])


# --- AUPRO -----------------------------------------------------------------------------------


def _brute_aupro(masks: list[np.ndarray], maps: list[np.ndarray], max_fpr: float) -> float:
    """Straight from the definition: loop over every distinct threshold."""
    regions = []
    for i, m in enumerate(masks):
        lab, n = ndimage.label(m, structure=np.ones((3, 3)))
        regions += [(i, lab == r) for r in range(1, n + 1)]
    neg_total = sum(int((~m).sum()) for m in masks)
    pts = [(0.0, 0.0)]
    for t in np.unique(np.concatenate([a.ravel() for a in maps]))[::-1]:
        fp = sum(int(((a >= t) & ~m).sum()) for m, a in zip(masks, maps))
        pro = np.mean([(maps[i][r] >= t).mean() for i, r in regions])
        pts.append((fp / neg_total, pro))
    x, y = np.array(pts).T
    return M._area_to(x, y, max_fpr) / max_fpr


def test_aupro_perfect_and_constant_maps() -> None:
    m = np.zeros((40, 60), dtype=bool)
    m[5:12, 5:20] = True
    m[30:35, 40:58] = True
    assert M.aupro([m], [m.astype(np.float32)]) == pytest.approx(1.0)
    # Constant map: the curve is (0,0) -> (1,1); area to 0.3 is 0.3^2/2, normalised: 0.15.
    assert M.aupro([m], [np.full(m.shape, 0.5, np.float32)]) == pytest.approx(0.15)
    # Inverted map: PRO stays 0 until every negative is flagged.
    assert M.aupro([m], [(~m).astype(np.float32)]) == pytest.approx(0.0)


def test_aupro_two_regions_by_hand() -> None:
    # 10x10 image, 100 px: region A (4 px) scores 0.9, region B (4 px) scores 0.5,
    # negatives: 10 px at 0.7, 82 px at 0.1 (92 negatives).
    mask = np.zeros((10, 10), dtype=bool)
    amap = np.full((10, 10), 0.1, dtype=np.float32)
    mask[0:2, 0:2] = True
    amap[0:2, 0:2] = 0.9
    mask[6:8, 6:8] = True
    amap[6:8, 6:8] = 0.5
    amap[4, :] = 0.7
    # Curve: (0,0) -t=.9-> (0, .5) -t=.7-> (10/92, .5) -t=.5-> (10/92, 1) -t=.1-> (1, 1).
    # Area to 0.3: 0.5*10/92 + 1*(0.3 - 10/92) ; normalised by 0.3.
    expected = (0.5 * 10 / 92 + (0.3 - 10 / 92)) / 0.3
    assert M.aupro([mask], [amap]) == pytest.approx(expected)
    assert M.aupro([mask], [amap], max_fpr=0.05) == pytest.approx(0.5)


@pytest.mark.parametrize("seed", range(5))
def test_aupro_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    masks, maps = [], []
    for _ in range(4):
        h, w = rng.integers(12, 30, size=2)
        m = ndimage.binary_opening(rng.random((h, w)) < 0.35) if rng.random() < 0.8 else np.zeros((h, w), bool)
        a = np.round(rng.random((h, w)) * 0.8 + 0.5 * m, 2).astype(np.float32)
        masks.append(m)
        maps.append(a)
    masks[0][2:5, 2:5] = True
    for max_fpr in (0.3, 0.1, 1.0):
        assert M.aupro(masks, maps, max_fpr) == pytest.approx(_brute_aupro(masks, maps, max_fpr), abs=1e-9)


def test_aupro_downsampling_keeps_a_good_map_good_and_no_regions_is_nan() -> None:
    m = np.zeros((320, 800), dtype=bool)
    m[100:140, 300:420] = True
    a = m.astype(np.float32) + np.random.default_rng(0).normal(0, 0.1, m.shape).astype(np.float32)
    full = M.aupro([m], [a])
    small = M.aupro([m], [a], short_side=128)
    assert full > 0.95 and abs(full - small) < 0.03
    assert np.isnan(M.aupro([np.zeros((5, 5), bool)], [np.zeros((5, 5), np.float32)]))
    with pytest.raises(ValueError, match="max_fpr"):
        M.aupro([m], [a], max_fpr=0)
