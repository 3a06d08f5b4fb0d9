"""Read-only aggregate queries for the dashboard.

Every function takes a SQLAlchemy ``Connection`` and returns plain Python values (dataclasses or
lists of dicts), so the dashboard never touches ORM objects and the queries stay testable. All
aggregation happens in the database (``COUNT``/``SUM``/``GROUP BY`` on an integer bucket computed
from the epoch-second float columns), so a page costs one indexed scan of the chosen time range
however many rows the table holds. The SQL is plain SQLAlchemy Core and runs unchanged on
PostgreSQL and SQLite; the one dialect difference (integer ``floor``) is compiled per dialect.

A frame counts as a *defect* when its verdict is ``"defect"`` and an operator has not marked it a
false alarm; false alarms are reported separately.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import (
    BigInteger,
    Connection,
    Engine,
    and_,
    case,
    false,
    func,
    inspect,
    literal_column,
    select,
    true,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.functions import FunctionElement

from storage import models as m

R = m.InspectionResult.__table__
P = m.Product.__table__
L = m.Line.__table__
C = m.Camera.__table__
M = m.Mask.__table__
F = m.FrameImage.__table__
S = m.Specimen.__table__
MV = m.ModelVersion.__table__
CS = m.ConsumerStat.__table__

GroupBy = Literal["product", "line", "camera"]


# --- integer floor, portable -----------------------------------------------------------------
class floor_int(FunctionElement):  # noqa: N801 (SQL function name, used like func.floor)
    """``floor(x)`` as a BIGINT. PostgreSQL has ``floor``; SQLite may be built without math
    functions, and its ``CAST(x AS INTEGER)`` truncates, so it is corrected for negatives."""

    type = BigInteger()
    name = "floor_int"
    inherit_cache = True


@compiles(floor_int)
def _floor_default(element: floor_int, compiler: Any, **kw: Any) -> str:
    return f"CAST(FLOOR({compiler.process(element.clauses, **kw)}) AS BIGINT)"


@compiles(floor_int, "sqlite")
def _floor_sqlite(element: floor_int, compiler: Any, **kw: Any) -> str:
    x = compiler.process(element.clauses, **kw)
    return f"(CAST({x} AS INTEGER) - ({x} < CAST({x} AS INTEGER)))"


def missing_tables(engine: Engine) -> list[str]:
    """The schema's tables the database at ``engine`` lacks (all of them when it was never migrated): a
    reader checks this once instead of failing on its first query."""
    present = set(inspect(engine).get_table_names())
    return sorted(t for t in m.Base.metadata.tables if t not in present)


def _number(x: float, what: str) -> ColumnElement:
    """A float inlined as SQL text: the same bucket expression must appear identically in the
    SELECT and GROUP BY on PostgreSQL, which distinct bind parameters would break."""
    x = float(x)
    if not math.isfinite(x):
        raise ValueError(f"{what} must be a finite number, got {x!r}")
    return literal_column(repr(x))


# --- filters ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Filters:
    """Which inspection results a page looks at. ``None``/empty means no restriction.

    ``start`` is inclusive and ``end`` exclusive (epoch seconds, on ``captured_at``).
    """

    start: float | None = None
    end: float | None = None
    product_ids: tuple[int, ...] = ()
    line_ids: tuple[int, ...] = ()
    camera_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.start is not None and self.end is not None and self.end < self.start:
            raise ValueError(f"time range ends before it starts ({self.start} .. {self.end})")


def _window_where(at: ColumnElement, product_id: ColumnElement, f: Filters) -> list[ColumnElement]:
    """The time range ``[start, end)`` on ``at`` and the product filter, shared by every table."""
    cond: list[ColumnElement] = []
    if f.start is not None:
        cond.append(at >= f.start)
    if f.end is not None:
        cond.append(at < f.end)
    if f.product_ids:
        cond.append(product_id.in_(f.product_ids))
    return cond


def _result_where(f: Filters) -> list[ColumnElement]:
    cond = _window_where(R.c.captured_at, R.c.product_id, f)
    if f.line_ids:
        cond.append(R.c.line_id.in_(f.line_ids))
    if f.camera_ids:
        cond.append(R.c.camera_id.in_(f.camera_ids))
    return cond


def _is_defect() -> ColumnElement:
    return case((and_(R.c.verdict == "defect", R.c.false_alarm == false()), 1), else_=0)


def _is_false_alarm() -> ColumnElement:
    return case((R.c.false_alarm == true(), 1), else_=0)


# --- entities --------------------------------------------------------------------------------
def products(conn: Connection) -> list[dict[str, Any]]:
    """[{id, name, expected_views}] ordered by name."""
    rows = conn.execute(select(P.c.id, P.c.name, P.c.expected_views).order_by(P.c.name))
    return [dict(r) for r in rows.mappings()]


def lines(conn: Connection) -> list[dict[str, Any]]:
    """[{id, name}] ordered by name."""
    return [dict(r) for r in conn.execute(select(L.c.id, L.c.name).order_by(L.c.name)).mappings()]


def cameras(conn: Connection) -> list[dict[str, Any]]:
    """[{id, name, line_id}] ordered by name."""
    rows = conn.execute(select(C.c.id, C.c.name, C.c.line_id).order_by(C.c.name))
    return [dict(r) for r in rows.mappings()]


def time_bounds(conn: Connection) -> tuple[float | None, float | None]:
    """(first, last) ``captured_at`` in the table. Two statements, because SQLite answers a lone
    MIN or MAX from the end of the time index but scans the table for both in one query."""
    lo = conn.execute(select(func.min(R.c.captured_at))).scalar()
    hi = conn.execute(select(func.max(R.c.captured_at))).scalar()
    return (None if lo is None else float(lo), None if hi is None else float(hi))


# --- overview --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Summary:
    inspected: int
    defects: int
    false_alarms: int
    first_at: float | None
    last_at: float | None
    mean_latency_ms: float | None
    drifted: int = 0        # verdicts given while the camera had an open drift alarm

    @property
    def defect_rate(self) -> float:
        return self.defects / self.inspected if self.inspected else 0.0


def summary(conn: Connection, f: Filters) -> Summary:
    """Totals for the filtered results in one pass."""
    q = select(
        func.count(),
        func.coalesce(func.sum(_is_defect()), 0),
        func.coalesce(func.sum(_is_false_alarm()), 0),
        func.min(R.c.captured_at),
        func.max(R.c.captured_at),
        func.avg(R.c.latency_ms),
        func.coalesce(func.sum(case((R.c.drifted == true(), 1), else_=0)), 0),
    ).where(*_result_where(f))
    n, d, fa, lo, hi, lat, dr = conn.execute(q).one()
    return Summary(
        inspected=int(n), defects=int(d), false_alarms=int(fa),
        first_at=None if lo is None else float(lo), last_at=None if hi is None else float(hi),
        mean_latency_ms=None if lat is None else float(lat), drifted=int(dr),
    )


_GROUP_COLUMNS = {"product": (R.c.product_id, P), "line": (R.c.line_id, L), "camera": (R.c.camera_id, C)}


def breakdown(conn: Connection, f: Filters, by: GroupBy) -> list[dict[str, Any]]:
    """Per product / line / camera: [{id, name, inspected, defects, false_alarms, mean_score,
    first_at, last_at}], ordered by name. Aggregates first, then joins the small name table."""
    if by not in _GROUP_COLUMNS:
        raise ValueError(f"breakdown by must be one of {sorted(_GROUP_COLUMNS)}, got {by!r}")
    col, names = _GROUP_COLUMNS[by]
    agg = (
        select(
            col.label("gid"),
            func.count().label("inspected"),
            func.sum(_is_defect()).label("defects"),
            func.sum(_is_false_alarm()).label("false_alarms"),
            func.avg(R.c.score).label("mean_score"),
            func.min(R.c.captured_at).label("first_at"),
            func.max(R.c.captured_at).label("last_at"),
        )
        .where(*_result_where(f))
        .group_by(col)
        .subquery()
    )
    q = select(
        agg.c.gid, names.c.name, agg.c.inspected, agg.c.defects, agg.c.false_alarms,
        agg.c.mean_score, agg.c.first_at, agg.c.last_at,
    ).join_from(agg, names, names.c.id == agg.c.gid).order_by(names.c.name)
    out = []
    for r in conn.execute(q).mappings():
        out.append({
            "id": int(r["gid"]), "name": r["name"], "inspected": int(r["inspected"]),
            "defects": int(r["defects"] or 0), "false_alarms": int(r["false_alarms"] or 0),
            "mean_score": float(r["mean_score"]), "first_at": float(r["first_at"]), "last_at": float(r["last_at"]),
        })
    return out


def trend(conn: Connection, f: Filters, bucket_s: float, origin: float = 0.0) -> list[dict[str, Any]]:
    """Inspected / defects per time bucket: [{start, inspected, defects, false_alarms}] oldest first.

    A bucket is ``floor((captured_at - origin) / bucket_s)``; ``origin`` aligns e.g. 8-hour
    shifts to 06:00. Empty buckets are absent (the caller decides whether to fill them).
    """
    if not bucket_s > 0:
        raise ValueError(f"bucket_s must be > 0, got {bucket_s!r}")
    o, w = _number(origin, "origin"), _number(bucket_s, "bucket_s")
    inner = (
        select(
            floor_int((R.c.captured_at - o) / w).label("b"),
            _is_defect().label("d"),
            _is_false_alarm().label("fa"),
        )
        .where(*_result_where(f))
        .subquery()
    )
    q = (
        select(inner.c.b, func.count(), func.sum(inner.c.d), func.sum(inner.c.fa))
        .group_by(inner.c.b)
        .order_by(inner.c.b)
    )
    return [
        {"start": int(b) * float(bucket_s) + float(origin), "inspected": int(n), "defects": int(d or 0),
         "false_alarms": int(fa or 0)}
        for b, n, d, fa in conn.execute(q)
    ]


# --- score distributions ---------------------------------------------------------------------
def score_histogram(conn: Connection, f: Filters, bin_width: float) -> list[dict[str, Any]]:
    """Per product and score bin ``floor(score / bin_width)``:
    [{product_id, bin_start, bin_end, count, defects, false_alarms}], ordered."""
    if not bin_width > 0:
        raise ValueError(f"bin_width must be > 0, got {bin_width!r}")
    w = _number(bin_width, "bin_width")
    inner = (
        select(
            R.c.product_id.label("pid"),
            floor_int(R.c.score / w).label("b"),
            _is_defect().label("d"),
            _is_false_alarm().label("fa"),
        )
        .where(*_result_where(f))
        .subquery()
    )
    q = (
        select(inner.c.pid, inner.c.b, func.count(), func.sum(inner.c.d), func.sum(inner.c.fa))
        .group_by(inner.c.pid, inner.c.b)
        .order_by(inner.c.pid, inner.c.b)
    )
    return [
        {"product_id": int(pid), "bin_start": int(b) * float(bin_width), "bin_end": (int(b) + 1) * float(bin_width),
         "count": int(n), "defects": int(d or 0), "false_alarms": int(fa or 0)}
        for pid, b, n, d, fa in conn.execute(q)
    ]


def current_thresholds(conn: Connection) -> dict[int, dict[str, Any]]:
    """{product_id: {threshold, model_version, source}}: the active registry model's threshold,
    else the threshold stamped on the product's newest result (e.g. the zero-shot model)."""
    out: dict[int, dict[str, Any]] = {}
    active = select(MV.c.product_id, MV.c.version, MV.c.threshold, MV.c.promoted_at).where(MV.c.status == "active")
    for pid, ver, thr, _ in conn.execute(active.order_by(MV.c.product_id, MV.c.promoted_at)):
        out[int(pid)] = {"threshold": float(thr), "model_version": ver, "source": "registry"}
    for pid in conn.execute(select(P.c.id)).scalars():
        if int(pid) in out:
            continue
        newest = conn.execute(
            select(R.c.threshold, R.c.model_version)
            .where(R.c.product_id == pid)
            .order_by(R.c.captured_at.desc())
            .limit(1)
        ).first()
        if newest is not None:
            out[int(pid)] = {"threshold": float(newest[0]), "model_version": newest[1], "source": "latest result"}
    return out


