"""Consumer metrics: Prometheus (own registry, optional HTTP endpoint) and dashboard snapshots.

Each consumer process owns a :class:`prometheus_client.CollectorRegistry` (no global default
registry, so tests and several consumers in one process never collide). The same observations
feed :meth:`ConsumerMetrics.snapshot`, which the consumer stores periodically through
``store.record_consumer_stat`` for the dashboard's throughput / lag view.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from lineinspect.settings import Settings

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ConsumerMetrics:
    """Counters, histograms and gauges of one consumer; thread-safe."""

    def __init__(self, settings: Settings | None = None, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.frames = Counter("lineinspect_frames", "Frames scored and stored", ["product", "verdict"], registry=r)
        self.fps = Gauge("lineinspect_frames_per_second", "Stored frames per second (last interval)", registry=r)
        self.batch = Histogram("lineinspect_batch_size", "Frames per consumed batch", buckets=BATCH_BUCKETS, registry=r)
        self.latency = Histogram("lineinspect_latency_seconds", "Capture to stored", buckets=LATENCY_BUCKETS, registry=r)
        self.infer = Histogram("lineinspect_infer_seconds", "Engine time per product batch", buckets=LATENCY_BUCKETS, registry=r)
        self.lag_g = Gauge("lineinspect_consumer_lag", "Uncommitted records on the assigned partitions", registry=r)
        self.dlq = Counter("lineinspect_dlq", "Records sent to the dead-letter topic", ["reason"], registry=r)
        self.engine_errors = Counter("lineinspect_engine_errors", "Engine failures (retried)", registry=r)
        self.store_errors = Counter("lineinspect_store_errors", "Result store failures (retried)", registry=r)
        self.cache_errors = Counter("lineinspect_cache_errors", "Cache failures (not retried)", registry=r)
        self.redelivery_conflicts = Counter("lineinspect_redelivery_conflicts", "Redelivered (camera, frame id) "
                                            "with a different image (first row kept)", registry=r)
        self.models_held = Gauge("lineinspect_models_held", "1 while a product's active model fails verification "
                                 "and its frames are held", ["product"], registry=r)
        self._held: set[str] = set()
        self.host = settings.metrics_host if settings else "127.0.0.1"
        self.port = settings.metrics_port if settings else 0
        self._lock = threading.Lock()
        self._interval_start = time.monotonic()
        self._interval_frames = 0
        self._interval_batches: list[int] = []
        self._latencies_ms: deque[float] = deque(maxlen=5000)
        self._dlq_total = 0
        self._lag = 0
        self.engine_ok = True
        self._server: tuple[Any, threading.Thread] | None = None  # (WSGIServer, serving thread)

    # --- observations -------------------------------------------------------------------
    def observe_batch(self, size: int) -> None:
        self.batch.observe(size)
        with self._lock:
            self._interval_batches.append(size)

    def observe_stored(self, product: str, verdicts: list[str], latencies_s: list[float]) -> None:
        for v in verdicts:
            self.frames.labels(product=product, verdict=v).inc()
        for s in latencies_s:
            self.latency.observe(max(0.0, s))
        with self._lock:
            self._interval_frames += len(verdicts)
            self._latencies_ms.extend(max(0.0, s) * 1000.0 for s in latencies_s)

    def observe_infer(self, seconds: float) -> None:
        self.infer.observe(seconds)
        self.engine_ok = True

    def dead_lettered(self, reason: str) -> None:
        self.dlq.labels(reason=reason).inc()
        with self._lock:
            self._dlq_total += 1

    def engine_error(self) -> None:
        self.engine_errors.inc()
        self.engine_ok = False

    def set_held(self, held: dict[str, str]) -> None:
        """Products whose frames are held (inference.router.ModelHeld): 1, cleared to 0 on recovery."""
        for product in self._held - set(held):
            self.models_held.labels(product).set(0)
        for product in held:
            self.models_held.labels(product).set(1)
        self._held = set(held)

    def set_lag(self, lag_by_partition: dict[int, int]) -> None:
        total = int(sum(lag_by_partition.values()))
        self.lag_g.set(total)
        with self._lock:
            self._lag = total

    # --- snapshots ------------------------------------------------------------------------
    def snapshot(self) -> dict:
        """Figures since the previous snapshot (frames, seconds, mean batch, p50/p99 latency), resetting them."""
        with self._lock:
            now = time.monotonic()
            seconds = max(1e-6, now - self._interval_start)
            lat = np.asarray(self._latencies_ms, dtype=np.float64)
            snap = {
                "frames": self._interval_frames,
                "seconds": seconds,
                "mean_batch": float(np.mean(self._interval_batches)) if self._interval_batches else 0.0,
                "p50_latency_ms": float(np.percentile(lat, 50)) if lat.size else 0.0,
                "p99_latency_ms": float(np.percentile(lat, 99)) if lat.size else 0.0,
                "lag": self._lag,
                "dlq_total": self._dlq_total,
                "engine_ok": self.engine_ok,
            }
            self.fps.set(self._interval_frames / seconds)
            self._interval_start = now
            self._interval_frames = 0
            self._interval_batches = []
            self._latencies_ms.clear()
            return snap

    # --- HTTP -------------------------------------------------------------------------------
    def start_http(self) -> int | None:
        """Serve ``/metrics`` on ``metrics_host:metrics_port`` when the port is > 0; returns the port."""
        if self.port <= 0 or self._server is not None:
            return None
        from prometheus_client import start_http_server

        self._server = start_http_server(self.port, addr=self.host, registry=self.registry)
        return self.port

    def close(self) -> None:
        if self._server is not None:
            server, _thread = self._server
            server.shutdown()
            self._server = None
