"""Per-product thresholds for a detector that was never calibrated: a quantile of recent scores.

A zero-shot detector has no held-out normals, so its threshold is learnt from the product's own
stream: ``quantile(q)`` of the last ``window`` scores. That is only meaningful if the stream is
mostly normal - the threshold assumes a defect rate below ``1 - q`` (q = 0.99 flags about the top
1 % of frames; with 5 % defective frames it misses the less obvious ones, with 0.1 % it raises
false alarms). Until ``min_scores`` scores exist the estimate is a robust ``median + k * MAD`` of
what is known (history plus the batch being scored); with fewer than ``robust_min`` scores the
threshold is ``warmup_threshold`` (default 0: flag for review rather than pass a possible defect).
Every result scored before ``min_scores`` is reported as *warming up*.

State is per process (a restart warms up again unless :meth:`seed` is fed recent stored scores).
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ThresholdEstimate:
    value: float
    calibrated: bool       # True once the rolling window holds >= min_scores scores
    source: str            # "rolling-quantile" | "robust-warmup" | "default-warmup"
    n: int                 # scores the estimate is based on


class RollingThreshold:
    """Thread-safe rolling score windows, one per product."""

    def __init__(self, quantile: float = 0.99, window: int = 200, min_scores: int = 50, robust_min: int = 5,
                 mad_k: float = 3.0, warmup_threshold: float = 0.0) -> None:
        if not 0.5 <= quantile < 1.0:
            raise ValueError(f"quantile must be in [0.5, 1), got {quantile}")
        if window < 2 or not 1 <= min_scores <= window:
            raise ValueError(f"need window >= 2 and 1 <= min_scores <= window (got {window}, {min_scores})")
        self.quantile = quantile
        self.window = window
        self.min_scores = min_scores
        self.robust_min = max(1, robust_min)
        self.mad_k = mad_k
        self.warmup_threshold = float(warmup_threshold)
        self._scores: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _hist(self, product: str) -> deque[float]:
        return self._scores.setdefault(product, deque(maxlen=self.window))

    def estimate(self, product: str, pending: np.ndarray | None = None) -> ThresholdEstimate:
        """The threshold for the next scores of ``product`` (``pending``: the batch about to be judged)."""
        with self._lock:
            hist = np.fromiter(self._hist(product), dtype=np.float64)
        if hist.size >= self.min_scores:
            return ThresholdEstimate(float(np.quantile(hist, self.quantile)), True, "rolling-quantile", int(hist.size))
        pool = hist if pending is None else np.concatenate([hist, np.asarray(pending, np.float64).ravel()])
        if pool.size >= self.robust_min:
            med = float(np.median(pool))
            mad = float(np.median(np.abs(pool - med))) * 1.4826
            return ThresholdEstimate(med + self.mad_k * mad, False, "robust-warmup", int(pool.size))
        return ThresholdEstimate(self.warmup_threshold, False, "default-warmup", int(pool.size))

    def update(self, product: str, scores: np.ndarray) -> None:
        with self._lock:
            self._hist(product).extend(float(s) for s in np.asarray(scores).ravel())

    def seed(self, product: str, scores: list[float] | np.ndarray) -> None:
        """Prime a product's window (e.g. with its recent stored zero-shot scores after a restart)."""
        self.update(product, np.asarray(scores, np.float64))

    def count(self, product: str) -> int:
        with self._lock:
            return len(self._scores.get(product, ()))