# --- anomalies -------------------------------------------------------------------------------
def latest_anomalies(
    conn: Connection, f: Filters, limit: int = 24, include_false_alarms: bool = False
) -> list[dict[str, Any]]:
    """Newest defect-verdict frames: [{id, product, line, camera, frame_id, captured_at, score,
    threshold, model_version, engine, defect_area_px, false_alarm, drifted, has_frame, has_heat}]."""
    if limit <= 0:
        raise ValueError(f"limit must be > 0, got {limit!r}")
    cond = [R.c.verdict == "defect", *_result_where(f)]
    if not include_false_alarms:
        cond.append(R.c.false_alarm == false())
    newest = (
        select(R.c.id).where(*cond).order_by(R.c.captured_at.desc(), R.c.id.desc()).limit(limit).subquery()
    )
    q = (
        select(
            R.c.id, P.c.name.label("product"), L.c.name.label("line"), C.c.name.label("camera"), R.c.frame_id,
            R.c.captured_at, R.c.score, R.c.threshold, R.c.model_version, R.c.engine, R.c.defect_area_px,
            R.c.false_alarm, R.c.drifted, R.c.width, R.c.height,
            (F.c.result_id.is_not(None)).label("has_frame"),
            (M.c.heat_png.is_not(None)).label("has_heat"),
        )
        .join_from(newest, R, R.c.id == newest.c.id)
        .join(P, P.c.id == R.c.product_id)
        .join(L, L.c.id == R.c.line_id)
        .join(C, C.c.id == R.c.camera_id)
        .outerjoin(F, F.c.result_id == R.c.id)
        .outerjoin(M, M.c.result_id == R.c.id)
        .order_by(R.c.captured_at.desc(), R.c.id.desc())
    )
    out = []
    for r in conn.execute(q).mappings():
        d = dict(r)
        d["false_alarm"] = bool(d["false_alarm"])
        d["drifted"] = bool(d["drifted"])
        d["has_frame"] = bool(d["has_frame"])
        d["has_heat"] = bool(d["has_heat"])
        out.append(d)
    return out


