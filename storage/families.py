"""Defect families in the database: region embeddings, incremental grouping per product, names.

Write path (the consumer's post-store step, :class:`inference.families.FamilyStep`): in one
transaction the new regions are inserted (idempotent on ``(result_id, component)``), the product's
``family_settings`` row is locked (``SELECT .. FOR UPDATE`` on PostgreSQL; SQLite serialises writers),
and every still-unassigned region of the product is grouped by :class:`FamilyClusterer` in id order.
Until a product has ``warmup`` regions its threshold is unknown and the regions wait unassigned; the
threshold is then fitted once from those first regions (:func:`fit_threshold`) and kept. Because the
grouping always takes "every unassigned region", a consumer that died between insert and grouping
loses nothing: the next batch of that product picks them up.

Read path: the dashboard's Families page (Pareto, examples, locations, trend per family).
"""

from __future__ import annotations

import logging
import time
from typing import Any, cast

import numpy as np
from sqlalchemy import Engine, Table, and_, func, select, update
from sqlalchemy.engine import Connection

from lineinspect.family_clustering import Family, FamilyClusterer, fit_threshold
from lineinspect.logs import kv
from lineinspect.names import check_name, check_text
from storage.db import WRITE, service_errors
from storage.models import (
    Camera,
    DefectFamily,
    DefectRegion,
    FamilySettings,
    FrameImage,
    InspectionResult,
    Mask,
    Product,
)
from storage.queries import Filters
from storage.store import dialect_insert

log = logging.getLogger("lineinspect.families")

DEFAULT_WARMUP = 20
RG, FM, FS, R = (cast(Table, m.__table__) for m in (DefectRegion, DefectFamily, FamilySettings, InspectionResult))


def to_bytes(v: np.ndarray) -> bytes:
    """Embeddings travel as float16 bytes (120 floats -> 240 bytes)."""
    return np.asarray(v, dtype=np.float16).tobytes()


def from_bytes(b: bytes) -> np.ndarray:
    return np.frombuffer(bytes(b), dtype=np.float16).astype(np.float32)


