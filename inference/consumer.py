"""The batching inference consumer: bus -> decode -> engine -> postprocess -> store -> cache -> commit.

Guarantees (what the integration tests check):
  * at least once, exactly one row: offsets are committed only after ``store.save_results`` has
    returned (durable); the store ignores a ``(camera, frame_id)`` it already has, so a batch
    replayed after a crash or rebalance changes nothing;
  * nothing is dropped silently: a message that can never be processed (bad envelope,
    undecodable, oversized, unknown product, a frame the engine keeps failing on) goes to the
    dead-letter topic with a reason before its offset is committed;
  * outages wait, they do not lose: while the store, the engine backend or the DLQ is unavailable
    the consumer retries with exponential backoff (saying why it waits) and commits nothing;
  * the cache is best effort: a Redis failure is logged and never blocks the commit (the
    database is the record; the cache refills from the next results);
  * SIGTERM / SIGINT: the batch in hand is finished and committed, then the consumer closes.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from inference.engines.base import Engine, EngineOutput, EngineUnavailable, UnknownProduct
from inference.metrics import ConsumerMetrics
from inference.postprocess import binary_mask, defect_area, heat_png, mask_png, pixel_threshold, verdict
from ingest.bus.base import BatchConsumer, Record
from ingest.envelope import FrameEnvelope, PoisonFrame, decode_image
from lineinspect.errors import ServiceUnavailable
from lineinspect.logs import kv
from lineinspect.settings import Settings
from storage.records import ResultRow

log = logging.getLogger(__name__)


class _Stopped(Exception):
    """Stop was requested while waiting out an outage: abandon the batch uncommitted."""


@dataclass
class _Frame:
    record: Record
    env: FrameEnvelope
    image: np.ndarray


class InferenceConsumer:
    """One consumer loop; several processes in one consumer group share the partitions."""

    def __init__(self, settings: Settings, bus: BatchConsumer, engine: Engine, store: Any, cache: Any = None,
                 metrics: ConsumerMetrics | None = None, name: str | None = None, stat_interval_s: float = 10.0,
                 backoff_initial_s: float = 0.5, backoff_max_s: float = 30.0, engine_attempts: int = 3,
                 fuser: Any = None) -> None:
        self.settings = settings
        self.bus = bus
        self.engine = engine
        self.store = store
        self.cache = cache
        self.metrics = metrics or ConsumerMetrics(settings)
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{settings.consumer_group}"
        self.stat_interval_s = stat_interval_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.engine_attempts = max(1, engine_attempts)
        self.stored = 0
        self.dead_lettered = 0
        self._stop = threading.Event()
        self._last_stat = time.monotonic()
        self._closed = False
        self.fuser = fuser          # inference.fusion.SpecimenFuser; built on the first specimen frame
        self._last_sweep = time.monotonic()

    # --- control ------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Finish the batch in hand, commit it, and leave :meth:`run`."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def install_signal_handlers(self) -> None:
        """SIGTERM / SIGINT -> :meth:`request_stop` (main thread only)."""
        def handler(signum: int, _frame: object) -> None:
            log.info("stop requested; finishing the batch in hand", extra=kv(signal=signum))
            self._stop.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    # --- loop -----------------------------------------------------------------------------
    def run(self, max_frames: int | None = None, idle_timeout_s: float | None = None) -> int:
        """Consume until stopped, ``max_frames`` records are handled, or nothing came for
        ``idle_timeout_s``; returns the number of records handled (stored + dead-lettered)."""
        handled = 0
        self.metrics.start_http()
        last_data = time.monotonic()
        poll_delay = self.backoff_initial_s
        while not self._stop.is_set():
            want = self.settings.batch_max_records
            if max_frames is not None:
                if handled >= max_frames:
                    break
                want = min(want, max_frames - handled)
            try:
                records = self.bus.poll_batch(want, self.settings.batch_max_wait_ms)
                poll_delay = self.backoff_initial_s
            except ServiceUnavailable as exc:  # the broker is down or restarting: back off, keep the process
                log.warning("bus unavailable; waiting before polling again (nothing is lost: offsets are committed)",
                            extra=kv(wait_s=round(poll_delay, 2), error=str(exc)[:300]))
                self._stop.wait(poll_delay)
                poll_delay = min(poll_delay * 2, self.backoff_max_s)
                continue
            if records:
                last_data = time.monotonic()
                try:
                    handled += self.process(records)
                except _Stopped:
                    log.info("stopped during an outage; the batch in hand stays uncommitted and will be redelivered",
                             extra=kv(records=len(records)))
                    break
            elif idle_timeout_s is not None and time.monotonic() - last_data >= idle_timeout_s:
                log.info("idle timeout", extra=kv(seconds=idle_timeout_s, handled=handled))
                break
            self._maybe_snapshot()
            self._maybe_sweep()
        self._maybe_snapshot(force=True)
        return handled

    def process(self, records: list[Record]) -> int:
        """Handle one polled batch end to end (commit included); returns the records handled."""
        t0 = time.time()
        self.metrics.observe_batch(len(records))
        frames, poison = self._decode(records)
        rows: list[ResultRow] = []
        by_product: dict[str, list[_Frame]] = defaultdict(list)
        for f in frames:
            by_product[f.env.product].append(f)
        for product, group in by_product.items():
            good, bad = self._score(product, group)
            rows.extend(good)
            poison.extend(bad)
        for rec, reason, detail in poison:
            self._retry("dead-letter topic", lambda r=rec, a=reason, d=detail: self.bus.dead_letter(r, a, d))
            self.metrics.dead_lettered(reason)
            log.warning("dead-lettered", extra=kv(reason=reason, detail=detail[:200], partition=rec.partition, offset=rec.offset))
        if rows:
            self._retry("result store", lambda: self.store.save_results(rows))
            stored_at = time.time()
            per_product: dict[str, tuple[list[str], list[float]]] = defaultdict(lambda: ([], []))
            for r in rows:
                per_product[r.product][0].append(r.verdict)
                per_product[r.product][1].append(stored_at - r.captured_at)
            for product, (verdicts, lat) in per_product.items():
                self.metrics.observe_stored(product, verdicts, lat)
            self._update_cache(rows)
            self._fuse(rows)
        self._retry("bus commit", lambda: self.bus.commit(records))  # broker restarting: wait, do not die
        self.stored += len(rows)
        self.dead_lettered += len(poison)
        log.debug("batch done", extra=kv(records=len(records), stored=len(rows), dlq=len(poison),
                                         ms=round((time.time() - t0) * 1000, 1)))
        return len(records)

    # --- specimen fusion (inference/fusion.py) ---------------------------------------------------
    def _fuse(self, rows: list[ResultRow]) -> None:
        """Decide specimens whose views are now all stored. Never blocks the stream: on failure the
        periodic sweep decides them later (state is in the database, not here)."""
        if not any(r.specimen_id for r in rows):
            return
        try:
            if self.fuser is None and hasattr(self.store, "engine"):
                from inference.fusion import SpecimenFuser

                self.fuser = SpecimenFuser(self.store, self.settings)
            if self.fuser is not None:
                self.fuser.on_results(rows)
        except Exception as exc:  # noqa: BLE001 - fusion is best effort per batch
            log.warning("specimen fusion failed; the sweep will retry", extra=kv(error=str(exc)[:300]))

    def _maybe_sweep(self) -> None:
        if self.fuser is None or time.monotonic() - self._last_sweep < max(1.0, self.settings.fusion_timeout_s / 2):
            return
        self._last_sweep = time.monotonic()
        try:
            self.fuser.sweep()
        except Exception as exc:  # noqa: BLE001
            log.warning("specimen sweep failed", extra=kv(error=str(exc)[:300]))

    # --- steps ------------------------------------------------------------------------------
    def _decode(self, records: list[Record]) -> tuple[list[_Frame], list[tuple[Record, str, str]]]:
        frames, poison = [], []
        for rec in records:
            try:
                env = FrameEnvelope.from_message(rec.key, rec.value, rec.headers)
                img = decode_image(env, self.settings.max_frame_pixels)
            except PoisonFrame as exc:
                poison.append((rec, exc.reason, exc.detail))
                continue
            frames.append(_Frame(rec, env, img))
        return frames, poison

    def _score(self, product: str, frames: list[_Frame]) -> tuple[list[ResultRow], list[tuple[Record, str, str]]]:
        """Rows for one product's frames; frames that can never be scored come back as poison."""
        try:
            out = self._infer(product, frames)
        except UnknownProduct as exc:
            return [], [(f.record, "unknown_product", str(exc)) for f in frames]
        except _EngineRejects:
            if len(frames) == 1:
                return [], [(frames[0].record, "engine_error", "the engine failed on this frame repeatedly")]
            rows, bad = [], []
            for f in frames:  # isolate the frame(s) the engine cannot handle
                r, b = self._score(product, [f])
                rows.extend(r)
                bad.extend(b)
            return rows, bad
        engine_name = getattr(out, "engine_name", None) or getattr(self.engine, "name", "unknown")
        if getattr(out, "calibrated", True) is False:  # zero-shot threshold still warming up: say so per row
            engine_name = f"{engine_name}:warmup"
        inferred_at = time.time()
        return [self._row(f, out, i, engine_name, inferred_at, len(frames)) for i, f in enumerate(frames)], []

    def _infer(self, product: str, frames: list[_Frame]) -> EngineOutput:
        """engine.infer with retries: unavailable backends forever, other errors ``engine_attempts`` times."""
        delay = self.backoff_initial_s
        failures = 0
        while True:
            t0 = time.perf_counter()
            try:
                out = self.engine.infer(product, [f.image for f in frames])
                _check_output(out, len(frames))
                self.metrics.observe_infer(time.perf_counter() - t0)
                return out
            except UnknownProduct:
                raise
            except EngineUnavailable as exc:
                self.metrics.engine_error()
                log.warning("engine unavailable; waiting before retrying the batch",
                            extra=kv(product=product, wait_s=round(delay, 2), error=str(exc)))
            except Exception as exc:  # noqa: BLE001 - a failing engine must not kill the consumer
                self.metrics.engine_error()
                failures += 1
                log.error("engine failed", extra=kv(product=product, frames=len(frames), attempt=failures, error=repr(exc)))
                if failures >= self.engine_attempts:
                    raise _EngineRejects() from exc
            self._wait(delay)
            delay = min(delay * 2, self.backoff_max_s)

    def _row(self, f: _Frame, out: EngineOutput, i: int, engine_name: str, inferred_at: float, batch: int) -> ResultRow:
        score = float(out.scores[i])
        thr = float(out.threshold)
        h, w = f.image.shape[:2]
        v = verdict(score, thr)
        row = ResultRow(
            product=f.env.product, line=f.env.line, camera=f.env.camera, frame_id=f.env.frame_id,
            captured_at=f.env.capture_ts, inferred_at=inferred_at, score=score, threshold=thr, verdict=v,
            model_version=str(out.model_version), engine=str(engine_name)[:32], infer_ms=float(out.infer_ms),
            batch_size=batch, width=w, height=h, specimen_id=f.env.specimen_id, view=f.env.view,
            frame_encoding=f.env.encoding,
        )
        if v == "defect":
            amap = np.asarray(out.maps[i], dtype=np.float32)
            mask = binary_mask(amap, pixel_threshold(thr, getattr(out, "pixel_threshold", None)), (h, w))
            row.defect_area_px = defect_area(mask)
            row.mask_png = mask_png(mask)
            row.heat_png = heat_png(amap, thr, (h, w)) if thr > 0 else None
            if self.settings.keep_flagged_frames:
                row.frame_bytes = f.env.payload
        elif score < self.settings.keep_normal_margin * thr:
            row.keep_as_normal = True
            row.frame_bytes = f.env.payload
        return row

    def _update_cache(self, rows: list[ResultRow]) -> None:
        if self.cache is None:
            return
        try:
            self.cache.record_results([r.cache_dict() for r in rows])
        except Exception as exc:  # noqa: BLE001 - the database already has the results
            self.metrics.cache_errors.inc()
            log.warning("cache update failed; results are stored, continuing", extra=kv(error=str(exc), rows=len(rows)))

    def _retry(self, what: str, fn: Any) -> Any:
        """Call ``fn`` until it succeeds, backing off exponentially; raises :class:`_Stopped` on stop."""
        delay = self.backoff_initial_s
        while True:
            try:
                return fn()
            except Exception as exc:  # noqa: BLE001 - outages are waited out, never dropped
                if what == "result store":
                    self.metrics.store_errors.inc()
                log.warning(f"{what} unavailable; waiting before retrying (nothing is committed meanwhile)",
                            extra=kv(wait_s=round(delay, 2), error=str(exc)[:300]))
            self._wait(delay)
            delay = min(delay * 2, self.backoff_max_s)

    def _wait(self, seconds: float) -> None:
        if self._stop.wait(seconds):
            raise _Stopped()

    def _maybe_snapshot(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_stat < self.stat_interval_s:
            return
        self._last_stat = now
        try:
            self.metrics.set_lag(self.bus.lag())
        except Exception as exc:  # noqa: BLE001 - lag is informational
            log.debug("lag unavailable", extra=kv(error=str(exc)))
        snap = self.metrics.snapshot()
        record = getattr(self.store, "record_consumer_stat", None)
        if record is None:
            return
        try:
            record(consumer=self.name[:160], engine=str(getattr(self.engine, "name", "unknown"))[:64], **snap)
        except Exception as exc:  # noqa: BLE001 - stats must never stop consumption
            log.warning("consumer stats not stored", extra=kv(error=str(exc)[:300]))

    def close(self) -> None:
        """Close the bus consumer (the engine, store and cache belong to the caller)."""
        if self._closed:
            return
        self._closed = True
        self.metrics.close()
        self.bus.close()


class _EngineRejects(Exception):
    """The engine failed on these frames ``engine_attempts`` times (not an outage)."""


def _check_output(out: EngineOutput, n: int) -> None:
    if len(out.scores) != n or len(out.maps) != n:
        raise ValueError(f"engine returned {len(out.scores)} scores / {len(out.maps)} maps for {n} frames")
