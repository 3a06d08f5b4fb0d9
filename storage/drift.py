"""Drift alarms, camera image references and re-baseline frames: the only SQL the drift feature issues.

* ``open_alarm`` is an insert-or-nothing against the unique partial index ``uq_drift_open_camera``
  (one open alarm per product and camera), so consumers racing on the same camera open exactly one
  alarm on PostgreSQL as on SQLite; the loser gets ``created=False`` and the winner's id.
* Frames seen while an alarm is open go to ``drift_frames`` (never ``training_samples``): they are
  training data only after an operator re-baselines.
* Results stored on a camera while its alarm is open carry ``drifted = true`` (the consumer sets it at
  store time from its cached view of the open alarms; :meth:`DriftStore.mark_drifted` flags the frames
  between the onset and the moment a consumer learnt of the alarm): their verdict was given by a model
  that no longer matches the camera, and they never become training data. A re-baseline stops the
  flagging for new frames; a dismissal (the operator: "false alarm") also clears the alarm's flags.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import RowMapping, delete, func, select, update
from sqlalchemy.engine import Connection

from storage.db import WRITE, service_errors
from storage.models import (
    Camera,
    DriftAlarm,
    DriftFrame,
    DriftReference,
    InspectionResult,
    Product,
    TrainingSample,
)
from storage.store import SharedDbStore, TrainingSampleRow, dialect_insert, insert_new

ALARM_STATUSES = ("open", "resolved", "dismissed")
DRIFT_KINDS = ("score", "brightness", "sharpness", "position")


@dataclass(frozen=True)
class KeptFrame:
    """A frame to keep while an alarm is open (encoded bytes as they came off the bus)."""

    frame_id: int
    captured_at: float
    encoding: str
    data: bytes


class DriftStore(SharedDbStore):
    """Reads and writes the drift tables; shares the result store's SQLAlchemy engine."""

    # --- alarms ---------------------------------------------------------------------------
    def open_alarm(self, product: str, camera: str, *, kinds: list[str], onset_at: float, onset_frame_id: int,
                   model_version: str, evidence: dict, at: float | None = None) -> tuple[int, bool]:
        """Open the camera's alarm unless one is open already; returns ``(alarm id, created)``."""
        bad = [k for k in kinds if k not in DRIFT_KINDS]
        if not kinds or bad:
            raise ValueError(f"kinds must be a non-empty subset of {DRIFT_KINDS}, not {kinds!r}")
        now = time.time() if at is None else float(at)
        with service_errors(self.url), self.db_engine.connect().execution_options(**WRITE) as conn, conn.begin():
            stmt = (dialect_insert(conn, DriftAlarm)
                    .values(product=product, camera=camera, status="open", kinds=",".join(kinds)[:128],
                            opened_at=now, onset_at=float(onset_at), onset_frame_id=int(onset_frame_id),
                            model_version=str(model_version)[:64], evidence=evidence)
                    .on_conflict_do_nothing(index_elements=["product", "camera"],
                                            index_where=DriftAlarm.status == "open")
                    .returning(DriftAlarm.id))
            got = conn.execute(stmt).first()
            if got is not None:
                return int(got[0]), True
            existing = conn.execute(select(DriftAlarm.id).where(DriftAlarm.product == product,
                                                                DriftAlarm.camera == camera,
                                                                DriftAlarm.status == "open")).scalar_one()
            return int(existing), False

    def alarms(self, product: str | None = None, status: str | None = None, limit: int = 200) -> list[dict]:
        """Alarms newest first (evidence included)."""
        if status is not None and status not in ALARM_STATUSES:
            raise ValueError(f"status must be one of {ALARM_STATUSES}, not {status!r}")
        q = select(*DriftAlarm.__table__.columns)
        if product is not None:
            q = q.where(DriftAlarm.product == product)
        if status is not None:
            q = q.where(DriftAlarm.status == status)
        q = q.order_by(DriftAlarm.opened_at.desc(), DriftAlarm.id.desc()).limit(int(limit))
        with service_errors(self.url), self.db_engine.connect() as conn:
            return [_alarm_dict(r._mapping) for r in conn.execute(q).all()]

    def open_alarms(self, product: str | None = None) -> list[dict]:
        return self.alarms(product, "open")

    def alarm(self, alarm_id: int) -> dict | None:
        q = select(*DriftAlarm.__table__.columns).where(DriftAlarm.id == int(alarm_id))
        with service_errors(self.url), self.db_engine.connect() as conn:
            row = conn.execute(q).first()
        return None if row is None else _alarm_dict(row._mapping)

    def request_rebaseline(self, product: str, since: float | None, by: str) -> int:
        """An operator confirmed the new normal: mark the product's open alarms (``since`` defaults to
        each alarm's onset); the scheduler or ``lineinspect models rebaseline`` then retrains. Returns
        the number of alarms marked."""
        with service_errors(self.url), self.db_engine.connect().execution_options(**WRITE) as conn, conn.begin():
            values: dict[str, Any] = {"rebaseline_by": by[:128]}
            values["rebaseline_since"] = DriftAlarm.onset_at if since is None else float(since)
            res = conn.execute(update(DriftAlarm).where(DriftAlarm.product == product, DriftAlarm.status == "open")
                               .values(**values))
            return int(res.rowcount or 0)

    def clear_rebaseline(self, product: str) -> None:
        """Withdraw the operator's request (its candidate was refused; the alarm stays open)."""
        with service_errors(self.url), self.db_engine.connect().execution_options(**WRITE) as conn, conn.begin():
            conn.execute(update(DriftAlarm).where(DriftAlarm.product == product, DriftAlarm.status == "open")
                         .values(rebaseline_since=None, rebaseline_by=None))

    def resolve(self, product: str, resolution: str, camera: str | None = None, at: float | None = None,
                by: str | None = None) -> int:
        """Close the product's (or one camera's) open alarms; the cameras' references are dropped so
        the next frames become the new reference. Returns the number of alarms closed."""
        now = time.time() if at is None else float(at)
        with service_errors(self.url), self.db_engine.connect().execution_options(**WRITE) as conn, conn.begin():
            where = [DriftAlarm.product == product, DriftAlarm.status == "open"]
            if camera is not None:
                where.append(DriftAlarm.camera == camera)
            cams = list(conn.execute(select(DriftAlarm.camera).where(*where)).scalars())
            res = conn.execute(update(DriftAlarm).where(*where)
                               .values(status="resolved", resolved_at=now, resolution=resolution[:4000],
                                       closed_by=None if by is None else by[:128]))
            if cams:
                conn.execute(delete(DriftReference).where(DriftReference.camera.in_(cams)))
            return int(res.rowcount or 0)

    def dismiss(self, alarm_id: int, by: str, reason: str = "", at: float | None = None) -> int:
        """An operator's "this was not drift": close the open alarm ``alarm_id`` without re-baselining
        (``dismissed``, with who and when), clear the ``drifted`` flag of the camera's results since
        its onset (their verdicts stand) and drop the camera's reference (the consumers rebuild it
        from the next frames, so an unrepresentative reference does not alarm again). Retraining
        resumes when the product has no other open alarm. Returns the number of results un-flagged;
        ``KeyError`` for an unknown id, ``ValueError`` for an alarm that is not open or no name."""
        who = (by or "").strip()
        if not who:
            raise ValueError("a dismissal needs the operator's name (by=...)")
        now = time.time() if at is None else float(at)
        with service_errors(self.url), self.db_engine.connect().execution_options(**WRITE) as conn, conn.begin():
            row = conn.execute(select(DriftAlarm.status, DriftAlarm.product, DriftAlarm.camera, DriftAlarm.onset_at)
                               .where(DriftAlarm.id == int(alarm_id))).first()
            if row is None:
                raise KeyError(f"no drift alarm with id {alarm_id}")
            status, product, camera, onset = row
            if status != "open":
                raise ValueError(f"drift alarm #{alarm_id} is {status}, not open: nothing to dismiss")
            text = f"dismissed by {who[:128]}" + (f": {reason.strip()}" if reason.strip() else "")
            conn.execute(update(DriftAlarm).where(DriftAlarm.id == int(alarm_id))
                         .values(status="dismissed", resolved_at=now, closed_by=who[:128], resolution=text[:4000]))
            conn.execute(delete(DriftReference).where(DriftReference.camera == camera))
            return _set_drifted(conn, product, camera, float(onset), now, False)

    def mark_drifted(self, product: str, camera: str, since: float, until: float | None = None) -> int:
        """Flag the camera's results of ``product`` captured from ``since`` (to ``until``) as drifted: the
        frames between an alarm's onset and the moment a consumer learnt of it, stored unflagged. One
        UPDATE over the (product, captured_at) index; idempotent. Returns the rows it changed."""
        with service_errors(self.url), self.db_engine.connect().execution_options(**WRITE) as conn, conn.begin():
            return _set_drifted(conn, product, camera, float(since), until, True)

    # --- references -----------------------------------------------------------------------
    def save_reference(self, product: str, camera: str, stats: dict, image_png: bytes) -> None:
        now = time.time()
        with service_errors(self.url), self.db_engine.connect().execution_options(**WRITE) as conn, conn.begin():
            values = {"product": product, "created_at": now, "stats": stats, "image_png": bytes(image_png)}
            conn.execute(dialect_insert(conn, DriftReference).values(camera=camera, **values)
                         .on_conflict_do_update(index_elements=["camera"], set_=values))

    def reference(self, camera: str) -> dict | None:
        q = select(*DriftReference.__table__.columns).where(DriftReference.camera == camera)
        with service_errors(self.url), self.db_engine.connect() as conn:
            row = conn.execute(q).first()
        return None if row is None else dict(row._mapping)

    # --- frames kept while an alarm is open -----------------------------------------------------
    def keep_frames(self, alarm_id: int, product: str, camera: str, frames: list[KeptFrame], cap: int) -> int:
        """Keep frames for a later re-baseline (deduplicated by sha256, at most ``cap`` per alarm);
        returns how many were added."""
        return self.keep_frames_many([(alarm_id, product, camera, frames)], cap).get(int(alarm_id), 0)

    def keep_frames_many(self, items: list[tuple[int, str, str, list[KeptFrame]]], cap: int) -> dict[int, int]:
        """:meth:`keep_frames` for several open alarms (one per camera) at once: ``items`` are
        ``(alarm_id, product, camera, frames)`` with distinct alarm ids; returns ``{alarm_id: frames added}``.

        WHY one transaction and one multi-row INSERT: the consumer keeps every frame of a drifting camera,
        and a frame per statement (plus a transaction, a pool checkout and its ping per camera) cost more
        CPU than all of the batch's other writes at 5 MP (benchmarks/RESULTS.md, camera section). Same
        result as one call per alarm: each alarm's first ``cap - already kept`` frames are tried in order,
        and ``ON CONFLICT DO NOTHING`` on (product, sha256) keeps the first of equal frames, within the
        statement as across statements."""
        items = [it for it in items if it[3]]
        if not items:
            return {}
        alarm_ids = [int(a) for a, _p, _c, _f in items]
        if len(set(alarm_ids)) != len(alarm_ids):
            raise ValueError("keep_frames_many: one entry per alarm")
        f = DriftFrame
        with service_errors(self.url), self.db_engine.connect().execution_options(**WRITE) as conn, conn.begin():
            have = dict(conn.execute(select(f.alarm_id, func.count()).where(f.alarm_id.in_(alarm_ids))
                                     .group_by(f.alarm_id)).all())
            values: list[dict[str, Any]] = []
            for alarm_id, product, camera, frames in items:
                room = max(0, int(cap) - int(have.get(int(alarm_id), 0)))
                values.extend({"alarm_id": int(alarm_id), "product": product, "camera": camera,
                               "frame_id": int(k.frame_id), "captured_at": float(k.captured_at),
                               "sha256": hashlib.sha256(k.data).hexdigest(), "encoding": k.encoding[:8],
                               "data": bytes(k.data)} for k in frames[:room])
            added = {a: 0 for a in alarm_ids}
            if values:
                for (a,) in insert_new(conn, f, ["product", "sha256"], values, f.alarm_id):
                    added[int(a)] += 1
            return added

    def frames_since(self, product: str, since: float, limit: int | None = None) -> list[TrainingSampleRow]:
        """Kept drift frames of ``product`` captured at or after ``since``, newest first, as training rows."""
        f = DriftFrame
        q = (select(f.sha256, f.data, f.captured_at).where(f.product == product, f.captured_at >= float(since))
             .order_by(f.captured_at.desc(), f.id.desc()))
        if limit is not None:
            q = q.limit(int(limit))
        with service_errors(self.url), self.db_engine.connect() as conn:
            return [TrainingSampleRow(sha, bytes(data), "drift", ts) for sha, data, ts in conn.execute(q).all()]

    def count_frames(self, alarm_id: int) -> int:
        with service_errors(self.url), self.db_engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(DriftFrame)
                                    .where(DriftFrame.alarm_id == int(alarm_id))).scalar_one())

    # --- drifted verdicts -------------------------------------------------------------------------
    def drifted_count(self, alarm_id: int) -> int:
        """Results flagged drifted on the alarm's camera between its onset and its closing (or now)."""
        a = self.alarm(alarm_id)
        if a is None:
            return 0
        t = InspectionResult
        q = (select(func.count()).select_from(t).join(Camera, Camera.id == t.camera_id)
             .where(Camera.name == a["camera"], t.captured_at >= a["onset_at"], t.drifted.is_(True)))
        if a["resolved_at"] is not None:
            q = q.where(t.captured_at <= a["resolved_at"])
        with service_errors(self.url), self.db_engine.connect() as conn:
            return int(conn.execute(q).scalar_one())


def _set_drifted(conn: Connection, product: str, camera: str, since: float, until: float | None, value: bool) -> int:
    t = InspectionResult
    pid = select(Product.id).where(Product.name == product).scalar_subquery()
    cid = select(Camera.id).where(Camera.name == camera).scalar_subquery()
    where = [t.product_id == pid, t.camera_id == cid, t.captured_at >= since, t.drifted.is_(not value)]
    if until is not None:
        where.append(t.captured_at <= float(until))
    if value:  # frames kept as clearly normal before the alarm was known are no longer training data
        s = TrainingSample
        conn.execute(delete(s).where(s.source == "clear_normal", s.result_id.in_(select(t.id).where(*where))))
    return int(conn.execute(update(t).where(*where).values(drifted=value)).rowcount or 0)


def _alarm_dict(m: RowMapping) -> dict:
    d = dict(m)
    d["kinds"] = [k for k in str(d.get("kinds") or "").split(",") if k]
    return d

