"""The result store: every scored frame, its mask and kept frames, in one database.

Consumers deliver at least once, so every write is idempotent on ``(camera, frame_id)``
(``INSERT .. ON CONFLICT DO NOTHING`` in the dialect's own syntax) and a redelivered batch returns
the ids of the rows already there. Product / line / camera rows are created on first sight with
the same insert-or-nothing-then-select pattern, which is safe when several consumers meet a new
camera at once. Only plain values (ints, dicts, tuples) leave this module, never ORM objects.
"""

from __future__ import annotations

import hashlib
import logging
import math
import numbers
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Self

from sqlalchemy import ColumnElement, Engine, Table, and_, delete, exists, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from lineinspect.logs import kv
from lineinspect.names import check_frame_names, check_name, check_text
from lineinspect.settings import redact_url
from storage.db import WRITE, make_engine, service_errors, upgrade
from storage.models import (
    Base,
    Camera,
    ConsumerStat,
    FrameImage,
    InspectionResult,
    Line,
    Mask,
    Product,
    Specimen,
    TrainingSample,
    table,
)
from storage.records import ResultRow, SpecimenDecision, ViewScore

log = logging.getLogger(__name__)

VERDICTS = ("ok", "defect")
_NAME_KINDS = {"products": "product", "lines": "line", "cameras": "camera"}
SAMPLE_SOURCES = ("clear_normal", "false_alarm", "seed")


def _insert_specimen(conn: Connection, product_id: int, d: SpecimenDecision) -> bool:
    """The specimens INSERT with the one conflict rule (first verdict stands); True if it inserted."""
    if d.verdict not in VERDICTS:
        raise ValueError(f"verdict must be one of {VERDICTS}, not {d.verdict!r}")
    check_name("specimen", d.specimen_id)
    stmt = (dialect_insert(conn, Specimen)
            .values(product_id=product_id, specimen_id=d.specimen_id, expected_views=int(d.expected_views),
                    received_views=int(d.received_views), score=float(d.score), threshold=float(d.threshold),
                    verdict=d.verdict, fusion=d.fusion, complete=bool(d.complete),
                    first_seen_at=float(d.first_seen_at), decided_at=float(d.decided_at),
                    result_ids=[int(i) for i in d.result_ids])
            .on_conflict_do_nothing(index_elements=["product_id", "specimen_id"])
            .returning(Specimen.id))
    return conn.execute(stmt).first() is not None


