"""Anomaly-detection metrics (image level, pixel level, AUPRO) as pure numpy functions.

All ranking metrics are computed *exactly* (same values as scikit-learn's ``roc_auc_score``,
``average_precision_score`` and the max F1 over ``precision_recall_curve``) but without sorting
every sample together: positives and negatives are sorted separately and every quantity is
evaluated at the distinct positive scores, which is where recall (and so AP and the best F1)
changes. For pixel metrics that means one sort of the negatives, which keeps ~50 M pixels to a
few seconds on one core.

Conventions: higher score = more anomalous; labels/masks are {0,1}/bool; a metric that is
undefined because one class is absent returns ``nan`` (it is reported, not raised, because an
evaluation of a split without anomalies is legitimate and the other numbers still matter).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class _Curve:
    thresholds: np.ndarray  # distinct positive scores, descending
    tp: np.ndarray          # positives with score >= threshold
    fp: np.ndarray          # negatives with score >= threshold
    fp_eq: np.ndarray       # negatives with score == threshold (for tie-aware AUROC)
    tp_eq: np.ndarray       # positives with score == threshold
    n_pos: int
    n_neg: int


def _check(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels).ravel()
    scores = np.asarray(scores).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"labels and scores differ in size: {labels.size} vs {scores.size}")
    if labels.size == 0:
        raise ValueError("no samples")
    if labels.dtype != bool:
        if not np.isin(labels, (0, 1)).all():
            raise ValueError("labels must be 0/1 or bool")
        labels = labels.astype(bool)
    if scores.dtype.kind not in "fiub":
        raise ValueError(f"scores must be numeric, got {scores.dtype}")
    if scores.dtype.kind == "f" and not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or inf")
    return labels, scores


def _curve(labels: np.ndarray, scores: np.ndarray) -> _Curve:
    labels, scores = _check(labels, scores)
    neg = np.sort(scores[~labels])
    thr, counts = np.unique(scores[labels], return_counts=True)
    thr, counts = thr[::-1], counts[::-1]                    # descending
    tp = np.cumsum(counts)
    ge = np.asarray(neg.size - np.searchsorted(neg, thr, side="left"))   # negatives >= t
    gt = np.asarray(neg.size - np.searchsorted(neg, thr, side="right"))  # negatives > t
    return _Curve(thr, tp, ge, ge - gt, counts, int(tp[-1]) if tp.size else 0, int(neg.size))


def _auroc(c: _Curve) -> float:
    if c.n_pos == 0 or c.n_neg == 0:
        return float("nan")
    below = c.n_neg - c.fp                   # negatives strictly below each positive value
    wins = np.sum(c.tp_eq * (below + 0.5 * c.fp_eq), dtype=np.float64)
    return float(wins / (float(c.n_pos) * float(c.n_neg)))


def _ap(c: _Curve) -> float:
    if c.n_pos == 0:
        return float("nan")
    precision = c.tp / (c.tp + c.fp)
    recall_step = c.tp_eq / c.n_pos
    return float(np.sum(recall_step * precision))


def _f1_max(c: _Curve) -> float:
    if c.n_pos == 0:
        return float("nan")
    f1 = 2.0 * c.tp / (c.tp + c.fp + c.n_pos)
    return float(f1.max())


# --- image level ---------------------------------------------------------------------------


def image_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (ties count one half, like scikit-learn)."""
    return _auroc(_curve(labels, scores))


def image_ap(labels: np.ndarray, scores: np.ndarray) -> float:
    """Average precision: sum over recall steps of precision (no interpolation, like scikit-learn)."""
    return _ap(_curve(labels, scores))


def f1_max(labels: np.ndarray, scores: np.ndarray) -> float:
    """Best F1 over all thresholds."""
    return _f1_max(_curve(labels, scores))