def anomaly_images(conn: Connection, result_id: int) -> dict[str, Any]:
    """The stored images of one result: {frame, encoding, mask_png, heat_png} (each may be None)."""
    row = conn.execute(
        select(F.c.data, F.c.encoding, M.c.png, M.c.heat_png)
        .select_from(R)
        .outerjoin(F, F.c.result_id == R.c.id)
        .outerjoin(M, M.c.result_id == R.c.id)
        .where(R.c.id == result_id)
    ).first()
    if row is None:
        raise LookupError(f"no inspection result with id {result_id}")
    return {"frame": row[0], "encoding": row[1], "mask_png": row[2], "heat_png": row[3]}


def recent_defect_masks(conn: Connection, product_id: int, f: Filters, limit: int = 500) -> list[bytes]:
    """PNG masks of the product's newest ``limit`` real defects (false alarms excluded): a bounded
    sample for the accumulated defect-location heatmap, read newest-first off the
    (product_id, captured_at) index."""
    if limit <= 0:
        raise ValueError(f"limit must be > 0, got {limit!r}")
    q = (
        select(M.c.png)
        .join_from(R, M, M.c.result_id == R.c.id)
        .where(R.c.product_id == product_id, R.c.verdict == "defect", R.c.false_alarm == false(), *_result_where(f))
        .order_by(R.c.captured_at.desc())
        .limit(limit)
    )
    return [bytes(b) for b in conn.execute(q).scalars()]


