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
  * SIGTERM / SIGINT: the batches in hand are finished and committed, then the consumer closes.

Pipelining (the default in :meth:`InferenceConsumer.run`): while batch k+1 is decoded and scored
on the polling thread, batch k is postprocessed (mask / heatmap PNG), stored, cached and fused by
one background *sink* thread. At most ``sink_depth`` scored batches wait for or sit in the sink
(back-pressure: the polling thread blocks when they are full), so memory and what a crash
redelivers stay bounded. Kafka's consumer is not thread-safe, so polling, dead-lettering and
committing all stay on the polling thread, and it commits batches strictly in the order they were
polled, each only once the sink reports it stored: the sink is FIFO, so a batch's commit (whose
offsets also cover every earlier record of its partitions) never precedes its own store or the
store of any batch polled before it. Dead-letter copies are published (and acknowledged) on the
polling thread before the batch is handed to the sink, so they too precede its commit.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import socket
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from inference.engines.base import (
    Engine,
    EngineOutput,
    EngineUnavailable,
    UnknownProduct,
    decode_hw,
    takes_encoded,
)
from inference.postprocess import build_row
from inference.sampling import IntervalSampler
from inference.telemetry import ConsumerMetrics
from ingest.bus import message_size
from ingest.bus.base import BatchConsumer, Record
from ingest.envelope import FrameEnvelope, PoisonFrame, check_encoded_frame, decode_frame
from lineinspect.errors import ServiceUnavailable
from lineinspect.logs import kv
from lineinspect.redact import redact
from lineinspect.settings import Settings
from storage.records import ResultRow

if TYPE_CHECKING:  # types only: these modules are imported where they are used
    from inference.fusion import SpecimenFuser
    from storage.cache import Cache
    from storage.store import ResultStore

log = logging.getLogger(__name__)
_T = TypeVar("_T")
# --idle-timeout does not count time without partitions (a rebalance in progress) for this long at least:
# a member left without partitions for longer is surplus and may idle out.
UNASSIGNED_GRACE_S = 60.0
# scored frames up to this size (model inputs: 256x256 to 1024x1024) are handed to post-store steps that take pixels
MAX_STEP_PIXELS = 1024 * 1024

PostStore = Callable[[list[ResultRow], list[FrameEnvelope]], None]


class _Stopped(Exception):
    """Stop was requested while waiting out an outage: abandon the batch uncommitted."""


@dataclass
class _Frame:
    record: Record
    env: FrameEnvelope
    image: np.ndarray | None        # decoded for the engine (model input size unless it tiles); None: the
    frame_hw: tuple[int, int]       # engine decodes the encoded bytes itself (takes_encoded). frame_hw: the
                                    # camera frame's own geometry (rows record it)


_Decoded = _Frame | tuple[str, str]  # a decoded frame, or (dead-letter reason, detail)


@dataclass
class _Scored:
    """One scored frame waiting for its row: the engine output is shared by its product batch."""

    record: Record
    env: FrameEnvelope
    hw: tuple[int, int]
    out: EngineOutput
    index: int
    engine_name: str
    inferred_at: float
    batch: int
    image: np.ndarray | None = None  # what the engine scored, for post-store steps that take pixels


@dataclass
class _Batch:
    """A polled batch after decode, scoring and dead-lettering; the sink turns it into stored rows.

    ``status`` moves from ``queued`` to ``stored`` (commit it), ``abandoned`` (stop requested
    during a store outage: never commit it or anything after it) or ``failed`` (``error`` is
    re-raised on the polling thread); ``done`` is set when the sink has finished with it.
    """

    records: list[Record]
    scored: list[_Scored]
    poison: list[tuple[Record, str, str]]
    rows: list[ResultRow] = field(default_factory=list)
    unstorable: list[tuple[Record, str, str]] = field(default_factory=list)  # dead-lettered at commit
    refused: int = 0  # unstorable rows already dead-lettered
    status: str = "queued"
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)


