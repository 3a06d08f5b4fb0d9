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
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import and_, exists, func, select

from lineinspect.logs import kv
from storage.models import Camera, InspectionResult, Product, Specimen

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


@dataclass(frozen=True)
class ViewScore:
    result_id: int
    view: str          # the envelope's view, or the camera name when no view was given
    score: float
    threshold: float
    stored_at: float


@dataclass(frozen=True)
class SpecimenDecision:
    product: str
    specimen_id: str
    expected_views: int
    received_views: int
    score: float       # fused score / threshold ratio
    threshold: float   # always 1.0 (ratios)
    verdict: str
    fusion: str
    complete: bool
    first_seen_at: float
    decided_at: float
    result_ids: list[int]


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
    """Groups stored frame results by (product, specimen) and writes each specimen's verdict once.

    ``store`` is a :class:`storage.store.ResultStore` (its SQLAlchemy engine is used directly for the
    few reads this needs); ``settings`` supplies ``fusion_default_views``, ``fusion_method``,
    ``fusion_topk`` and ``fusion_timeout_s``.
    """

    def __init__(self, store: Any, settings: Any, lookback_s: float = 24 * 3600.0) -> None:
        self.store = store
        self.engine = store.engine
        self.default_views = int(getattr(settings, "fusion_default_views", 3))
        self.method = str(getattr(settings, "fusion_method", "max"))
        self.k = int(getattr(settings, "fusion_topk", 2))
        self.timeout_s = float(getattr(settings, "fusion_timeout_s", 30.0))
        self.lookback_s = max(float(lookback_s), 10 * self.timeout_s)
        if self.method not in FUSIONS:
            raise ValueError(f"fusion_method must be one of {FUSIONS}, not {self.method!r}")
        if self.default_views < 1 or self.k < 1 or self.timeout_s <= 0:
            raise ValueError("fusion_default_views and fusion_topk must be >= 1, fusion_timeout_s > 0")

    # reads ------------------------------------------------------------------------------------
    def _views(self, conn: Any, product_id: int, specimen_id: str) -> list[ViewScore]:
        t = InspectionResult
        q = (select(t.id, t.view, Camera.name, t.score, t.threshold, t.stored_at)
             .join(Camera, Camera.id == t.camera_id)
             .where(t.product_id == product_id, t.specimen_id == specimen_id))
        return [ViewScore(int(i), v or cam, float(s), float(th), float(st)) for i, v, cam, s, th, st in conn.execute(q).all()]

    def _expected(self, conn: Any, product_id: int) -> int:
        ev = conn.execute(select(Product.expected_views).where(Product.id == product_id)).scalar_one_or_none()
        return int(ev) if ev else self.default_views

    def _decided(self, conn: Any, product_id: int, specimen_id: str) -> bool:
        q = select(Specimen.id).where(Specimen.product_id == product_id, Specimen.specimen_id == specimen_id)
        return conn.execute(q).first() is not None

    # writes -----------------------------------------------------------------------------------
    def _insert(self, conn: Any, product_id: int, d: SpecimenDecision) -> bool:
        from storage.store import dialect_insert

        stmt = (dialect_insert(conn, Specimen)
                .values(product_id=product_id, specimen_id=d.specimen_id, expected_views=d.expected_views,
                        received_views=d.received_views, score=d.score, threshold=d.threshold, verdict=d.verdict,
                        fusion=d.fusion, complete=d.complete, first_seen_at=d.first_seen_at,
                        decided_at=d.decided_at, result_ids=d.result_ids)
                .on_conflict_do_nothing(index_elements=["product_id", "specimen_id"])
                .returning(Specimen.id))
        return conn.execute(stmt).first() is not None

    def _try(self, product: str, product_id: int, specimen_id: str, now: float, force: bool) -> SpecimenDecision | None:
        from storage.db import WRITE, service_errors

        # one write transaction (BEGIN IMMEDIATE on SQLite): read views, decide, insert-or-nothing
        with service_errors(self.store.url), self.engine.connect().execution_options(**WRITE) as conn, conn.begin():
            if self._decided(conn, product_id, specimen_id):
                return None
            views = self._views(conn, product_id, specimen_id)
            if not views:
                return None
            expected = self._expected(conn, product_id)
            d = decide(product, specimen_id, views, expected, self.method, self.k, now)
            if not d.complete and not (force or timed_out(d.first_seen_at, now, self.timeout_s)):
                return None
            if not self._insert(conn, product_id, d):
                return None      # another consumer decided it first
        log.info("specimen decided", extra=kv(product=product, specimen=specimen_id, verdict=d.verdict,
                                               score=round(d.score, 4), views=f"{d.received_views}/{d.expected_views}",
                                               complete=d.complete))
        return d

    # public -----------------------------------------------------------------------------------
    def on_results(self, rows: Iterable[Any], now: float | None = None) -> list[SpecimenDecision]:
        """Call after ``save_results``: decide every specimen of ``rows`` whose views are all stored."""
        now = time.time() if now is None else float(now)
        keys = sorted({(r.product, r.specimen_id) for r in rows if getattr(r, "specimen_id", None)})
        if not keys:
            return []
        with self.engine.connect() as conn:
            pids = dict(conn.execute(select(Product.name, Product.id)
                                     .where(Product.name.in_(sorted({p for p, _ in keys})))).all())
        out = []
        for product, sid in keys:
            if product not in pids:
                continue
            d = self._try(product, pids[product], sid, now, force=False)
            if d is not None:
                out.append(d)
        return out

    def sweep(self, now: float | None = None) -> list[SpecimenDecision]:
        """Decide every undecided specimen whose first view is at least ``fusion_timeout_s`` old."""
        now = time.time() if now is None else float(now)
        t = InspectionResult
        decided = exists().where(and_(Specimen.product_id == t.product_id, Specimen.specimen_id == t.specimen_id))
        q = (select(Product.name, t.product_id, t.specimen_id, func.min(t.stored_at))
             .join(Product, Product.id == t.product_id)
             .where(t.specimen_id.is_not(None), t.captured_at >= now - self.lookback_s, ~decided)
             .group_by(Product.name, t.product_id, t.specimen_id)
             .having(func.min(t.stored_at) <= now - self.timeout_s))
        with self.engine.connect() as conn:
            due = conn.execute(q).all()
        out = []
        for product, pid, sid, _first in due:
            d = self._try(product, int(pid), sid, now, force=True)
            if d is not None:
                out.append(d)
        return out