# --- specimens -------------------------------------------------------------------------------
def _specimen_where(f: Filters) -> list[ColumnElement]:
    return _window_where(S.c.decided_at, S.c.product_id, f)


def specimen_summary(conn: Connection, f: Filters) -> list[dict[str, Any]]:
    """Per product: [{product_id, product, specimens, defects, complete, incomplete}] (time range on
    ``decided_at``; line/camera filters do not apply to specimens)."""
    agg = (
        select(
            S.c.product_id.label("pid"),
            func.count().label("n"),
            func.sum(case((S.c.verdict == "defect", 1), else_=0)).label("d"),
            func.sum(case((S.c.complete == true(), 1), else_=0)).label("c"),
        )
        .where(*_specimen_where(f))
        .group_by(S.c.product_id)
        .subquery()
    )
    q = select(agg.c.pid, P.c.name, agg.c.n, agg.c.d, agg.c.c).join_from(agg, P, P.c.id == agg.c.pid).order_by(P.c.name)
    return [
        {"product_id": int(pid), "product": name, "specimens": int(n), "defects": int(d or 0),
         "complete": int(c or 0), "incomplete": int(n) - int(c or 0)}
        for pid, name, n, d, c in conn.execute(q)
    ]


def recent_specimens(conn: Connection, f: Filters, limit: int = 50) -> list[dict[str, Any]]:
    """Newest decided specimens with their fused verdicts."""
    q = (
        select(
            S.c.product_id, P.c.name.label("product"), S.c.specimen_id, S.c.verdict, S.c.score, S.c.threshold,
            S.c.fusion, S.c.complete, S.c.expected_views, S.c.received_views, S.c.first_seen_at, S.c.decided_at,
        )
        .join_from(S, P, P.c.id == S.c.product_id)
        .where(*_specimen_where(f))
        .order_by(S.c.decided_at.desc(), S.c.id.desc())
        .limit(limit)
    )
    return [{**dict(r), "complete": bool(r["complete"])} for r in conn.execute(q).mappings()]


