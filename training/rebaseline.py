"""Re-baselining after a drift alarm: "the frames since T are the new normal".

The frames kept while the alarm was open (``drift_frames``) and the clearly-normal samples kept since
T become the candidate's training set; the usual retrain follows (held-back calibration and gate
slices taken from those same new-normal frames, gate against the active version, register,
promote). Only a promotion resolves the product's alarms (the consumers notice within seconds and
rebuild their camera references from the next frames); a rejected candidate leaves the alarm open,
so retraining stays paused and the verdicts stay marked drifted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC

from lineinspect.logs import kv
from storage.drift import DriftStore
from storage.registry import ModelRegistry
from storage.store import ResultStore, TrainingSampleRow
from training.retrain import (
    NotEnoughSamples,
    RetrainError,
    RetrainOptions,
    RetrainResult,
    retrain,
)

log = logging.getLogger("lineinspect.training.rebaseline")


def rebaseline_since(drift: DriftStore, product: str, since: float | None) -> float:
    """``since``, else the operator's confirmed time, else the onset of the product's earliest open alarm."""
    if since is not None:
        return float(since)
    alarms = drift.open_alarms(product)
    if not alarms:
        raise RetrainError(f"{product} has no open drift alarm; pass --since T to re-baseline anyway")
    return min(float(a["rebaseline_since"] if a["rebaseline_since"] is not None else a["onset_at"]) for a in alarms)


def new_normal_samples(store: ResultStore, drift: DriftStore, product: str, since: float,
                       limit: int | None = None) -> list[TrainingSampleRow]:
    """Drift frames and kept clearly-normal samples since ``since``, newest first, deduplicated (a frame
    kept both ways counts as a drift frame: that is what the snapshot's ``by_source`` should say)."""
    rows = drift.frames_since(product, since) + [r for r in store.training_samples(product) if r.created_at >= since]
    seen: set[str] = set()
    out = []
    for r in rows:
        if r.sha256 not in seen:
            seen.add(r.sha256)
            out.append(r)
    out.sort(key=lambda r: r.created_at, reverse=True)
    return out[:limit] if limit else out


def rebaseline(store: ResultStore, registry: ModelRegistry, product: str, since: float | None = None,
               options: RetrainOptions | None = None, lock_lost: Callable[[], bool] | None = None) -> RetrainResult:
    """Train on the frames since ``since``, gate, promote; a promotion resolves the product's alarms."""
    opts = options or RetrainOptions()
    drift = DriftStore.of(store)
    t = rebaseline_since(drift, product, since)
    samples = new_normal_samples(store, drift, product, t, opts.max_samples)
    need = max(4, opts.min_samples)
    if len(samples) < need:
        raise NotEnoughSamples(f"{product}: {len(samples)} frames since {_iso(t)}; at least {need} are needed "
                               f"for a re-baseline (let the line run longer)")
    log.info("re-baseline", extra=kv(product=product, since=_iso(t), samples=len(samples)))
    result = retrain(store, registry, product, opts, lock_lost=lock_lost, samples=samples)
    if result.promoted:
        n = drift.resolve(product, f"re-baselined: {result.version} promoted, trained on {len(samples)} frames "
                                   f"since {_iso(t)}", by="re-baseline")
        log.info("drift alarms resolved by re-baseline", extra=kv(product=product, version=result.version, alarms=n))
    else:
        drift.clear_rebaseline(product)  # the operator decides again (no retrain loop on a refused gate)
        log.warning("re-baseline candidate not promoted; the drift alarm stays open",
                    extra=kv(product=product, version=result.version, status=result.status))
    return result


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def parse_since(text: str) -> float:
    """Epoch seconds or an ISO 8601 time (UTC when no zone is given)."""
    from datetime import datetime

    try:
        return float(text)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--since {text!r} is neither epoch seconds nor an ISO time like 2026-12-04T13:00:00Z") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def rebaseline_job(store: ResultStore, registry: ModelRegistry, product: str, since: float | None,
                   options: RetrainOptions) -> Callable[[Callable[[], bool]], str]:
    """A :func:`training.scheduler.run_job` job that re-baselines ``product``."""
    def job(lock_lost: Callable[[], bool]) -> str:
        return "re-baseline: " + rebaseline(store, registry, product, since, options, lock_lost=lock_lost).describe()

    return job


def requested(drift: DriftStore) -> dict[str, float]:
    """{product: since} for open alarms an operator confirmed as the new normal (the scheduler runs them)."""
    out: dict[str, float] = {}
    for a in drift.open_alarms():
        if a["rebaseline_since"] is not None:
            out[a["product"]] = min(out.get(a["product"], float("inf")), float(a["rebaseline_since"]))
    return out


