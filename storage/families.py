"""Defect families and flagged regions: the only SQL the families feature issues.

A product's families (centroid, count, operator name) are saved after every batch that changed them,
so any consumer (or a restarted one) continues the same grouping: :meth:`FamilyStore.load` gives the
families back and the clustering resumes with them, names included.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import func, select, update

from storage.db import WRITE, service_errors
from storage.models import DefectFamily, DefectRegion, FrameImage, InspectionResult
from storage.store import SharedDbStore, dialect_insert


@dataclass(frozen=True)
class RegionRow:
    result_id: int
    product: str
    region: int
    family: int
    area_px: int
    bbox: tuple[int, int, int, int]
    centroid: tuple[float, float]
    captured_at: float
    embedding: np.ndarray


class FamilyStore(SharedDbStore):
    """Reads and writes the defect-family tables; shares the result store's SQLAlchemy engine."""

    def load(self, product: str) -> tuple[float | None, list[dict]]:
        """(threshold, families) of ``product``: each {family, name, centroid (np), count}."""
        q = select(DefectFamily.family, DefectFamily.name, DefectFamily.centroid, DefectFamily.count,
                   DefectFamily.threshold).where(DefectFamily.product == product).order_by(DefectFamily.family)
        with service_errors(self.url), self.db_engine.connect() as conn:
            rows = conn.execute(q).all()
        if not rows:
            return None, []
        return float(rows[0][4]), [{"family": int(f), "name": n, "centroid": np.asarray(c, np.float32), "count": int(k)}
                                   for f, n, c, k, _ in rows]

    def save(self, product: str, threshold: float, families: list[Any], regions: list[RegionRow]) -> None:
        """Upsert the product's families (centroid and count; the name is never overwritten here) and
        insert the regions (idempotent on (result, region))."""
        now = time.time()
        with service_errors(self.url), self.db_engine.connect().execution_options(**WRITE) as conn, conn.begin():
            for f in families:
                vals = {"centroid": [round(float(v), 5) for v in f.centroid], "count": int(f.count),
                        "threshold": float(threshold), "updated_at": now}
                conn.execute(dialect_insert(conn, DefectFamily)
                             .values(product=product, family=int(f.id), created_at=now, **vals)
                             .on_conflict_do_update(index_elements=["product", "family"], set_=vals))
            for r in regions:
                x, y, w, h = r.bbox
                conn.execute(dialect_insert(conn, DefectRegion).values(
                    result_id=int(r.result_id), product=r.product, region=int(r.region), family=int(r.family),
                    area_px=int(r.area_px), x=x, y=y, w=w, h=h, cx=float(r.centroid[0]), cy=float(r.centroid[1]),
                    captured_at=float(r.captured_at), embedding=np.asarray(r.embedding, np.float16).tobytes())
                    .on_conflict_do_nothing(index_elements=["result_id", "region"]))

    def name_family(self, product: str, family: int, name: str | None) -> bool:
        """The operator names (or un-names, ``None``) a family; ``False`` when it does not exist."""
        clean = None if name is None or not name.strip() else name.strip()[:128]
        with service_errors(self.url), self.db_engine.connect().execution_options(**WRITE) as conn, conn.begin():
            res = conn.execute(update(DefectFamily).where(DefectFamily.product == product, DefectFamily.family == family)
                               .values(name=clean))
            return bool(res.rowcount)

    def pareto(self, product: str | None = None, start: float | None = None, end: float | None = None) -> list[dict]:
        """Families by region count in the time range, most frequent first, with their names."""
        r, f = DefectRegion, DefectFamily
        q = (select(r.product, r.family, func.count().label("regions"), func.count(func.distinct(r.result_id))
                    .label("frames"), func.avg(r.area_px).label("mean_area_px"), f.name)
             .outerjoin(f, (f.product == r.product) & (f.family == r.family))
             .group_by(r.product, r.family, f.name))
        if product is not None:
            q = q.where(r.product == product)
        if start is not None:
            q = q.where(r.captured_at >= float(start))
        if end is not None:
            q = q.where(r.captured_at < float(end))
        with service_errors(self.url), self.db_engine.connect() as conn:
            rows = [dict(x._mapping) for x in conn.execute(q).all()]
        return sorted(rows, key=lambda d: (-d["regions"], d["product"], d["family"]))

    def trend(self, product: str, family: int, bucket_s: float, origin: float = 0.0,
              start: float | None = None, end: float | None = None) -> list[dict]:
        """Frames with at least one region of this family per time bucket, ``[{start, frames}]`` oldest
        first; buckets are aligned to ``origin`` like :func:`storage.queries.trend`, so the two line up
        as numerator and denominator of the family's rate (its control chart)."""
        if not (float(bucket_s) > 0):
            raise ValueError(f"bucket_s must be > 0, got {bucket_s!r}")
        r = DefectRegion
        q = select(r.captured_at, r.result_id).where(r.product == product, r.family == int(family))
        if start is not None:
            q = q.where(r.captured_at >= float(start))
        if end is not None:
            q = q.where(r.captured_at < float(end))
        buckets: dict[float, set[int]] = {}
        with service_errors(self.url), self.db_engine.connect() as conn:
            for t, rid in conn.execute(q).all():
                b = float(np.floor((float(t) - origin) / bucket_s)) * float(bucket_s) + float(origin)
                buckets.setdefault(b, set()).add(int(rid))
        return [{"start": b, "frames": len(ids)} for b, ids in sorted(buckets.items())]

    def members(self, product: str, family: int, limit: int = 500, with_frames: int = 0) -> list[dict]:
        """A family's regions, newest first (bbox, centroid, result id); the newest ``with_frames`` carry the
        kept frame bytes for example crops."""
        r = DefectRegion
        q = (select(r.result_id, r.region, r.x, r.y, r.w, r.h, r.cx, r.cy, r.area_px, r.captured_at,
                    InspectionResult.width, InspectionResult.height)
             .join(InspectionResult, InspectionResult.id == r.result_id)
             .where(r.product == product, r.family == int(family))
             .order_by(r.captured_at.desc(), r.id.desc()).limit(int(limit)))
        with service_errors(self.url), self.db_engine.connect() as conn:
            out = [dict(x._mapping) for x in conn.execute(q).all()]
            for m in out[:with_frames]:
                m["frame"] = conn.execute(select(FrameImage.data).where(FrameImage.result_id == m["result_id"])
                                          ).scalar_one_or_none()
        return out