class InferenceConsumer:
    """One consumer loop; several processes in one consumer group share the partitions."""

    def __init__(self, settings: Settings, bus: BatchConsumer, engine: Engine, store: ResultStore, cache: Cache | None = None,
                 metrics: ConsumerMetrics | None = None, name: str | None = None, stat_interval_s: float = 10.0,
                 backoff_initial_s: float = 0.5, backoff_max_s: float = 30.0, engine_attempts: int = 3,
                 fuser: SpecimenFuser | None = None, pipelined: bool = True, sink_depth: int = 2, decode_threads: int | None = None,
                 post_store: list[PostStore] | None = None, decode_ahead: bool | None = None) -> None:
        """``pipelined``: store batch k on a sink thread while batch k+1 is scored (``run`` only;
        :meth:`process` is always synchronous); ``sink_depth``: scored batches allowed to wait for
        or sit in the sink (>= 1); ``decode_threads``: image decoders per batch (default
        ``settings.decode_threads``: 2; 1 decodes serially on the polling thread). At 320 px a pool is
        within the noise (decode ~1 ms); at 5-12 MP the decode is a third of a frame's CPU and two decoders
        use the core the sink leaves idle (``benchmarks/RESULTS.md`` camera section); ``decode_ahead``
        (default ``settings.decode_ahead``: on; pipelined ``run`` only): the decoders start on the next,
        already fetched batch while this one is scored."""
        decode_threads = settings.decode_threads if decode_threads is None else decode_threads
        if sink_depth < 1 or decode_threads < 1:
            raise ValueError(f"sink_depth ({sink_depth}) and decode_threads ({decode_threads}) must be >= 1")
        # Steps run after a batch is durably stored (e.g. inference.drift.DriftMonitor): ``step(rows,
        # envelopes)``; a failing step is logged and never blocks the commit. A step with a
        # ``before_store(rows)`` method also sees each batch just before it is stored (to annotate rows).
        self.post_store: list[PostStore] = list(post_store or [])
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
        self._fuse_lock = threading.Lock()  # results fuse on the sink thread, the sweep runs on the polling thread
        self._last_sweep = time.monotonic()
        self.pipelined = pipelined
        self.sink_depth = sink_depth
        self.decode_threads = decode_threads
        self.decode_ahead = settings.decode_ahead if decode_ahead is None else decode_ahead
        self._decoder: ThreadPoolExecutor | None = None
        self._polling_thread = threading.get_ident()  # the only thread that may touch the bus (run() resets it)
        # which clearly normal frames become training samples (rows are built on one thread: the sink's or run's)
        self._normal_sampler = IntervalSampler(settings.keep_normal_every_s)

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
        ``idle_timeout_s``; returns the number of records handled (stored + dead-lettered, committed).

        On the way out the sink is drained: every batch it stores is committed, in order; a batch
        abandoned in an outage (and everything polled after it) stays uncommitted and is redelivered."""
        handled = 0
        polled = 0  # records taken from the bus (committed or in the sink)
        self._polling_thread = threading.get_ident()
        self.metrics.start_http()
        last_data = time.monotonic()
        unassigned_since: float | None = None
        poll_delay = self.backoff_initial_s
        sink = _Sink(self) if self.pipelined else None
        inflight: deque[_Batch] = deque()
        # polled batches not yet scored, oldest first, each with its decode if it was started ahead
        # (decode_ahead: the newest waits, decoding, while the one before it is scored)
        polled_ahead: deque[tuple[list[Record], list[Future[_Decoded]] | None]] = deque()
        ahead = sink is not None and self.decode_ahead
        ok = False
        try:
            while True:
                stopping = self._stop.is_set() or (max_frames is not None and polled >= max_frames)
                if stopping and not polled_ahead:
                    break
                records: list[Record] = []
                if not stopping:
                    want = self.settings.batch_max_records
                    if max_frames is not None:
                        want = min(want, max_frames - polled)
                    try:  # with a batch in hand, take only what is already fetched: it is not kept waiting
                        records = self.bus.poll_batch(want, 0 if polled_ahead else self.settings.batch_max_wait_ms)
                        poll_delay = self.backoff_initial_s
                    except ServiceUnavailable as exc:  # the broker is down or restarting: back off, keep the process
                        if not polled_ahead:
                            log.warning("bus unavailable; waiting before polling again (nothing is lost: offsets are "
                                        "committed)", extra=kv(wait_s=round(poll_delay, 2), error=str(exc)[:300]))
                            self._stop.wait(poll_delay)
                            poll_delay = min(poll_delay * 2, self.backoff_max_s)
                            continue  # (the batch in hand is scored first; the next poll backs off)
                try:
                    if records:
                        last_data = time.monotonic()
                        polled += len(records)
                        if sink is None:
                            handled += self.process(records)
                        else:
                            polled_ahead.append((records, self._start_decode(records) if ahead else None))
                    # score every batch in hand but the newest while it decodes; all of them when nothing came
                    while polled_ahead and (len(polled_ahead) > 1 or not (ahead and records)):
                        recs, decoding = polled_ahead.popleft()
                        batch = self._prepare(recs, decoding)  # scored here while the sink stores the previous ones
                        handled += self._commit_done(inflight, room_for=self.sink_depth - 1)  # back-pressure
                        inflight.append(batch)
                        assert sink is not None
                        sink.put(batch)
                    handled += self._commit_done(inflight)
                except _Stopped:
                    log.info("stopped during an outage; the batches in hand stay uncommitted and will be redelivered",
                             extra=kv(records=sum(len(r) for r, _ in polled_ahead) + sum(len(b.records) for b in inflight)))
                    break
                if stopping:
                    continue
                if records or self._assigned():
                    unassigned_since = None
                elif idle_timeout_s is not None:  # a rebalance, no partitions yet: waiting, not idle ...
                    now = time.monotonic()
                    unassigned_since = unassigned_since or now
                    if now - unassigned_since < max(UNASSIGNED_GRACE_S, 4 * idle_timeout_s):
                        last_data = now  # ... unless it lasts so long that this member is simply surplus
                if not records and idle_timeout_s is not None and time.monotonic() - last_data >= idle_timeout_s:
                    log.info("idle timeout", extra=kv(seconds=idle_timeout_s, handled=handled))
                    break
                self._maybe_snapshot()
                self._maybe_sweep()
            ok = True
        finally:
            if sink is not None:
                if not ok:  # an error is on its way out: do not wait out an outage in the sink
                    self._stop.set()
                sink.close()  # every batch handed over is now stored, abandoned or failed
                handled += self._drain(inflight, raise_errors=ok)
            self._maybe_snapshot(force=True)
        return handled

    def process(self, records: list[Record]) -> int:
        """Handle one polled batch end to end and synchronously (commit included); returns the records handled."""
        batch = self._prepare(records)
        self._store(batch)
        return self._commit(batch)

    def _prepare(self, records: list[Record], decoding: list[Future[_Decoded]] | None = None) -> _Batch:
        """Polling-thread half of a batch: decode (or collect the decode started ahead), score,
        dead-letter what can never be stored."""
        self.metrics.observe_batch(len(records))
        frames, poison = self._decode(records, decoding)
        scored: list[_Scored] = []
        by_product: dict[str, list[_Frame]] = defaultdict(list)
        for f in frames:
            by_product[f.env.product].append(f)
        for product, group in by_product.items():
            good, bad = self._score(product, group)
            scored.extend(good)
            poison.extend(bad)
        for rec, reason, detail in poison:
            self._retry("dead-letter topic", partial(self.bus.dead_letter, rec, reason, detail))
            self.metrics.dead_lettered(reason)
            log.warning("dead-lettered", extra=kv(reason=reason, detail=detail[:200], partition=rec.partition, offset=rec.offset))
        return _Batch(records, scored, poison)

    def _store(self, batch: _Batch) -> None:
        """Sink half: rows (masks, heatmaps), the durable store, then cache and specimen fusion."""
        t0 = time.time()
        built = [(s, self._row(s)) for s in batch.scored]  # an encoding error here is an engine bug: raised
        self._before_store([r for _, r in built])
        self._sample_normals([r for _, r in built])
        bad = self._save([r for _, r in built])
        for i, detail in bad:
            batch.unstorable.append((built[i][0].record, "unstorable", detail))
        refused = {i for i, _ in bad}
        rows = [r for i, (_, r) in enumerate(built) if i not in refused]
        if rows:
            stored_at = time.time()
            per_product: dict[str, tuple[list[str], list[float]]] = defaultdict(lambda: ([], []))
            for r in rows:
                per_product[r.product][0].append(r.verdict)
                per_product[r.product][1].append(stored_at - r.captured_at)
            for product, (verdicts, lat) in per_product.items():
                self.metrics.observe_stored(product, verdicts, lat)
            self._update_cache(rows)
            self._fuse(rows)
            kept = [s for i, (s, _) in enumerate(built) if i not in refused]
            self._post_store(rows, [s.env for s in kept], [s.image for s in kept])
        batch.rows = rows
        log.debug("batch stored", extra=kv(records=len(batch.records), stored=len(rows),
                                           dlq=len(batch.poison) + len(batch.unstorable),
                                           ms=round((time.time() - t0) * 1000, 1)))

    def _save(self, rows: list[ResultRow]) -> list[tuple[int, str]]:
        """Store ``rows``; returns ``(index, why)`` of the rows the store refused.

        Outages (:func:`storage.db.is_outage`) are waited out with backoff and the same rows retried;
        any other failure is the fault of some row: the batch is split in halves until the refused
        rows stand alone, so one bad frame costs ~2 log2(batch) extra writes and never the batch."""
        from storage.db import is_outage

        delay = self.backoff_initial_s
        while rows:
            try:
                conflicts = getattr(self.store, "redelivery_conflicts", 0)
                self.store.save_results(rows)
                new = getattr(self.store, "redelivery_conflicts", 0) - conflicts
                if new > 0:
                    self.metrics.redelivery_conflicts.inc(new)
                return []
            except _Stopped:
                raise
            except Exception as exc:  # noqa: BLE001 - classified below: wait (outage) or isolate (row)
                if not is_outage(exc):
                    return self._bisect(rows, exc)
                self.metrics.store_errors.inc()
                log.warning("result store unavailable; waiting before retrying (nothing is committed meanwhile)",
                            extra=kv(wait_s=round(delay, 2), error=redact(str(exc))[:300]))
            self._wait(delay)
            delay = min(delay * 2, self.backoff_max_s)
        return []

    def _bisect(self, rows: list[ResultRow], exc: BaseException) -> list[tuple[int, str]]:
        if len(rows) == 1:
            r = rows[0]
            detail = f"the result store refused the row: {type(exc).__name__}: {redact(str(exc)).splitlines()[0][:220]}"
            log.error("result row refused by the store; dead-lettering that frame alone",
                      extra=kv(camera=r.camera[:64], frame_id=r.frame_id, error=detail))
            return [(0, detail)]
        mid = len(rows) // 2
        left = self._save(rows[:mid])
        right = self._save(rows[mid:])
        return left + [(i + mid, d) for i, d in right]

    def _commit(self, batch: _Batch) -> int:
        """Dead-letter the rows the store refused, then commit a stored batch (polling thread only);
        returns its record count."""
        while batch.unstorable:  # popped once acknowledged: a commit retried after a stop does not repeat them
            rec, reason, detail = batch.unstorable[0]
            self._retry("dead-letter topic", partial(self.bus.dead_letter, rec, reason, detail))
            batch.unstorable.pop(0)
            batch.refused += 1
            self.metrics.dead_lettered(reason)
            log.warning("dead-lettered", extra=kv(reason=reason, detail=detail[:200], partition=rec.partition,
                                                  offset=rec.offset))
        self._retry("bus commit", lambda: self.bus.commit(batch.records))  # broker restarting: wait, do not die
        self.stored += len(batch.rows)
        self.dead_lettered += len(batch.poison) + batch.refused
        return len(batch.records)

    def _commit_done(self, inflight: deque[_Batch], room_for: int | None = None) -> int:
        """Commit the finished batches at the head of ``inflight``, oldest first; with ``room_for``,
        first wait until at most that many remain (back-pressure on the polling thread).

        Raises :class:`_Stopped` at an abandoned batch and re-raises a failed batch's error: nothing
        polled after it may be committed (the commit offsets are cumulative per partition)."""
        handled = 0
        while inflight:
            head = inflight[0]
            if room_for is not None and len(inflight) > room_for:
                # a normal batch is stored well within a second; longer, the sink is waiting out an outage,
                # so keep the group alive meanwhile (a rebalance must not wait for this member)
                if not head.done.wait(1.0):
                    while not head.done.is_set():
                        if not self._keep_alive(0.25):
                            head.done.wait(0.25)
            elif not head.done.is_set():
                break
            if head.status == "abandoned":
                raise _Stopped()
            if head.status == "failed":
                head.status = "abandoned"  # raised once; a later drain stops here without raising again
                raise head.error  # type: ignore[misc]
            handled += self._commit(head)
            inflight.popleft()
        return handled

    def _drain(self, inflight: deque[_Batch], raise_errors: bool) -> int:
        """After the sink closed: commit the stored prefix of ``inflight``; the rest is redelivered."""
        handled = 0
        try:
            handled += self._commit_done(inflight)
        except _Stopped:
            pass
        except Exception:
            if raise_errors:
                raise
            log.exception("batch failed while another error was leaving the consumer")
        finally:
            if inflight:
                log.info("left uncommitted for redelivery", extra=kv(batches=len(inflight),
                                                                     records=sum(len(b.records) for b in inflight)))
        return handled

    def _before_store(self, rows: list[ResultRow]) -> None:
        """Let post-store steps that annotate rows (``before_store(rows)``: the drift monitor sets
        ``drifted``) see the batch before it is stored; a failure is logged and the rows are stored as
        they are (the monitor flags an alarm's frames again when it learns of it)."""
        for step in self.post_store:
            hook = getattr(step, "before_store", None)
            if hook is None:
                continue
            try:
                hook(rows)
            except Exception as exc:  # noqa: BLE001 - annotation must not stop the line
                log.warning("before-store step failed; storing the rows unannotated",
                            extra=kv(step=type(step).__name__, error=str(exc)[:300]))

    def _post_store(self, rows: list[ResultRow], envelopes: list[FrameEnvelope], images: list[np.ndarray | None]) -> None:
        """Steps that say ``takes_images = True`` also get the pixels the engine scored (model input size,
        ``None`` where the engine decoded the bytes itself): at 5 MP a second decode of every frame in a
        step (drift's grey check) cost more than all of bus, storage and cache together."""
        for step in self.post_store:
            try:
                if getattr(step, "takes_images", False):
                    step(rows, envelopes, images)  # type: ignore[call-arg]
                else:
                    step(rows, envelopes)
            except Exception as exc:  # noqa: BLE001 - the rows are stored; a monitor must not stop the line
                log.warning("post-store step failed; results are stored, continuing",
                            extra=kv(step=type(step).__name__, error=str(exc)[:300]))

    # --- specimen fusion (inference/fusion.py) ---------------------------------------------------
    def _fuse(self, rows: list[ResultRow]) -> None:
        """Decide specimens whose views are now all stored. Never blocks the stream: on failure the
        periodic sweep decides them later (state is in the database, not here)."""
        if not any(r.specimen_id for r in rows):
            return
        try:
            with self._fuse_lock:
                if self.fuser is None and hasattr(self.store, "db_engine"):
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
            with self._fuse_lock:
                self.fuser.sweep()
        except Exception as exc:  # noqa: BLE001
            log.warning("specimen sweep failed", extra=kv(error=str(exc)[:300]))

    # --- steps ------------------------------------------------------------------------------
    def _start_decode(self, records: list[Record]) -> list[Future[_Decoded]]:
        """Hand a batch's frames to the decode threads now; :meth:`_decode` collects them in record order."""
        if self._decoder is None:
            self._decoder = ThreadPoolExecutor(self.decode_threads, thread_name_prefix="decode")
        return [self._decoder.submit(self._decode_one, rec) for rec in records]

    def _decode(self, records: list[Record], decoding: list[Future[_Decoded]] | None = None,
                ) -> tuple[list[_Frame], list[tuple[Record, str, str]]]:
        """Envelopes and images in record order; cv2 releases the GIL, so a small pool decodes in parallel."""
        if decoding is None and self.decode_threads > 1 and len(records) > 1:
            decoding = self._start_decode(records)
        results = [f.result() for f in decoding] if decoding is not None else [self._decode_one(rec) for rec in records]
        frames, poison = [], []
        for rec, got in zip(records, results):
            if isinstance(got, _Frame):
                frames.append(got)
            else:
                poison.append((rec, *got))
        return frames, poison

    def _decode_one(self, rec: Record) -> _Decoded:
        size = message_size(rec.key, rec.value, rec.headers)  # the publisher's own rule (ingest.bus.check_size)
        if size > self.settings.max_message_bytes:  # the broker's framing headroom let it through; we do not
            return "oversized", f"message is {size} bytes, over max_message_bytes={self.settings.max_message_bytes}"
        try:
            env = FrameEnvelope.from_message(rec.key, rec.value, rec.headers)
            if takes_encoded(self.engine, env.product):  # the engine decodes (on its GPU): checks only here
                return _Frame(rec, env, None, check_encoded_frame(env, self.settings.max_frame_pixels))
            return self._decoded(rec, env)
        except PoisonFrame as exc:
            return exc.reason, exc.detail

    def _decoded(self, rec: Record, env: FrameEnvelope) -> _Frame:
        d = decode_frame(env, self.settings.max_frame_pixels, decode_hw(self.engine, env.product),
                         self.settings.decode_oversample)
        return _Frame(rec, env, d.image, d.frame_hw)

    def _decode_here(self, frames: list[_Frame]) -> tuple[list[_Frame], list[tuple[Record, str, str]]]:
        """Decode frames that were handed on encoded on this CPU, one by one, so a frame the engine's
        decoder refused is isolated (dead-lettered) and the rest are scored from pixels."""
        good, bad = [], []
        for f in frames:
            if f.image is not None:
                good.append(f)
                continue
            try:
                good.append(self._decoded(f.record, f.env))
            except PoisonFrame as exc:
                bad.append((f.record, exc.reason, exc.detail))
        return good, bad

    def _score(self, product: str, frames: list[_Frame]) -> tuple[list[_Scored], list[tuple[Record, str, str]]]:
        """Rows for one product's frames; frames that can never be scored come back as poison."""
        undecoded = sum(f.image is None for f in frames)
        if undecoded and (undecoded < len(frames) or not takes_encoded(self.engine, product)):
            frames, poison = self._decode_here(frames)  # the route changed since the frames were parsed
            good, bad = self._score(product, frames) if frames else ([], [])
            return good, poison + bad
        try:
            out = self._infer(product, frames)
        except PoisonFrame:  # the engine's decoder refused a frame the header checks let through
            frames, poison = self._decode_here(frames)
            good, bad = self._score(product, frames) if frames else ([], [])
            return good, poison + bad
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
        engine_name = out.engine_name or getattr(self.engine, "name", "unknown")
        inferred_at = time.time()
        return [_Scored(f.record, f.env, f.frame_hw, out, i, engine_name, inferred_at, len(frames), self._for_steps(f.image))
                for i, f in enumerate(frames)], []

    def _for_steps(self, image: np.ndarray | None) -> np.ndarray | None:
        """The scored pixels if a post-store step takes them and they are model-sized: a tiling product's
        full-resolution frames are not held for the sink (the steps decode those bytes at their own scale)."""
        if image is None or image.shape[0] * image.shape[1] > MAX_STEP_PIXELS:
            return None
        return image if any(getattr(step, "takes_images", False) for step in self.post_store) else None

    def _infer(self, product: str, frames: list[_Frame]) -> EngineOutput:
        """engine.infer with retries: unavailable backends forever, other errors ``engine_attempts`` times."""
        delay = self.backoff_initial_s
        failures = 0
        while True:
            t0 = time.perf_counter()
            try:
                if frames[0].image is None:  # takes_encoded: the engine decodes (see _score for mixed batches)
                    out, _geoms, _path = self.engine.infer_encoded(  # type: ignore[attr-defined]
                        product, [f.env for f in frames], self.settings.max_frame_pixels,
                        self.settings.decode_oversample)
                else:
                    out = self.engine.infer(product, [f.image for f in frames])  # type: ignore[misc]
                _check_output(out, len(frames))
                self.metrics.observe_infer(time.perf_counter() - t0)
                if failures or delay > self.backoff_initial_s:  # recovered from a wait: clear held gauges now
                    self._update_held()
                return out
            except (UnknownProduct, PoisonFrame):
                raise
            except EngineUnavailable as exc:
                self.metrics.engine_error()
                self._update_held()
                log.warning("engine unavailable; waiting before retrying the batch",
                            extra=kv(product=product, wait_s=round(delay, 2), error=str(exc)))
            except Exception as exc:
                self.metrics.engine_error()
                failures += 1
                log.error("engine failed", extra=kv(product=product, frames=len(frames), attempt=failures, error=repr(exc)))
                if failures >= self.engine_attempts:
                    raise _EngineRejects() from exc
            self._wait(delay)
            delay = min(delay * 2, self.backoff_max_s)

    def _row(self, s: _Scored) -> ResultRow:
        """The result row (inference.postprocess.build_row); on the sink thread when pipelined."""
        return build_row(s.env, s.hw, s.out, s.index, s.inferred_at, s.batch, s.engine_name,
                         self.settings.keep_flagged_frames, self.settings.keep_normal_margin)

    def _sample_normals(self, rows: list[ResultRow]) -> None:
        """Clearly normal rows beyond one per camera and product per ``keep_normal_every_s`` of capture time
        drop their frame bytes (inference.sampling); after ``_before_store``, so a drifted frame, which
        never becomes a sample, does not take a camera's slot."""
        for r in rows:
            if r.keep_as_normal and not r.drifted and not self._normal_sampler.admit((r.product, r.camera), r.captured_at):
                r.keep_as_normal = False
                r.frame_bytes = None

    def _update_cache(self, rows: list[ResultRow]) -> None:
        if self.cache is None:
            return
        try:
            self.cache.record_results([r.cache_dict() for r in rows])
        except Exception as exc:  # noqa: BLE001 - the database already has the results
            self.metrics.cache_errors.inc()
            log.warning("cache update failed; results are stored, continuing", extra=kv(error=str(exc), rows=len(rows)))

    def _retry(self, what: str, fn: Callable[[], _T]) -> _T:
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
        """Back off for ``seconds``; on the polling thread the bus is kept alive meanwhile (see :meth:`_keep_alive`)."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            if self._stop.is_set():
                raise _Stopped()
            if not self._keep_alive(min(left, 1.0)):
                self._stop.wait(min(left, 1.0))
        if self._stop.is_set():
            raise _Stopped()

    def _keep_alive(self, timeout_s: float) -> bool:
        """Let the bus service its consumer group for up to ``timeout_s`` without taking records; False when
        it cannot (not the polling thread: Kafka's client is not thread-safe; or a bus without keep-alive).

        Without this, a consumer waiting out an outage (store down, engine down, sink full) never polls,
        and Kafka's rebalance waits for it: a member joining the group gets no partitions for the whole
        outage, up to ``kafka_max_poll_interval_ms``."""
        fn = getattr(self.bus, "keep_alive", None)
        if fn is None or threading.get_ident() != self._polling_thread:
            return False
        try:
            fn(timeout_s)
        except Exception as exc:  # noqa: BLE001 - the keep-alive is best effort; the wait goes on
            log.debug("bus keep-alive failed", extra=kv(error=str(exc)[:300]))
            return False
        return True

    def _update_held(self) -> None:
        held = getattr(self.engine, "held", None)
        if callable(held):
            try:
                self.metrics.set_held(held())
            except Exception as exc:  # noqa: BLE001 - a gauge must never stop consumption
                log.debug("held models unavailable", extra=kv(error=str(exc)))

    def _assigned(self) -> bool:
        """Whether the bus holds partitions now (buses without an assignment always count as assigned)."""
        assignment = getattr(self.bus, "assignment", None)
        if not callable(assignment):
            return True
        try:
            return bool(assignment())
        except Exception:  # noqa: BLE001 - informational
            return True

    def _maybe_snapshot(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_stat < self.stat_interval_s:
            return
        self._last_stat = now
        self._update_held()
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
        if self._decoder is not None:
            self._decoder.shutdown(wait=True)
            self._decoder = None
        self.metrics.close()
        self.bus.close()


class _Sink:
    """One background thread storing scored batches in FIFO order (see the module docstring).

    It never touches the bus. After a batch is abandoned (stop during a store outage) or fails,
    every later batch is abandoned unstored too, so the stored batches are always a prefix of the
    batches handed over, which is what the polling thread commits.
    """

    def __init__(self, consumer: InferenceConsumer) -> None:
        self._consumer = consumer
        self._queue: queue.SimpleQueue[_Batch | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="consumer-sink", daemon=True)
        self._thread.start()

    def put(self, batch: _Batch) -> None:
        self._queue.put(batch)

    def close(self) -> None:
        """Finish every batch handed over, then end the thread."""
        self._queue.put(None)
        self._thread.join()

    def _loop(self) -> None:
        broken = False
        while (batch := self._queue.get()) is not None:
            try:
                if broken:
                    batch.status = "abandoned"
                    continue
                self._consumer._store(batch)
                batch.status = "stored"
            except _Stopped:
                broken, batch.status = True, "abandoned"
            except BaseException as exc:  # noqa: BLE001 - handed to the polling thread, which re-raises it
                broken, batch.status, batch.error = True, "failed", exc
            finally:
                batch.done.set()


class _EngineRejects(Exception):
    """The engine failed on these frames ``engine_attempts`` times (not an outage)."""


def _check_output(out: EngineOutput, n: int) -> None:
    if len(out.scores) != n or len(out.maps) != n:
        raise ValueError(f"engine returned {len(out.scores)} scores / {len(out.maps)} maps for {n} frames")
