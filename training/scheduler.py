"""When to retrain each product, and running each job under its database lock with a ``job_runs`` record.

A product is due when its cron expression (UTC, e.g. ``0 2 * * *``) has fired since its last job,
or when at least ``min_new`` normal samples arrived after the newest version's data snapshot.
After a failed or skipped job the product rests ``backoff_s`` before a sample-count trigger may
fire again, so a broken product does not retrain in a loop. Every job takes the ``retrain:<product>``
lease (:mod:`storage.locks`), so a manual ``lineinspect retrain`` and any number of schedulers
never train the same product at once; a job that finds the lease taken is recorded as ``skipped``.
A failing job is recorded as ``failed`` with its error and logged; the scheduler carries on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from croniter import croniter
from sqlalchemy import Engine

from lineinspect.logs import kv
from storage.jobs import KIND, finish_run, list_runs, start_run
from storage.locks import DbLock, Heartbeat
from storage.registry import ModelRegistry
from storage.store import ResultStore
from training.retrain import NotEnoughSamples, RetrainOptions, RetrainPaused, new_samples_since, retrain

log = logging.getLogger("lineinspect.training.scheduler")



@dataclass(frozen=True)
class JobOutcome:
    product: str
    status: str            # ok | failed | skipped
    detail: str
    run_id: int


def run_job(engine: Engine, product: str, job: Callable[[Callable[[], bool]], str], kind: str = KIND,
            lock_ttl_s: float = 600.0) -> JobOutcome:
    """Run ``job(lock_lost) -> detail`` under the ``<kind>:<product>`` lease, recorded in ``job_runs``.

    Never raises for a job failure: the error is recorded (``failed``) and logged.
    :class:`NotEnoughSamples` is recorded as ``skipped``.
    """
    lock = DbLock(engine, f"{kind}:{product}", ttl_s=lock_ttl_s)
    if not lock.acquire():
        holder = lock.current_holder()
        detail = f"another job holds the lock ({holder[0] if holder else 'released meanwhile'})"
        rid = start_run(engine, product, kind, detail=detail, status="skipped")
        log.info("job skipped", extra=kv(product=product, kind=kind, reason=detail))
        return JobOutcome(product, "skipped", detail, rid)
    try:
        rid = start_run(engine, product, kind, detail=f"holder {lock.holder}")
        try:
            with Heartbeat(lock) as hb:
                detail = job(hb.lost.is_set)
            status = "ok"
        except (NotEnoughSamples, RetrainPaused) as exc:
            status, detail = "skipped", str(exc)
            log.info("job skipped", extra=kv(product=product, kind=kind, reason=detail))
        except Exception as exc:
            status, detail = "failed", f"{type(exc).__name__}: {exc}"
            log.exception("job failed", extra=kv(product=product, kind=kind))
        finish_run(engine, rid, status, detail)
        return JobOutcome(product, status, detail, rid)
    finally:
        lock.release()


# --- when ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Schedule:
    cron: str | None = None          # UTC cron expression, e.g. "0 2 * * *"
    min_new: int | None = None       # retrain after this many new normal samples
    backoff_s: float = 600.0         # rest after a failed / skipped job before a sample trigger fires

    def __post_init__(self) -> None:
        if self.cron is None and not self.min_new:
            raise ValueError("a schedule needs a cron expression, a min_new sample count, or both")
        if self.cron is not None and not croniter.is_valid(self.cron):
            raise ValueError(f"invalid cron expression {self.cron!r} (five fields, e.g. '0 2 * * *')")
        if self.min_new is not None and self.min_new < 0:
            raise ValueError("min_new must be >= 0")
        if self.backoff_s < 0:
            raise ValueError("backoff_s must be >= 0")


def cron_fired_since(expr: str, since: float | None, now: float) -> bool:
    """Whether ``expr`` had a fire time in ``(since, now]`` (always, when there was no previous job)."""
    last_fire = croniter(expr, now + 1e-3).get_prev(float)
    return since is None or last_fire > since


def due_reason(schedule: Schedule, now: float, last_run: dict | None, new_samples: int) -> str | None:
    """Why a product should retrain now, or ``None``. Pure: the caller looks the inputs up."""
    since = None if last_run is None else float(last_run["started_at"])
    if schedule.cron and cron_fired_since(schedule.cron, since, now):
        return f"cron {schedule.cron!r} fired"
    if schedule.min_new and new_samples >= schedule.min_new:
        if last_run is not None and last_run["status"] in ("failed", "skipped"):
            ended = float(last_run.get("finished_at") or last_run["started_at"])
            if now - ended < schedule.backoff_s:
                return None
        return f"{new_samples} new samples >= {schedule.min_new}"
    return None


# --- the loop -----------------------------------------------------------------------------------

class Scheduler:
    """Checks every product each tick and runs the due ones, one at a time, in this process."""

    def __init__(self, store: ResultStore, registry: ModelRegistry, schedule: Schedule,
                 options: RetrainOptions | None = None, products: list[str] | None = None,
                 lock_ttl_s: float = 600.0, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.registry = registry
        self.schedule = schedule
        self.options = options or RetrainOptions(progress=False)
        self.products = products
        self.lock_ttl_s = lock_ttl_s
        self.clock = clock

    def due(self) -> dict[str, str]:
        """{product: reason} for every product due now."""
        out: dict[str, str] = {}
        now = self.clock()
        versions = self.registry.list()
        for product in self.products or self.store.products():
            runs = list_runs(self.store.db_engine, product, KIND, limit=1)
            newest = max((v for v in versions if v.product == product), key=lambda v: v.created_at, default=None)
            new = new_samples_since(self.store, product, newest) if self.schedule.min_new else 0
            reason = due_reason(self.schedule, now, runs[0] if runs else None, new)
            if reason:
                out[product] = reason
        return out

    def tick(self) -> list[JobOutcome]:
        """Run the re-baselines operators asked for, then the due retrains (a product with an open drift
        alarm is refused by :func:`training.retrain.retrain` and recorded as skipped)."""
        from storage.drift import DriftStore
        from training.rebaseline import rebaseline_job, requested

        outcomes = []
        asked = {p: t for p, t in requested(DriftStore.of(self.store)).items()
                 if not self.products or p in self.products}
        for product, since in asked.items():
            log.info("re-baseline requested", extra=kv(product=product, since=since))
            outcomes.append(run_job(self.store.db_engine, product,
                                    rebaseline_job(self.store, self.registry, product, since, self.options),
                                    KIND, self.lock_ttl_s))
        for product, reason in self.due().items():
            if product in asked:
                continue
            log.info("retrain due", extra=kv(product=product, reason=reason))

            def job(lock_lost: Callable[[], bool], product: str = product, reason: str = reason) -> str:
                res = retrain(self.store, self.registry, product, self.options, lock_lost=lock_lost)
                return f"{reason}: {res.describe()}"

            outcomes.append(run_job(self.store.db_engine, product, job, KIND, self.lock_ttl_s))
        return outcomes

    def run(self, interval_s: float = 60.0, once: bool = False, stop: threading.Event | None = None) -> None:
        """Tick every ``interval_s`` until ``stop`` is set (or once). A tick that fails is logged only."""
        stop = stop or threading.Event()
        while True:
            try:
                self.tick()
            except Exception:
                log.exception("scheduler tick failed")
            if once or stop.wait(interval_s):
                return
