"""Multi-camera specimen fusion (the M2AD setting): one verdict per physical part from all its views.

A part passing an inspection cell is photographed by several cameras (and/or lights); each frame is
scored on its own by whichever consumer got it. Frames of one part share a ``specimen_id`` (envelope
v2) and say which ``view`` they are. After a consumer has stored a batch, :class:`SpecimenFuser`
looks at the *database* - not at process memory, because the views of one part land on different
consumers - and once all expected views of a specimen are stored it fuses them into one verdict row
in ``specimens`` that refers to its frame results. A periodic :meth:`SpecimenFuser.sweep` decides
specimens whose window timed out on whatever arrived and marks them incomplete.

Scores of different views may come from engines with different thresholds (e.g. zero-shot rolling
thresholds), so views are fused on ``score / threshold``: the specimen score is that fused ratio and
its threshold is 1.0 (``> 1`` = defect). ``max`` flags a part if any view is over its threshold;
``topk_mean(k)`` needs the evidence of k views (fewer false alarms from a single noisy camera, but a
defect visible from one view only is diluted).

Exactly once: the verdict is an ``INSERT .. ON CONFLICT (product, specimen) DO NOTHING``; whichever
consumer (or sweeper) inserts first decides, the others see no row come back and do nothing. A view
arriving after its specimen was decided does not change the verdict (it is logged).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence

import numpy as np

from lineinspect.logs import kv
from lineinspect.settings import Settings
from storage.records import ResultRow, SpecimenDecision, ViewScore
from storage.store import ResultStore

__all__ = ["FUSIONS", "SpecimenDecision", "SpecimenFuser", "ViewScore", "decide", "fuse", "fuse_max",
           "fuse_topk_mean", "threshold_ratio", "timed_out"]

log = logging.getLogger("lineinspect.fusion")

FUSIONS = ("max", "topk_mean")
_RATIO_CAP = 1e6


# --- pure functions -----------------------------------------------------------------------------
def fuse_max(scores: Sequence[float]) -> float:
    """The worst view decides."""
    if len(scores) == 0:
        raise ValueError("no view scores to fuse")
    return float(np.max(np.asarray(scores, np.float64)))


def fuse_topk_mean(scores: Sequence[float], k: int) -> float:
    """Mean of the ``k`` highest view scores (all of them when fewer than ``k`` arrived)."""
    if len(scores) == 0:
        raise ValueError("no view scores to fuse")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    s = np.sort(np.asarray(scores, np.float64))[::-1]
    return float(s[:k].mean())


def fuse(scores: Sequence[float], method: str = "max", k: int = 2) -> float:
    if method == "max":
        return fuse_max(scores)
    if method == "topk_mean":
        return fuse_topk_mean(scores, k)
    raise ValueError(f"unknown fusion {method!r}; choose one of {', '.join(FUSIONS)}")


def threshold_ratio(score: float, threshold: float) -> float:
    """A view's score in units of its own threshold (a threshold <= 0 flags any positive score)."""
    r = float(score) / max(float(threshold), 1e-6)
    return float(min(max(r, -_RATIO_CAP), _RATIO_CAP))


def decide(product: str, specimen_id: str, views: Sequence[ViewScore], expected: int, method: str, k: int,
           now: float) -> SpecimenDecision:
    """Fuse the views of one specimen. Several frames of the same view (a re-shot) count once, at their worst."""
    if not views:
        raise ValueError("a specimen needs at least one view")
    per_view: dict[str, float] = {}
    for v in views:
        r = threshold_ratio(v.score, v.threshold)
        per_view[v.view] = max(per_view.get(v.view, -np.inf), r)
    fused = fuse(list(per_view.values()), method, k)
    return SpecimenDecision(
        product=product, specimen_id=specimen_id, expected_views=int(expected), received_views=len(per_view),
        score=fused, threshold=1.0, verdict="defect" if fused > 1.0 else "ok", fusion=method,
        complete=len(per_view) >= expected, first_seen_at=min(v.stored_at for v in views), decided_at=float(now),
        result_ids=sorted(v.result_id for v in views))


def timed_out(first_seen_at: float, now: float, timeout_s: float) -> bool:
    return now - first_seen_at >= timeout_s


# --- the database-backed fuser --------------------------------------------------------------------
class SpecimenFuser:
    """Decides each (product, specimen) once, from the frame results the store holds.

    The reads and the exactly-once insert are the store's (:meth:`ResultStore.decide_specimen`, one
    write transaction); this class owns the policy: which fusion, how many views make a part
    complete, and when an incomplete part is decided anyway.
    """

    def __init__(self, store: ResultStore, settings: Settings, lookback_s: float = 24 * 3600.0) -> None:
        self.store = store
        self.default_views = int(settings.fusion_default_views)
        self.method = str(settings.fusion_method)
        self.k = int(settings.fusion_topk)
        self.timeout_s = float(settings.fusion_timeout_s)
        self.lookback_s = max(float(lookback_s), 10 * self.timeout_s)
        if self.method not in FUSIONS:
            raise ValueError(f"fusion_method must be one of {FUSIONS}, not {self.method!r}")
        if self.default_views < 1 or self.k < 1 or self.timeout_s <= 0:
            raise ValueError("fusion_default_views and fusion_topk must be >= 1, fusion_timeout_s > 0")

    def _try(self, product: str, specimen_id: str, now: float, force: bool) -> SpecimenDecision | None:
        def policy(views: list[ViewScore], expected: int | None) -> SpecimenDecision | None:
            d = decide(product, specimen_id, views, expected or self.default_views, self.method, self.k, now)
            if not d.complete and not (force or timed_out(d.first_seen_at, now, self.timeout_s)):
                return None
            return d

        d = self.store.decide_specimen(product, specimen_id, policy)
        if d is not None:
            log.info("specimen decided", extra=kv(product=product, specimen=specimen_id, verdict=d.verdict,
                                                   score=round(d.score, 4),
                                                   views=f"{d.received_views}/{d.expected_views}",
                                                   complete=d.complete))
        return d

    # public -----------------------------------------------------------------------------------
    def on_results(self, rows: Iterable[ResultRow], now: float | None = None) -> list[SpecimenDecision]:
        """Call after ``save_results``: decide every specimen of ``rows`` whose views are all stored."""
        now = time.time() if now is None else float(now)
        keys = sorted({(r.product, r.specimen_id) for r in rows if r.specimen_id})
        out = []
        for product, sid in keys:
            d = self._try(product, sid, now, force=False)
            if d is not None:
                out.append(d)
        return out

    def sweep(self, now: float | None = None) -> list[SpecimenDecision]:
        """Decide every undecided specimen whose first view is at least ``fusion_timeout_s`` old."""
        now = time.time() if now is None else float(now)
        out = []
        for product, sid in self.store.due_specimens(now, self.timeout_s, self.lookback_s):
            d = self._try(product, sid, now, force=True)
            if d is not None:
                out.append(d)
        return out