def dialect_insert(conn: Connection, table: Table | type[Base]) -> postgresql.Insert | sqlite.Insert:
    """The dialect's INSERT construct (PostgreSQL or SQLite), which has ``on_conflict_*``."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    if conn.dialect.name == "sqlite":
        return sqlite.insert(table)
    raise RuntimeError(f"unsupported database dialect {conn.dialect.name!r}")


def insert_new(conn: Connection, table: Table | type[Base], conflict: list[str], rows: list[dict[str, Any]],
               *returning: Any) -> list[Any]:
    """INSERT ``rows``, skipping any that conflict on the unique columns ``conflict``; returns the
    ``returning`` columns of the rows inserted.

    WHY the executemany form with RETURNING: SQLAlchemy then sends one multi-row INSERT (per page of rows,
    "insertmanyvalues") from a compiled statement it caches, where ``.values(list)`` was compiled anew for
    every batch, most of the store's CPU per batch at 5 MP (benchmarks/RESULTS.md, camera section); without
    RETURNING psycopg would send one INSERT per row."""
    stmt = dialect_insert(conn, table).on_conflict_do_nothing(index_elements=conflict).returning(*returning)
    return list(conn.execute(stmt, rows).all())


def ensure_named(conn: Connection, model: type[Product | Line | Camera], names: Iterable[str], now: float,
                 **extra: Any) -> dict[str, int]:
    """Ids of ``model`` rows by unique ``name``, inserting the missing ones (race-safe).

    ``extra`` maps column -> {name: value} for columns the new rows need (a camera's line).
    """
    wanted = sorted(set(names))
    if not wanted:
        return {}
    kind = _NAME_KINDS.get(model.__tablename__)
    if kind is not None:
        for n in wanted:
            check_name(kind, n)  # every write path (results, samples, specimens, models) obeys the one name rule
    found: dict[str, int] = dict(conn.execute(select(model.name, model.id).where(model.name.in_(wanted))).all())
    missing = [n for n in wanted if n not in found]
    if missing:
        values = [{"name": n, "created_at": now, **{c: m[n] for c, m in extra.items()}} for n in missing]
        conn.execute(dialect_insert(conn, model).values(values).on_conflict_do_nothing(index_elements=["name"]))
        found.update(conn.execute(select(model.name, model.id).where(model.name.in_(missing))).all())
    return found


@dataclass(frozen=True)
class TrainingSampleRow:
    """One kept frame (iterates as ``(sha256, data, source, created_at)``)."""

    sha256: str
    data: bytes
    source: str
    created_at: float

    def __iter__(self) -> Iterator[str | bytes | float]:  # tuple-style unpacking
        return iter((self.sha256, self.data, self.source, self.created_at))


class ResultStore:
    """Writes and reads inspection results; one instance is shared by a process's threads."""

    def __init__(self, db_engine: Engine, url: str, normal_cap: int = 500) -> None:
        if normal_cap <= 0:
            raise ValueError("normal_cap must be > 0")
        self.db_engine = db_engine
        self.url = url
        self.normal_cap = normal_cap
        self._ids: dict[str, dict[str, int]] = {"product": {}, "line": {}, "camera": {}}
        self.redelivery_conflicts = 0  # redelivered keys carrying a different image (see _conflict)
        self._lock = threading.Lock()

    @classmethod
    def open(cls, db_url: str, migrate: bool = True, normal_cap: int = 500) -> ResultStore:
        """Connect (and by default migrate to head); unreachable PostgreSQL -> ServiceUnavailable."""
        if migrate:
            upgrade(db_url)
        with service_errors(db_url):
            db_engine = make_engine(db_url)
        return cls(db_engine, db_url, normal_cap=normal_cap)

    def close(self) -> None:
        self.db_engine.dispose()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ResultStore({redact_url(self.url)!r})"

    # --- writes ---------------------------------------------------------------------------
    def save_results(self, rows: list[ResultRow], normal_cap: int | None = None) -> list[int | None]:
        """Store a batch in one transaction; returns each row's result id (the old id for a duplicate).

        Durable when it returns. Masks and frames are written for newly inserted defect rows;
        ``keep_as_normal`` rows with frame bytes become training samples (deduplicated by sha256
        per product, the newest ``normal_cap`` clear-normal samples kept) unless they are ``drifted``:
        a shifted camera's "normal" frames are training data only through a re-baseline.
        """
        if not rows:
            return []
        for r in rows:
            _validate(r)
        cap = self.normal_cap if normal_cap is None else normal_cap
        if cap <= 0:
            raise ValueError("normal_cap must be > 0")
        now = time.time()
        with service_errors(self.url), self.db_engine.connect().execution_options(**WRITE) as conn:
            with conn.begin():
                ids = self._resolve_ids(conn, rows, now)
                result_ids, new_keys = self._insert_results(conn, rows, ids, now)
                self._insert_payloads(conn, rows, ids, result_ids, new_keys, now, cap)
        self._remember(ids)
        return [result_ids.get((ids["camera"][r.camera], int(r.frame_id))) for r in rows]

    def _resolve_ids(self, conn: Connection, rows: list[ResultRow], now: float) -> dict[str, dict[str, int]]:
        with self._lock:
            known = {k: dict(v) for k, v in self._ids.items()}
        ids = {k: dict(v) for k, v in known.items()}
        products = {r.product for r in rows} - ids["product"].keys()
        lines = {r.line for r in rows} - ids["line"].keys()
        ids["product"].update(ensure_named(conn, Product, products, now))
        ids["line"].update(ensure_named(conn, Line, lines, now))
        cam_line = {r.camera: ids["line"][r.line] for r in rows if r.camera not in ids["camera"]}
        ids["camera"].update(ensure_named(conn, Camera, cam_line, now, line_id=cam_line))
        return ids

    def _remember(self, ids: dict[str, dict[str, int]]) -> None:
        """Cache ids only after the commit, so a rolled-back insert never leaves a dangling id."""
        with self._lock:
            for kind, m in ids.items():
                self._ids[kind].update(m)

    def _insert_results(self, conn: Connection, rows: list[ResultRow], ids: dict, now: float
                        ) -> tuple[dict[tuple[int, int], int], set[tuple[int, int]]]:
        """Insert new result rows; ``(ids of every row by (camera id, frame id), the keys inserted now)``."""
        values: dict[tuple[int, int], dict] = {}
        for r in rows:
            key = (ids["camera"][r.camera], int(r.frame_id))
            if key in values:  # the same frame twice in one batch: the first one wins
                first = values[key]
                if (first["captured_at"], first["width"], first["height"]) != (float(r.captured_at), int(r.width),
                                                                               int(r.height)):
                    self._conflict(key[0], key[1], (first["captured_at"], first["width"], first["height"]),
                                   (float(r.captured_at), int(r.width), int(r.height)))
                continue
            values[key] = {
                "camera_id": key[0], "frame_id": key[1], "product_id": ids["product"][r.product],
                "line_id": ids["line"][r.line], "specimen_id": r.specimen_id, "view": r.view,
                "captured_at": float(r.captured_at), "inferred_at": float(r.inferred_at), "stored_at": now,
                "score": float(r.score), "threshold": float(r.threshold), "verdict": r.verdict,
                "model_version": r.model_version, "engine": r.engine, "infer_ms": float(r.infer_ms),
                "latency_ms": (now - float(r.captured_at)) * 1000.0, "batch_size": int(r.batch_size),
                "width": int(r.width), "height": int(r.height), "defect_area_px": int(r.defect_area_px),
                "false_alarm": False, "drifted": bool(r.drifted),
            }
        t = InspectionResult
        result_ids = {(c, f): i for i, c, f in insert_new(conn, t, ["camera_id", "frame_id"], list(values.values()),
                                                          t.id, t.camera_id, t.frame_id)}
        new_keys = set(result_ids)
        missing = [k for k in values if k not in result_ids]
        if missing:
            cams = sorted({c for c, _ in missing})
            frames = sorted({f for _, f in missing})
            q = (select(t.id, t.camera_id, t.frame_id, t.captured_at, t.width, t.height)
                 .where(t.camera_id.in_(cams), t.frame_id.in_(frames)))
            wanted = set(missing)
            for i, c, f, cap, w, h in conn.execute(q).all():
                if (c, f) not in wanted:
                    continue
                result_ids[(c, f)] = i
                v = values[(c, f)]
                if (float(cap), int(w), int(h)) != (v["captured_at"], v["width"], v["height"]):
                    self._conflict(c, f, (float(cap), int(w), int(h)), (v["captured_at"], v["width"], v["height"]))
        return result_ids, new_keys

    def _conflict(self, camera_id: int, frame_id: int, kept: tuple, refused: tuple) -> None:
        """A redelivered (camera, frame id) that is a DIFFERENT image (other capture time or size): the
        first row wins (idempotency), but a camera reusing ids loses frames, so say so and count it."""
        with self._lock:
            self.redelivery_conflicts += 1
        log.warning("frame id reused for a different image; the first stored row is kept",
                    extra=kv(camera_id=camera_id, frame_id=frame_id, kept_captured_at=kept[0], kept_size=kept[1:],
                             new_captured_at=refused[0], new_size=refused[1:]))

    def _insert_payloads(self, conn: Connection, rows: list[ResultRow], ids: dict, result_ids: dict,
                         new_keys: set, now: float, cap: int) -> None:
        masks, frames, samples = [], [], []
        done: set[tuple[int, int]] = set()
        for r in rows:
            key = (ids["camera"][r.camera], int(r.frame_id))
            if key not in new_keys or key in done:
                continue
            done.add(key)
            rid = result_ids[key]
            if r.verdict == "defect" and r.mask_png is not None:
                masks.append({"result_id": rid, "png": bytes(r.mask_png),
                              "heat_png": bytes(r.heat_png) if r.heat_png is not None else None,
                              "width": int(r.width), "height": int(r.height)})
            if r.verdict == "defect" and r.frame_bytes is not None:
                frames.append({"result_id": rid, "encoding": r.frame_encoding, "data": bytes(r.frame_bytes)})
            if r.keep_as_normal and r.frame_bytes is not None and r.verdict == "ok" and not r.drifted:
                samples.append({"product_id": ids["product"][r.product], "result_id": rid,
                                "sha256": hashlib.sha256(r.frame_bytes).hexdigest(), "source": "clear_normal",
                                "encoding": r.frame_encoding, "data": bytes(r.frame_bytes), "created_at": now})
        if masks:
            insert_new(conn, Mask, ["result_id"], masks, Mask.result_id)
        if frames:
            insert_new(conn, FrameImage, ["result_id"], frames, FrameImage.result_id)
        if samples:
            insert_new(conn, TrainingSample, ["product_id", "sha256"], samples, TrainingSample.id)
            for pid in sorted({s["product_id"] for s in samples}):
                _cap_samples(conn, pid, "clear_normal", cap)

    def mark_false_alarm(self, result_id: int) -> bool:
        """Flag a result as a false alarm and keep its stored frame as a normal training sample.

        Returns whether a training sample was added (``False`` when no frame was stored, the
        same image is already a sample, or the result is drifted: a drifted camera's frames become
        training data only through a re-baseline). Unknown ids raise ``KeyError``.
        """
        now = time.time()
        t = InspectionResult
        with service_errors(self.url), self.db_engine.connect().execution_options(**WRITE) as conn:
            with conn.begin():
                got = conn.execute(select(t.product_id, t.drifted).where(t.id == result_id)).first()
                if got is None:
                    raise KeyError(f"no inspection result with id {result_id}")
                product_id, drifted = got
                conn.execute(update(t).where(t.id == result_id).values(false_alarm=True))
                if drifted:
                    return False
                frame = conn.execute(select(FrameImage.encoding, FrameImage.data)
                                     .where(FrameImage.result_id == result_id)).first()
                if frame is None:
                    return False
                enc, data = frame
                stmt = (dialect_insert(conn, TrainingSample)
                        .values(product_id=product_id, result_id=result_id, sha256=hashlib.sha256(data).hexdigest(),
                                source="false_alarm", encoding=enc, data=data, created_at=now)
                        .on_conflict_do_nothing(index_elements=["product_id", "sha256"])
                        .returning(TrainingSample.id))
                return conn.execute(stmt).first() is not None

    def add_training_sample(self, product: str, data: bytes, source: str = "seed", encoding: str = "png") -> bool:
        """Keep an image as normal training data (e.g. seed images); ``False`` when already kept."""
        if source not in SAMPLE_SOURCES:
            raise ValueError(f"source must be one of {SAMPLE_SOURCES}, not {source!r}")
        now = time.time()
        with service_errors(self.url), self.db_engine.connect().execution_options(**WRITE) as conn:
            with conn.begin():
                pid = ensure_named(conn, Product, [product], now)[product]
                stmt = (dialect_insert(conn, TrainingSample)
                        .values(product_id=pid, result_id=None, sha256=hashlib.sha256(data).hexdigest(),
                                source=source, encoding=encoding, data=bytes(data), created_at=now)
                        .on_conflict_do_nothing(index_elements=["product_id", "sha256"])
                        .returning(TrainingSample.id))
                return conn.execute(stmt).first() is not None

    def record_consumer_stat(self, consumer: str, frames: int, seconds: float, mean_batch: float,
                             p50_latency_ms: float, p99_latency_ms: float, lag: int, dlq_total: int,
                             engine: str, engine_ok: bool, at: float | None = None) -> None:
        """Append one consumer health snapshot (the dashboard's throughput / lag view)."""
        with service_errors(self.url), self.db_engine.begin() as conn:
            conn.execute(table(ConsumerStat).insert().values(
                consumer=consumer, at=time.time() if at is None else float(at), frames=int(frames),
                seconds=float(seconds), mean_batch=float(mean_batch), p50_latency_ms=float(p50_latency_ms),
                p99_latency_ms=float(p99_latency_ms), lag=int(lag), dlq_total=int(dlq_total),
                engine=engine, engine_ok=bool(engine_ok)))

    # --- specimens: a part's verdict is decided once -------------------------------------
    # The one conflict rule: INSERT .. ON CONFLICT (product, specimen) DO NOTHING. Whoever inserts
    # first (a consumer, the sweeper, a test) decides; every later attempt sees no row come back.
    def save_specimen(self, d: SpecimenDecision) -> bool:
        """Store ``d`` unless the specimen is already decided; True when this call decided it."""
        now = time.time()
        with service_errors(self.url), self.db_engine.connect().execution_options(**WRITE) as conn:
            with conn.begin():
                pid = ensure_named(conn, Product, [d.product], now)[d.product]
                return _insert_specimen(conn, pid, d)

    def decide_specimen(self, product: str, specimen_id: str,
                        decide: Callable[[list[ViewScore], int | None], SpecimenDecision | None]
                        ) -> SpecimenDecision | None:
        """In one write transaction (BEGIN IMMEDIATE on SQLite): read the specimen's stored views and
        the product's expected view count, let ``decide`` fuse them (``None``: not yet), and store the
        verdict unless another writer decided first. Returns the decision this call stored."""
        with service_errors(self.url), self.db_engine.connect().execution_options(**WRITE) as conn, conn.begin():
            pid = conn.execute(select(Product.id).where(Product.name == product)).scalar_one_or_none()
            if pid is None:
                return None
            decided = select(Specimen.id).where(Specimen.product_id == pid, Specimen.specimen_id == specimen_id)
            if conn.execute(decided).first() is not None:
                return None
            t = InspectionResult
            q = (select(t.id, t.view, Camera.name, t.score, t.threshold, t.stored_at)
                 .join(Camera, Camera.id == t.camera_id)
                 .where(t.product_id == pid, t.specimen_id == specimen_id))
            views = [ViewScore(int(i), v or cam, float(s), float(th), float(st))
                     for i, v, cam, s, th, st in conn.execute(q).all()]
            if not views:
                return None
            expected = conn.execute(select(Product.expected_views).where(Product.id == pid)).scalar_one_or_none()
            d = decide(views, int(expected) if expected else None)
            if d is None or not _insert_specimen(conn, pid, d):
                return None
            return d

    def due_specimens(self, now: float, timeout_s: float, lookback_s: float) -> list[tuple[str, str]]:
        """(product, specimen) of every undecided specimen captured within ``lookback_s`` whose first
        view was stored at least ``timeout_s`` ago."""
        t = InspectionResult
        decided = exists().where(and_(Specimen.product_id == t.product_id, Specimen.specimen_id == t.specimen_id))
        q = (select(Product.name, t.specimen_id)
             .join(Product, Product.id == t.product_id)
             .where(t.specimen_id.is_not(None), t.captured_at >= now - lookback_s, ~decided)
             .group_by(Product.name, t.product_id, t.specimen_id)
             .having(func.min(t.stored_at) <= now - timeout_s))
        with service_errors(self.url), self.db_engine.connect() as conn:
            return [(str(p), str(s)) for p, s in conn.execute(q).all()]

    def set_expected_views(self, product: str, expected_views: int | None) -> None:
        """How many views make a complete specimen of ``product`` (``None``: not fused)."""
        now = time.time()
        with service_errors(self.url), self.db_engine.connect().execution_options(**WRITE) as conn:
            with conn.begin():
                pid = ensure_named(conn, Product, [product], now)[product]
                conn.execute(update(Product).where(Product.id == pid).values(expected_views=expected_views))

    # --- reads ----------------------------------------------------------------------------
    def count_results(self, product: str | None = None) -> int:
        q = select(func.count()).select_from(InspectionResult)
        if product is not None:
            q = q.join(Product, Product.id == InspectionResult.product_id).where(Product.name == product)
        with service_errors(self.url), self.db_engine.connect() as conn:
            return int(conn.execute(q).scalar_one())

    def get_result(self, camera: str, frame_id: int) -> dict | None:
        """One result with names, mask/heatmap PNG bytes and the kept frame (``None`` if absent)."""
        return self._one_result((Camera.name == camera) & (InspectionResult.frame_id == int(frame_id)))

    def result_ids(self, keys: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """``{(camera, frame_id): result id}`` of the stored ones among ``keys``, in one query."""
        if not keys:
            return {}
        t = InspectionResult
        wanted = {(str(c), int(f)) for c, f in keys}
        q = (select(Camera.name, t.frame_id, t.id).join(Camera, Camera.id == t.camera_id)
             .where(Camera.name.in_(sorted({c for c, _ in wanted})), t.frame_id.in_(sorted({f for _, f in wanted}))))
        with service_errors(self.url), self.db_engine.connect() as conn:
            return {(c, int(f)): int(i) for c, f, i in conn.execute(q).all() if (c, int(f)) in wanted}

    def get_result_by_id(self, result_id: int) -> dict | None:
        return self._one_result(InspectionResult.id == int(result_id))

    def _one_result(self, where: ColumnElement[bool]) -> dict | None:
        t = InspectionResult
        q = (select(*t.__table__.columns, Product.name.label("product"), Line.name.label("line"),
                    Camera.name.label("camera"), Mask.png, Mask.heat_png, FrameImage.data.label("frame_bytes"),
                    FrameImage.encoding.label("frame_encoding"))
             .join(Product, Product.id == t.product_id).join(Line, Line.id == t.line_id)
             .join(Camera, Camera.id == t.camera_id)
             .outerjoin(Mask, Mask.result_id == t.id).outerjoin(FrameImage, FrameImage.result_id == t.id)
             .where(where))
        with service_errors(self.url), self.db_engine.connect() as conn:
            row = conn.execute(q).first()
        if row is None:
            return None
        out = dict(row._mapping)
        for k in ("camera_id", "line_id", "product_id"):
            out.pop(k)
        out["mask_png"] = out.pop("png")
        return out

    def results_for_camera(self, camera: str, min_frame_id: int = 0, limit: int = 100_000) -> list[dict]:
        """A camera's results (no image bytes) with ``frame_id >= min_frame_id``, in frame order."""
        t = InspectionResult
        q = (select(t.id, t.frame_id, t.captured_at, t.stored_at, t.score, t.threshold, t.verdict,
                    t.model_version, t.engine, t.latency_ms, t.defect_area_px, t.false_alarm, t.drifted,
                    Product.name.label("product"))
             .join(Camera, Camera.id == t.camera_id).join(Product, Product.id == t.product_id)
             .where(Camera.name == camera, t.frame_id >= int(min_frame_id)).order_by(t.frame_id).limit(int(limit)))
        with service_errors(self.url), self.db_engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q).all()]

    def training_samples(self, product: str, limit: int | None = None) -> list[TrainingSampleRow]:
        """Kept normal images of ``product``, newest first: ``(sha256, data, source, created_at)``."""
        s = TrainingSample
        q = (select(s.sha256, s.data, s.source, s.created_at).join(Product, Product.id == s.product_id)
             .where(Product.name == product).order_by(s.created_at.desc(), s.id.desc()))
        if limit is not None:
            q = q.limit(int(limit))
        with service_errors(self.url), self.db_engine.connect() as conn:
            return [TrainingSampleRow(sha, bytes(data), src, ts) for sha, data, src, ts in conn.execute(q).all()]

    def flagged_frames(self, product: str, limit: int = 200) -> list[bytes]:
        """Encoded frames the live system flagged ``defect``, no operator called a false alarm and no
        drift alarm covered (newest first): the retrainer's anomaly examples."""
        t = InspectionResult
        q = (select(FrameImage.data).join(t, t.id == FrameImage.result_id).join(Product, Product.id == t.product_id)
             .where(Product.name == product, t.verdict == "defect", t.false_alarm.is_(False), t.drifted.is_(False))
             .order_by(t.captured_at.desc()).limit(int(limit)))
        with service_errors(self.url), self.db_engine.connect() as conn:
            return [bytes(d) for d in conn.execute(q).scalars()]

    def count_training_samples(self, product: str, since: float | None = None) -> int:
        """Samples of ``product`` (created at or after ``since`` when given): the retrain trigger."""
        s = TrainingSample
        q = select(func.count()).select_from(s).join(Product, Product.id == s.product_id).where(Product.name == product)
        if since is not None:
            q = q.where(s.created_at >= float(since))
        with service_errors(self.url), self.db_engine.connect() as conn:
            return int(conn.execute(q).scalar_one())

    def products(self) -> list[str]:
        with service_errors(self.url), self.db_engine.connect() as conn:
            return list(conn.execute(select(Product.name).order_by(Product.name)).scalars())

    def get_specimen(self, product: str, specimen_id: str) -> dict | None:
        q = (select(*Specimen.__table__.columns).join(Product, Product.id == Specimen.product_id)
             .where(Product.name == product, Specimen.specimen_id == specimen_id))
        with service_errors(self.url), self.db_engine.connect() as conn:
            row = conn.execute(q).first()
        if row is None:
            return None
        out = dict(row._mapping)
        out["product"] = product
        return out

    def consumer_stats(self, consumer: str | None = None, limit: int = 100) -> list[dict]:
        """Newest snapshots first."""
        q = select(*ConsumerStat.__table__.columns)
        if consumer is not None:
            q = q.where(ConsumerStat.consumer == consumer)
        q = q.order_by(ConsumerStat.at.desc(), ConsumerStat.id.desc()).limit(int(limit))
        with service_errors(self.url), self.db_engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q).all()]


