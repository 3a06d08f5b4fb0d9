"""``lineinspect consume`` (``export`` / ``serve-triton`` are registered by :mod:`deploy.cli`)."""

from __future__ import annotations

import argparse
import logging

from lineinspect.logs import kv
from lineinspect.settings import Settings

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("consume", help="run a batching inference consumer (bus -> engine -> database + cache)",
                       description="Consume frames in batches, score them with each product's active model, store "
                                   "results (PostgreSQL/SQLite) and the live view (Redis), then commit. Run several "
                                   "with the same --group to share the partitions. SIGTERM finishes the batch in hand.")
    p.add_argument("--bus", default=None, help="kafka://host:port (env LINEINSPECT_BUS_URL)")
    p.add_argument("--engine", default=None, help="local://auto|onnx|onnx-int8|openvino|torch, zero-shot://grnr, triton-grpc://host:port")
    p.add_argument("--db", default=None, help="database URL (env LINEINSPECT_DB_URL)")
    p.add_argument("--cache", default=None, help="redis://host:port/0 or memory:// (env LINEINSPECT_CACHE_URL)")
    p.add_argument("--group", default=None, help="consumer group (env LINEINSPECT_CONSUMER_GROUP)")
    p.add_argument("--topic", default=None, help="frames topic (env LINEINSPECT_TOPIC_FRAMES)")
    p.add_argument("--batch", type=int, default=None, help="max records per batch (env LINEINSPECT_BATCH_MAX_RECORDS)")
    p.add_argument("--batch-wait-ms", type=int, default=None, help="max wait to fill a batch")
    p.add_argument("--metrics-port", type=int, default=None, help="Prometheus /metrics port (0 = off)")
    p.add_argument("--max-frames", type=int, default=None, help="exit after N records (default: run until stopped)")
    p.add_argument("--idle-timeout", type=float, default=None, help="exit after N seconds without records")
    p.add_argument("--no-pipeline", action="store_true",
                   help="store each batch before scoring the next (default: a sink thread stores batch k while "
                        "batch k+1 is scored; commits always follow the store)")
    p.set_defaults(func=run_consume)


def run_consume(args: argparse.Namespace, settings: Settings) -> int:
    from inference.pipeline import build_pipeline

    settings = settings.with_overrides(
        bus_url=args.bus, engine_url=args.engine, db_url=args.db, cache_url=args.cache,
        consumer_group=args.group, topic_frames=args.topic, batch_max_records=args.batch,
        batch_max_wait_ms=args.batch_wait_ms, metrics_port=args.metrics_port)
    pipe = build_pipeline(settings, pipelined=not args.no_pipeline)
    consumer = pipe.consumer
    consumer.install_signal_handlers()
    log.info("consumer started", extra=kv(name=consumer.name, group=settings.consumer_group, topic=settings.topic_frames,
                                          engine=settings.engine_url, metrics_port=settings.metrics_port))
    with pipe:
        n = consumer.run(max_frames=args.max_frames, idle_timeout_s=args.idle_timeout)
    log.info("consumer stopped", extra=kv(handled=n, stored=consumer.stored, dead_lettered=consumer.dead_lettered))
    return 0