class FamilyStore:
    """Families of every product in one database (the engine is the result store's)."""

    def __init__(self, engine: Engine, url: str = "", warmup: int = DEFAULT_WARMUP, factor: float = 2.0,
                 merge_ratio: float = 0.5) -> None:
        if warmup < 2:
            raise ValueError(f"warmup must be >= 2 regions, got {warmup}")
        self.engine = engine
        self.url = url or str(engine.url)
        self.warmup = warmup
        self.factor = factor
        self.merge_ratio = merge_ratio

    # --- write ---------------------------------------------------------------------------
    def add_regions(self, batch: list[tuple[Any, list[Any]]]) -> int:
        """Store ``[(ResultRow, [Region, ...]), ...]`` and group the products' unassigned regions;
        returns the number of regions newly inserted. Rows not (yet) in the store are skipped."""
        if not batch:
            return 0
        inserted = 0
        with service_errors(self.url), self.engine.connect().execution_options(**WRITE) as conn, conn.begin():
            products: set[int] = set()
            for row, regions in batch:
                found = conn.execute(
                    select(R.c.id, R.c.product_id, R.c.captured_at)
                    .join(Camera.__table__, Camera.__table__.c.id == R.c.camera_id)
                    .where(Camera.__table__.c.name == row.camera, R.c.frame_id == int(row.frame_id))
                ).first()
                if found is None:
                    log.warning("region's result not stored; skipped", extra=kv(camera=row.camera, frame_id=row.frame_id))
                    continue
                rid, pid, cap = found
                values = [{"result_id": rid, "product_id": pid, "captured_at": cap, "component": int(g.index),
                           "cx": _unit(g.cx), "cy": _unit(g.cy), "x0": _unit(g.x0), "y0": _unit(g.y0),
                           "x1": _unit(g.x1), "y1": _unit(g.y1), "area_px": int(g.area_px),
                           "embedding": _embedding_bytes(g.embedding)} for g in regions]
                if values:
                    res = conn.execute(dialect_insert(conn, RG).values(values)
                                       .on_conflict_do_nothing(index_elements=["result_id", "component"]))
                    inserted += max(0, res.rowcount or 0)
                    products.add(int(pid))
            for pid in sorted(products):
                self._group(conn, pid)
        return inserted

    def _group(self, conn: Connection, product_id: int) -> None:
        """Assign the product's unassigned regions (module docstring)."""
        now = time.time()
        conn.execute(dialect_insert(conn, FS).values(product_id=product_id, threshold=None, fitted_on=0, fitted_at=None)
                     .on_conflict_do_nothing(index_elements=["product_id"]))
        q = select(FS.c.threshold).where(FS.c.product_id == product_id)
        if conn.dialect.name == "postgresql":
            q = q.with_for_update()
        threshold = conn.execute(q).scalar_one()
        pending = conn.execute(select(RG.c.id, RG.c.embedding).where(RG.c.product_id == product_id, RG.c.family_id.is_(None))
                               .order_by(RG.c.id)).all()
        if not pending:
            return
        if threshold is None:
            first = conn.execute(select(RG.c.embedding).where(RG.c.product_id == product_id).order_by(RG.c.id)
                                 .limit(self.warmup)).scalars().all()
            if len(first) < self.warmup:
                return  # still warming up: the regions wait unassigned
            threshold = fit_threshold(np.stack([from_bytes(b) for b in first]), self.factor)
            conn.execute(update(FS).where(FS.c.product_id == product_id)
                         .values(threshold=threshold, fitted_on=len(first), fitted_at=now))
            log.info("family threshold fitted", extra=kv(product_id=product_id, threshold=round(threshold, 4), regions=len(first)))
        fams = [Family(int(r["family_id"]), np.frombuffer(bytes(r["total"]), np.float32).astype(np.float64),
                       int(r["count"]), r["name"], r["merged_into"])
                for r in conn.execute(select(FM).where(FM.c.product_id == product_id)).mappings()]
        before = {f.id: (f.count, f.name, f.merged_into) for f in fams}
        c = FamilyClusterer(float(threshold), fams, merge_ratio=self.merge_ratio)
        labels = [(int(rid), c.assign(from_bytes(emb)).family_id) for rid, emb in pending]
        for rid, fid in labels:
            conn.execute(update(RG).where(RG.c.id == rid).values(family_id=c.resolve(fid)))
        for gone, keep in c.merges:
            conn.execute(update(RG).where(RG.c.product_id == product_id, RG.c.family_id == gone)
                         .values(family_id=c.resolve(keep)))
        for f in c.families:
            vals = {"total": f.total.astype(np.float32).tobytes(), "count": f.count, "name": f.name,
                    "merged_into": f.merged_into, "updated_at": now}
            if f.id in before:
                if before[f.id] != (f.count, f.name, f.merged_into) or f.merged_into is None:
                    conn.execute(update(FM).where(FM.c.product_id == product_id, FM.c.family_id == f.id).values(**vals))
            else:
                conn.execute(dialect_insert(conn, FM).values(product_id=product_id, family_id=f.id, created_at=now, **vals))
        if c.merges:
            log.info("families merged", extra=kv(product_id=product_id, merges=len(c.merges)))

    def set_name(self, product: str, family_id: int, name: str | None) -> int:
        """Name a family (``None`` or blank clears it); a merged id names the family it ended in.
        Returns the family id that carries the name. Later members inherit it: names live on the family."""
        check_name("product", product)
        if name is not None:
            name = check_text("family name", name.strip(), 128) or None
        with service_errors(self.url), self.engine.connect().execution_options(**WRITE) as conn, conn.begin():
            pid = conn.execute(select(Product.__table__.c.id).where(Product.__table__.c.name == product)).scalar()
            if pid is None:
                raise LookupError(f"no product {product!r}")
            fid = int(family_id)
            for _ in range(1000):  # follow merges
                row = conn.execute(select(FM.c.merged_into).where(FM.c.product_id == pid, FM.c.family_id == fid)).first()
                if row is None:
                    raise LookupError(f"product {product!r} has no family {family_id}")
                if row[0] is None:
                    break
                fid = int(row[0])
            conn.execute(update(FM).where(FM.c.product_id == pid, FM.c.family_id == fid)
                         .values(name=name, updated_at=time.time()))
        log.info("family named", extra=kv(product=product, family_id=fid, named=name is not None))
        return fid

    # --- read (tests, CLI) --------------------------------------------------------------------
    def families(self, product: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return families(conn, product)

    def regions_of(self, camera: str, frame_id: int) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(RG).join(R, R.c.id == RG.c.result_id).join(Camera.__table__, Camera.__table__.c.id == R.c.camera_id)
                .where(Camera.__table__.c.name == camera, R.c.frame_id == int(frame_id)).order_by(RG.c.component)
            ).mappings().all()
        out = []
        for r in rows:
            d = dict(r)
            d["embedding"] = from_bytes(d["embedding"])
            out.append(d)
        return out

    def threshold(self, product: str) -> float | None:
        with self.engine.connect() as conn:
            return conn.execute(select(FS.c.threshold).join(Product.__table__, Product.__table__.c.id == FS.c.product_id)
                                .where(Product.__table__.c.name == product)).scalar()


def _unit(x: float) -> float:
    x = float(x)
    if not (0.0 <= x <= 1.0):
        raise ValueError(f"region coordinate {x!r} outside the frame (0..1)")
    return x


def _embedding_bytes(v: np.ndarray) -> bytes:
    a = np.asarray(v, dtype=np.float32).ravel()
    if a.size == 0 or a.size > 1024 or not np.all(np.isfinite(a)):
        raise ValueError(f"embedding must be 1..1024 finite floats, got {a.size}")
    return to_bytes(a)


