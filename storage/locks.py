"""A lease in the database: one job per name (e.g. ``retrain:<product>``) across processes and hosts.

Why the database: the scheduler and manual ``lineinspect retrain`` runs may live on different
machines whose only shared piece is the database, and it must work on PostgreSQL and SQLite alike.

Acquire is *insert-or-steal-if-expired*: an ``INSERT .. ON CONFLICT DO NOTHING`` of the lock row,
and when the row already exists, one ``UPDATE .. WHERE expires_at < now OR holder = me``. Both are
single statements, so two contenders never both win: PostgreSQL re-checks the ``WHERE`` on the
row after taking its row lock, and SQLite runs the transaction under ``BEGIN IMMEDIATE``. A holder
keeps the lease alive with :meth:`DbLock.heartbeat` (or :class:`Heartbeat` in a thread); a
crashed holder stops heart-beating and the lease expires after ``ttl_s`` for someone to steal.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable

from sqlalchemy import Engine, delete, select, update

from lineinspect.logs import kv
from storage.db import WRITE
from storage.models import JobLock
from storage.store import dialect_insert

log = logging.getLogger("lineinspect.storage.locks")


def default_holder() -> str:
    """``host:pid:random`` - unique per lock object, readable in the table."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class DbLock:
    """A named lease row in ``job_locks``; not re-entrant across objects (each has its own holder id)."""

    def __init__(self, db_engine: Engine, name: str, ttl_s: float = 600.0, holder: str | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        if not name or len(name) > 160:
            raise ValueError(f"lock names are 1..160 characters, not {name!r}")
        if ttl_s <= 0:
            raise ValueError("ttl_s must be > 0")
        self.db_engine = db_engine
        self.name = name
        self.ttl_s = float(ttl_s)
        self.holder = holder or default_holder()
        self._clock = clock
        self.held = False

    def acquire(self) -> bool:
        """Take the lease if it is free, expired or already ours; ``False`` when someone else holds it."""
        now = self._clock()
        values = {"holder": self.holder, "acquired_at": now, "expires_at": now + self.ttl_s}
        with self.db_engine.connect().execution_options(**WRITE) as conn, conn.begin():
            ins = (dialect_insert(conn, JobLock).values(name=self.name, **values)
                   .on_conflict_do_nothing(index_elements=["name"]))
            won = conn.execute(ins).rowcount == 1
            if not won:
                steal = (update(JobLock).where(JobLock.name == self.name)
                         .where((JobLock.expires_at < now) | (JobLock.holder == self.holder)).values(**values))
                won = conn.execute(steal).rowcount == 1
                if won:
                    log.info("lock taken over", extra=kv(lock=self.name, holder=self.holder))
        self.held = won
        return won

    def heartbeat(self) -> bool:
        """Extend the lease by ``ttl_s``; ``False`` (and ``held`` cleared) when it was lost meanwhile."""
        now = self._clock()
        with self.db_engine.connect().execution_options(**WRITE) as conn, conn.begin():
            n = conn.execute(update(JobLock).where(JobLock.name == self.name, JobLock.holder == self.holder)
                             .values(expires_at=now + self.ttl_s)).rowcount
        self.held = n == 1
        return self.held

    def release(self) -> None:
        """Drop the lease if still ours (a stolen lease is left to its new holder)."""
        with self.db_engine.connect().execution_options(**WRITE) as conn, conn.begin():
            conn.execute(delete(JobLock).where(JobLock.name == self.name, JobLock.holder == self.holder))
        self.held = False

    def current_holder(self) -> tuple[str, float] | None:
        """``(holder, expires_at)`` of the row as stored, or ``None`` when nobody holds it."""
        with self.db_engine.connect() as conn:
            row = conn.execute(select(JobLock.holder, JobLock.expires_at).where(JobLock.name == self.name)).first()
        return None if row is None else (row[0], float(row[1]))

    def __enter__(self) -> DbLock:
        if not self.acquire():
            raise LockHeld(self.name, self.current_holder())
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class LockHeld(RuntimeError):
    """Someone else holds a job lock right now."""

    def __init__(self, name: str, holder: tuple[str, float] | None) -> None:
        who = f" by {holder[0]} until {time.strftime('%H:%M:%S', time.localtime(holder[1]))}" if holder else ""
        super().__init__(f"job lock {name!r} is held{who}")
        self.name = name


class Heartbeat:
    """Renew a held :class:`DbLock` every ``ttl_s / 3`` in a daemon thread while a long job runs.

    ``lost`` is set when a renewal finds the lease gone (expired and stolen), so the job can
    refuse to publish results it no longer has the right to (e.g. skip promotion).
    """

    def __init__(self, lock: DbLock, every_s: float | None = None) -> None:
        self.lock = lock
        self.every_s = float(every_s) if every_s else max(0.05, lock.ttl_s / 3.0)
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{lock.name}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                if not self.lock.heartbeat():
                    self.lost.set()
                    log.warning("job lock lost", extra=kv(lock=self.lock.name, holder=self.lock.holder))
                    return
            except Exception as exc:  # noqa: BLE001 - a database blip: try again next beat
                log.warning("heartbeat failed", extra=kv(lock=self.lock.name, error=str(exc)))

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)