def _cap_samples(conn: Connection, product_id: int, source: str, cap: int) -> int:
    """Delete all but the newest ``cap`` samples of one product and source; returns how many went."""
    s = TrainingSample
    old = (select(s.id).where(s.product_id == product_id, s.source == source)
           .order_by(s.created_at.desc(), s.id.desc()).offset(cap))
    doomed = list(conn.execute(old).scalars())
    if doomed:
        conn.execute(delete(s).where(s.id.in_(doomed)))
    return len(doomed)


_INT32 = 2**31


def _validate(r: ResultRow) -> None:
    """Refuse, with the field named, any value some backend could not store (the same rule on
    SQLite and PostgreSQL: names by :mod:`lineinspect.names`, text by column width without NUL or
    control characters, integers by column range, floats finite). The consumer bisects a batch
    that raises here and dead-letters the one row at fault."""
    if not isinstance(r, ResultRow):
        raise TypeError(f"save_results takes ResultRow objects, not {type(r).__name__}")
    check_frame_names(r.product, r.line, r.camera, r.specimen_id, r.view)
    check_text("ResultRow.model_version", r.model_version, 64)
    check_text("ResultRow.engine", r.engine, 32)
    if r.verdict not in VERDICTS:
        raise ValueError(f"ResultRow.verdict must be one of {VERDICTS}, not {str(r.verdict)[:40]!r}")
    if r.frame_encoding not in ("jpeg", "png"):
        raise ValueError(f"ResultRow.frame_encoding must be jpeg or png, not {str(r.frame_encoding)[:40]!r}")
    _int_in("frame_id", r.frame_id, 0, 2**63)
    for name in ("width", "height", "batch_size", "defect_area_px"):
        _int_in(name, getattr(r, name), 0, _INT32)
    for name in ("captured_at", "inferred_at", "score", "threshold", "infer_ms"):
        v = getattr(r, name)
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(float(v)):
            raise ValueError(f"ResultRow.{name} must be a finite number, not {str(v)[:40]!r}")
        if abs(float(v)) > 1e300:  # (now - captured_at) * 1000 must stay finite for latency_ms
            raise ValueError(f"ResultRow.{name} is out of range ({v!r})")
    for name in ("mask_png", "heat_png", "frame_bytes"):
        v = getattr(r, name)
        if v is not None and not isinstance(v, (bytes, bytearray, memoryview)):
            raise TypeError(f"ResultRow.{name} must be bytes or None, not {type(v).__name__}")


def _int_in(name: str, v: object, lo: int, hi: int) -> None:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or not lo <= int(v) < hi:
        raise ValueError(f"ResultRow.{name} must be an integer in [{lo}, {hi}), not {str(v)[:40]!r}")


class SharedDbStore:
    """Owner of a few tables of its own that shares a :class:`ResultStore`'s SQLAlchemy engine (one
    connection pool per process); the drift and defect-family stores are two."""

    def __init__(self, db_engine: Engine, url: str = "") -> None:
        self.db_engine = db_engine
        self.url = url

    @classmethod
    def of(cls, store: ResultStore) -> Self:
        """Over ``store``'s SQLAlchemy engine and URL."""
        return cls(store.db_engine, store.url)