# --- dashboard queries ------------------------------------------------------------------------
def families(conn: Connection, product: str) -> list[dict[str, Any]]:
    """Every family of a product (merged ones too): {family_id, name, count, merged_into}."""
    P = Product.__table__
    q = (select(FM.c.family_id, FM.c.name, FM.c.count, FM.c.merged_into).join(P, P.c.id == FM.c.product_id)
         .where(P.c.name == product).order_by(FM.c.family_id))
    return [dict(r) for r in conn.execute(q).mappings()]


def _where(f: Filters) -> list[Any]:
    cond: list[Any] = []
    if f.start is not None:
        cond.append(RG.c.captured_at >= f.start)
    if f.end is not None:
        cond.append(RG.c.captured_at < f.end)
    if f.product_ids:
        cond.append(RG.c.product_id.in_(f.product_ids))
    if f.line_ids:
        cond.append(R.c.line_id.in_(f.line_ids))
    if f.camera_ids:
        cond.append(R.c.camera_id.in_(f.camera_ids))
    cond.append(R.c.false_alarm.is_(False))
    return cond


def pareto(conn: Connection, f: Filters) -> list[dict[str, Any]]:
    """Regions and frames per (product, family) in the filters, most first:
    [{product_id, product, family_id (None = not grouped yet), name, regions, frames}]."""
    P = Product.__table__
    q = (
        select(RG.c.product_id, P.c.name.label("product"), RG.c.family_id, FM.c.name,
               func.count().label("regions"), func.count(func.distinct(RG.c.result_id)).label("frames"))
        .select_from(RG)
        .join(R, R.c.id == RG.c.result_id)
        .join(P, P.c.id == RG.c.product_id)
        .outerjoin(FM, and_(FM.c.product_id == RG.c.product_id, FM.c.family_id == RG.c.family_id))
        .where(*_where(f))
        .group_by(RG.c.product_id, P.c.name, RG.c.family_id, FM.c.name)
        .order_by(func.count().desc(), RG.c.product_id, RG.c.family_id)
    )
    return [dict(r) for r in conn.execute(q).mappings()]


def examples(conn: Connection, product_id: int, family_id: int, f: Filters, limit: int = 4) -> list[dict[str, Any]]:
    """The newest regions of a family with their stored evidence for a crop:
    [{result_id, x0, y0, x1, y1, frame, encoding, heat_png}] (frame/heat may be None)."""
    if limit <= 0:
        raise ValueError(f"limit must be > 0, got {limit!r}")
    F, M = FrameImage.__table__, Mask.__table__
    q = (
        select(RG.c.result_id, RG.c.x0, RG.c.y0, RG.c.x1, RG.c.y1, F.c.data.label("frame"), F.c.encoding, M.c.heat_png)
        .select_from(RG)
        .join(R, R.c.id == RG.c.result_id)
        .outerjoin(F, F.c.result_id == RG.c.result_id)
        .outerjoin(M, M.c.result_id == RG.c.result_id)
        .where(RG.c.product_id == product_id, RG.c.family_id == family_id, *_where(f))
        .order_by(RG.c.captured_at.desc(), RG.c.id.desc())
        .limit(limit)
    )
    return [dict(r) for r in conn.execute(q).mappings()]


def locations(conn: Connection, product_id: int, family_id: int, f: Filters, limit: int = 2000) -> list[tuple[float, float]]:
    """Mask centroids (cx, cy in 0..1) of a family's newest ``limit`` regions: its location heatmap."""
    q = (select(RG.c.cx, RG.c.cy).select_from(RG).join(R, R.c.id == RG.c.result_id)
         .where(RG.c.product_id == product_id, RG.c.family_id == family_id, *_where(f))
         .order_by(RG.c.captured_at.desc()).limit(limit))
    return [(float(a), float(b)) for a, b in conn.execute(q).all()]


def trend(conn: Connection, f: Filters, bucket_s: float, origin: float = 0.0) -> list[dict[str, Any]]:
    """Regions and distinct frames per (product, family, time bucket):
    [{product_id, family_id, bucket, regions, frames}]; ``bucket`` is the bucket's start (epoch s,
    buckets aligned to ``origin`` as in :func:`storage.queries.trend`). Bucketed in Python over the
    range's regions (flagged frames only, so a small share of the results)."""
    if not (bucket_s > 0):
        raise ValueError(f"bucket_s must be > 0, got {bucket_s!r}")
    q = (select(RG.c.product_id, RG.c.family_id, RG.c.captured_at, RG.c.result_id).select_from(RG)
         .join(R, R.c.id == RG.c.result_id).where(RG.c.family_id.is_not(None), *_where(f)))
    regions: dict[tuple[int, int, float], int] = {}
    frames: dict[tuple[int, int, float], set[int]] = {}
    for pid, fid, t, rid in conn.execute(q).all():
        key = (int(pid), int(fid), float(np.floor((float(t) - origin) / bucket_s) * bucket_s + origin))
        regions[key] = regions.get(key, 0) + 1
        frames.setdefault(key, set()).add(int(rid))
    return [{"product_id": p, "family_id": fi, "bucket": b, "regions": n, "frames": len(frames[(p, fi, b)])}
            for (p, fi, b), n in sorted(regions.items())]