def specimen_frames(conn: Connection, product_id: int, specimen_id: str) -> list[dict[str, Any]]:
    """The frame verdicts behind one specimen (one row per view), via the (product_id, specimen_id) index."""
    q = (
        select(
            R.c.id, R.c.view, C.c.name.label("camera"), R.c.frame_id, R.c.captured_at, R.c.score,
            R.c.threshold, R.c.verdict, R.c.false_alarm, R.c.drifted,
        )
        .join_from(R, C, C.c.id == R.c.camera_id)
        .where(R.c.product_id == product_id, R.c.specimen_id == specimen_id)
        .order_by(R.c.view, R.c.captured_at)
    )
    return [{**dict(r), "false_alarm": bool(r["false_alarm"]), "drifted": bool(r["drifted"])}
            for r in conn.execute(q).mappings()]


# --- system health ---------------------------------------------------------------------------
def consumer_health(conn: Connection, since: float | None = None, until: float | None = None) -> list[dict[str, Any]]:
    """Per consumer over the window: throughput (frames / seconds), frame-weighted mean batch,
    plus the newest snapshot's latency p50/p99, lag, DLQ total and engine state."""
    cond = []
    if since is not None:
        cond.append(CS.c.at >= since)
    if until is not None:
        cond.append(CS.c.at < until)
    agg = (
        select(
            CS.c.consumer.label("consumer"),
            func.sum(CS.c.frames).label("frames"),
            func.sum(CS.c.seconds).label("seconds"),
            func.sum(CS.c.mean_batch * CS.c.frames).label("batch_x_frames"),
            func.max(CS.c.at).label("last_at"),
        )
        .where(*cond)
        .group_by(CS.c.consumer)
        .subquery()
    )
    q = (
        select(
            agg.c.consumer, agg.c.frames, agg.c.seconds, agg.c.batch_x_frames, agg.c.last_at,
            CS.c.p50_latency_ms, CS.c.p99_latency_ms, CS.c.lag, CS.c.dlq_total, CS.c.engine, CS.c.engine_ok,
        )
        .join_from(agg, CS, and_(CS.c.consumer == agg.c.consumer, CS.c.at == agg.c.last_at))
        .order_by(agg.c.consumer)
    )
    out: dict[str, dict[str, Any]] = {}
    for r in conn.execute(q).mappings():
        frames, seconds = int(r["frames"] or 0), float(r["seconds"] or 0.0)
        out.setdefault(r["consumer"], {  # two snapshots with the same newest ``at``: keep one
            "consumer": r["consumer"], "frames": frames, "seconds": seconds,
            "fps": frames / seconds if seconds > 0 else 0.0,
            "mean_batch": float(r["batch_x_frames"] or 0.0) / frames if frames else 0.0,
            "last_at": float(r["last_at"]), "p50_latency_ms": float(r["p50_latency_ms"]),
            "p99_latency_ms": float(r["p99_latency_ms"]), "lag": int(r["lag"]), "dlq_total": int(r["dlq_total"]),
            "engine": r["engine"], "engine_ok": bool(r["engine_ok"]),
        })
    return list(out.values())