def best_f1_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The score threshold (``score >= t`` is anomalous) that reaches :func:`f1_max`."""
    c = _curve(labels, scores)
    if c.n_pos == 0:
        return float("nan")
    return float(c.thresholds[np.argmax(2.0 * c.tp / (c.tp + c.fp + c.n_pos))])


# --- pixel level ---------------------------------------------------------------------------


def _flatten(masks: Sequence[np.ndarray] | np.ndarray, maps: Sequence[np.ndarray] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if len(masks) != len(maps):
        raise ValueError(f"{len(masks)} masks but {len(maps)} maps")
    for i, (m, a) in enumerate(zip(masks, maps)):
        if np.shape(m) != np.shape(a):
            raise ValueError(f"mask {i} is {np.shape(m)} but its map is {np.shape(a)}")
    lab = np.concatenate([np.asarray(m, dtype=bool).ravel() for m in masks])
    sco = np.concatenate([np.asarray(a, dtype=np.float32).ravel() for a in maps])
    return lab, sco


def pixel_auroc(masks: Sequence[np.ndarray], maps: Sequence[np.ndarray]) -> float:
    """ROC AUC over all pixels of all images (maps must already be at mask size)."""
    return _auroc(_curve(*_flatten(masks, maps)))


def pixel_ap(masks: Sequence[np.ndarray], maps: Sequence[np.ndarray]) -> float:
    return _ap(_curve(*_flatten(masks, maps)))


def pixel_f1_max(masks: Sequence[np.ndarray], maps: Sequence[np.ndarray]) -> float:
    return _f1_max(_curve(*_flatten(masks, maps)))


def pixel_metrics(masks: Sequence[np.ndarray], maps: Sequence[np.ndarray]) -> dict[str, float]:
    """All three pixel metrics from one sort (what :mod:`training.evaluate` uses)."""
    c = _curve(*_flatten(masks, maps))
    return {"pixel_auroc": _auroc(c), "pixel_ap": _ap(c), "pixel_f1_max": _f1_max(c)}


# --- AUPRO ---------------------------------------------------------------------------------


def _working(arr: np.ndarray, short_side: int | None, nearest: bool) -> np.ndarray:
    h, w = arr.shape
    if short_side is None or min(h, w) <= short_side:
        return arr
    s = short_side / min(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    if nearest:
        return cv2.resize(arr.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
    return cv2.resize(arr.astype(np.float32), size, interpolation=cv2.INTER_AREA)


def aupro(
    masks: Sequence[np.ndarray],
    maps: Sequence[np.ndarray],
    max_fpr: float = 0.3,
    short_side: int | None = None,
) -> float:
    """Area under the per-region-overlap curve up to ``max_fpr``, normalised by ``max_fpr``.

    Regions are the 8-connected components of each ground-truth mask. For a threshold t, PRO(t)
    is the mean over all regions (of all images) of the fraction of the region's pixels with
    score >= t, and FPR(t) the fraction of all defect-free pixels with score >= t. The curve runs
    from (0, 0) through every distinct score (exact, no threshold grid), is linearly
    interpolated at ``max_fpr`` and integrated with the trapezoid rule. So a perfect map gives
    1.0 and a constant map gives ``max_fpr / 2``.

    Cost: the curve only bends at defect-pixel scores (between two of them PRO is flat, so the
    trapezoid over that stretch is exact from its end points), so only the defect pixels are
    sorted with their weights, plus the defect-free pixels scoring at least the threshold where
    FPR first passes ``max_fpr`` (found with a linear-time partition; ties kept whole). That is
    one partition and a sort of roughly ``max_fpr`` of the pixels: ~200 maps of 320x800 take a
    few seconds on one core (see ``benchmarks/bench_metrics.py``). ``short_side`` optionally
    downsamples every mask/map pair first (masks nearest, maps area-averaged, which smooths
    noisy maps and so changes the value) so their shorter side is at most that many pixels;
    the default ``None`` keeps full resolution.
    """
    if not 0.0 < max_fpr <= 1.0:
        raise ValueError(f"max_fpr must be in (0, 1], not {max_fpr}")
    if len(masks) != len(maps):
        raise ValueError(f"{len(masks)} masks but {len(maps)} maps")
    pos_s: list[np.ndarray] = []   # scores of defect pixels
    pos_w: list[np.ndarray] = []   # their weight 1/|region|
    neg_s: list[np.ndarray] = []   # scores of defect-free pixels
    n_regions = 0
    for i, (m, a) in enumerate(zip(masks, maps)):
        m = np.asarray(m, dtype=bool)
        a = np.asarray(a, dtype=np.float32)
        if m.shape != a.shape or m.ndim != 2:
            raise ValueError(f"mask {i} is {m.shape} but its map is {a.shape} (both must be 2-D and equal)")
        m, a = _working(m, short_side, True), _working(a, short_side, False)
        if not np.isfinite(a).all():
            raise ValueError(f"map {i} contains NaN or inf")
        if m.any():
            n, lab, stats, _ = cv2.connectedComponentsWithStats(m.astype(np.uint8), connectivity=8)
            inv = np.zeros(n, dtype=np.float64)
            inv[1:] = 1.0 / stats[1:, cv2.CC_STAT_AREA]
            pos_s.append(a[m])
            pos_w.append(inv[lab[m]])
            neg_s.append(a[~m])
            n_regions += n - 1
        else:
            neg_s.append(a.ravel())
    if n_regions == 0:
        return float("nan")
    neg = np.concatenate(neg_s)
    n_neg = neg.size
    if n_neg == 0:
        return float("nan")
    k = int(np.floor(max_fpr * n_neg))  # rank (from the top) of the first negative past the limit
    if k < n_neg:
        cut = np.partition(neg, n_neg - 1 - k)[n_neg - 1 - k]
        neg = neg[neg >= cut]
    else:
        cut = -np.inf
    neg.sort()
    ps, pw = np.concatenate(pos_s), np.concatenate(pos_w)
    keep = ps >= cut
    ps, pw = ps[keep], pw[keep]
    vals, inverse = np.unique(ps, return_inverse=True)
    wsum = np.bincount(inverse.ravel(), weights=pw, minlength=vals.size)
    vals, wsum = vals[::-1], wsum[::-1]                       # thresholds descending
    pro_ge = np.cumsum(wsum) / n_regions
    pro_gt = np.r_[0.0, pro_ge][:-1]
    fpr_ge = (neg.size - np.searchsorted(neg, vals, side="left")) / n_neg
    fpr_gt = (neg.size - np.searchsorted(neg, vals, side="right")) / n_neg
    last_pro = pro_ge[-1] if pro_ge.size else 0.0
    # (0,0), then per defect score v: the flat stretch up to v, the step at v; then flat to the cut.
    fpr = np.r_[0.0, np.column_stack([fpr_gt, fpr_ge]).ravel(), neg.size / n_neg]
    pro = np.r_[0.0, np.column_stack([pro_gt, pro_ge]).ravel(), last_pro]
    return _area_to(fpr, pro, max_fpr) / max_fpr


def _area_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid area under (x, y) (x non-decreasing, starts at 0) from 0 to ``x_max``."""
    inside = x <= x_max
    xs, ys = x[inside], y[inside]
    if xs[-1] < x_max and inside.size > xs.size:
        j = xs.size  # first point beyond x_max
        x0, x1, y0, y1 = x[j - 1], x[j], y[j - 1], y[j]
        y_at = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
        xs, ys = np.r_[xs, x_max], np.r_[ys, y_at]
    return float(np.sum(np.diff(xs) * (ys[1:] + ys[:-1]) / 2.0))
