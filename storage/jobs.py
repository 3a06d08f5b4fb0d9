"""The ``job_runs`` table: one row per scheduled or manual job run (retrain), newest first.

Its SQL lives here, with the other tables' (only storage/ talks to the database); the scheduler in
:mod:`training.scheduler` decides when to run, this module records that it did.
"""

from __future__ import annotations

import time

from sqlalchemy import Engine, select, update

from storage.db import WRITE
from storage.models import JobRun, table

KIND = "retrain"
RUN_STATUSES = ("running", "ok", "failed", "skipped")


def start_run(engine: Engine, product: str, kind: str = KIND, detail: str | None = None,
              status: str = "running", at: float | None = None) -> int:
    """Insert a job_runs row; returns its id."""
    if status not in RUN_STATUSES:
        raise ValueError(f"status must be one of {RUN_STATUSES}, not {status!r}")
    now = time.time() if at is None else float(at)
    with engine.connect().execution_options(**WRITE) as conn, conn.begin():
        res = conn.execute(table(JobRun).insert().values(
            product=product, kind=kind, status=status, started_at=now,
            finished_at=None if status == "running" else now, detail=detail))
        key = res.inserted_primary_key
        assert key is not None  # an INSERT always has one
        return int(key[0])


def finish_run(engine: Engine, run_id: int, status: str, detail: str | None = None) -> None:
    if status not in RUN_STATUSES[1:]:
        raise ValueError(f"a run finishes as one of {RUN_STATUSES[1:]}, not {status!r}")
    with engine.connect().execution_options(**WRITE) as conn, conn.begin():
        conn.execute(update(JobRun).where(JobRun.id == run_id)
                     .values(status=status, finished_at=time.time(), detail=(detail or "")[:4000]))


def list_runs(engine: Engine, product: str | None = None, kind: str | None = KIND, limit: int = 50) -> list[dict]:
    """Newest first."""
    q = select(*table(JobRun).columns)
    if product is not None:
        q = q.where(JobRun.product == product)
    if kind is not None:
        q = q.where(JobRun.kind == kind)
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(q.order_by(JobRun.started_at.desc(), JobRun.id.desc())
                                                       .limit(int(limit))).all()]