def consumer_series(
    conn: Connection, bucket_s: float, since: float | None = None, until: float | None = None
) -> list[dict[str, Any]]:
    """All consumers together per time bucket: [{start, fps, mean_batch, p50_latency_ms (mean),
    p99_latency_ms (max), lag (max)}] oldest first."""
    if not bucket_s > 0:
        raise ValueError(f"bucket_s must be > 0, got {bucket_s!r}")
    cond = []
    if since is not None:
        cond.append(CS.c.at >= since)
    if until is not None:
        cond.append(CS.c.at < until)
    w = _number(bucket_s, "bucket_s")
    inner = select(
        floor_int(CS.c.at / w).label("b"), CS.c.frames, CS.c.mean_batch, CS.c.p50_latency_ms,
        CS.c.p99_latency_ms, CS.c.lag,
    ).where(*cond).subquery()
    q = (
        select(
            inner.c.b, func.sum(inner.c.frames),
            func.sum(inner.c.mean_batch * inner.c.frames), func.avg(inner.c.p50_latency_ms),
            func.max(inner.c.p99_latency_ms), func.max(inner.c.lag),
        )
        .group_by(inner.c.b)
        .order_by(inner.c.b)
    )
    out = []
    for b, frames, bxf, p50, p99, lag in conn.execute(q):
        frames = int(frames or 0)
        out.append({
            "start": int(b) * float(bucket_s),
            # consumers run in parallel: the bucket's aggregate rate is frames over its wall time
            "fps": frames / float(bucket_s),
            "mean_batch": float(bxf or 0.0) / frames if frames else 0.0,
            "p50_latency_ms": float(p50), "p99_latency_ms": float(p99), "lag": int(lag),
        })
    return out


def model_versions(conn: Connection, product_ids: tuple[int, ...] = ()) -> list[dict[str, Any]]:
    """Registry rows: [{product, version, status, threshold, backbone, metrics, created_at,
    promoted_at, parent_version, reason}], products by name, newest version first."""
    q = (
        select(
            P.c.name.label("product"), MV.c.product_id, MV.c.version, MV.c.status, MV.c.threshold, MV.c.backbone,
            MV.c.metrics, MV.c.created_at, MV.c.promoted_at, MV.c.parent_version, MV.c.reason,
        )
        .join_from(MV, P, P.c.id == MV.c.product_id)
        .order_by(P.c.name, MV.c.created_at.desc())
    )
    if product_ids:
        q = q.where(MV.c.product_id.in_(product_ids))
    return [{**dict(r), "metrics": dict(r["metrics"] or {})} for r in conn.execute(q).mappings()]
