"""Retention: delete inspection results older than the configured age, in batches.

Masks and frame images go with their results (``ON DELETE CASCADE``); training samples stay
(they are the retraining data; their ``result_id`` becomes NULL). Specimen decisions and consumer
health snapshots older than the cut-off go too. Batches keep each transaction short, so consumers
writing at the same time wait milliseconds, not minutes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from sqlalchemy import Engine, delete, func, select

from lineinspect.logs import kv
from storage.db import WRITE
from storage.models import ConsumerStat, FrameImage, InspectionResult, Mask, Specimen

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PruneReport:
    cutoff: float        # epoch s; rows captured / decided / taken before it are (or would be) deleted
    results: int
    masks: int
    frame_images: int
    specimens: int
    consumer_stats: int
    dry_run: bool


def prune(engine: Engine, older_than_days: float, *, dry_run: bool = False, batch_size: int = 5000,
          now: float | None = None) -> PruneReport:
    """Delete (or, with ``dry_run``, count) everything older than ``older_than_days``."""
    if older_than_days < 0:
        raise ValueError("older_than_days must be >= 0")
    if batch_size <= 0:
        raise ValueError("batch_size must be > 0")
    cutoff = (time.time() if now is None else now) - older_than_days * 86400.0
    r = InspectionResult
    old = r.captured_at < cutoff
    if dry_run:
        with engine.connect() as conn:
            old_ids = select(r.id).where(old)
            counts: list[int] = [conn.execute(select(func.count()).select_from(t).where(w)).scalar_one() for t, w in (
                (r, old), (Mask, Mask.result_id.in_(old_ids)), (FrameImage, FrameImage.result_id.in_(old_ids)),
                (Specimen, Specimen.decided_at < cutoff), (ConsumerStat, ConsumerStat.at < cutoff))]
        n_results, n_masks, n_frames, n_specimens, n_stats = counts
        return PruneReport(cutoff, n_results, n_masks, n_frames, n_specimens, n_stats, dry_run=True)
    results = masks = frames = 0
    while True:
        with engine.connect().execution_options(**WRITE) as conn, conn.begin():
            ids = list(conn.execute(select(r.id).where(old).order_by(r.id).limit(batch_size)).scalars())
            if not ids:
                break
            masks += conn.execute(select(func.count()).select_from(Mask).where(Mask.result_id.in_(ids))).scalar_one()
            frames += conn.execute(select(func.count()).select_from(FrameImage)
                                   .where(FrameImage.result_id.in_(ids))).scalar_one()
            results += conn.execute(delete(r).where(r.id.in_(ids))).rowcount
        log.info("pruned a batch", extra=kv(results=results))
    with engine.connect().execution_options(**WRITE) as conn, conn.begin():
        specimens = conn.execute(delete(Specimen).where(Specimen.decided_at < cutoff)).rowcount
        stats = conn.execute(delete(ConsumerStat).where(ConsumerStat.at < cutoff)).rowcount
    report = PruneReport(cutoff, results, masks, frames, specimens, stats, dry_run=False)
    log.info("prune finished", extra=kv(**{k: v for k, v in report.__dict__.items()}))
    return report
