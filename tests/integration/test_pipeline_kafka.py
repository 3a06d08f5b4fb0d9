"""Real services end to end: real frames -> Kafka -> two consumers in one group -> PostgreSQL + Redis.

One consumer stops mid-run (a rebalance); every frame must still have exactly one result row,
masks must round-trip, Redis counters must match the database and poison messages must sit in
the dead-letter topic with their reason headers. The engine is a cheap deterministic fake (the
test is about the pipeline, not the model).
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections import Counter

import cv2
import numpy as np
import pytest

from inference.consumer import InferenceConsumer
from inference.engines.base import EngineOutput
from inference.telemetry import ConsumerMetrics
from ingest.bus import open_consumer, open_publisher
from ingest.publisher import FramePublisher
from lineinspect.settings import Settings
from storage import open_store
from storage.redis_cache import RedisCache
from tests.integration.conftest import real_test_images

pytestmark = [pytest.mark.integration, pytest.mark.realdata, pytest.mark.timeout(300)]

PER_CATEGORY = 10
THRESHOLD = 0.5


class BrightnessEngine:
    """Score = share of pixels brighter than the frame's 90th percentile + 0.1 on a 32x32 map (deterministic)."""

    name = "fake"

    def infer(self, product: str, images: list[np.ndarray]) -> EngineOutput:
        maps = []
        for im in images:
            g = cv2.resize(cv2.cvtColor(im, cv2.COLOR_RGB2GRAY), (32, 32)).astype(np.float32) / 255.0
            maps.append(g)
        maps_a = np.stack(maps)
        scores = np.array([float(m.max() - np.median(m)) for m in maps_a], np.float32)
        return EngineOutput(scores, maps_a, "v0001", THRESHOLD, infer_ms=0.5)

    def close(self) -> None:
        pass


def _camera_on_partition(stem: str, partition: int, partitions: int) -> str:
    """A camera id whose Kafka key lands on ``partition`` (the producer's murmur2 partitioner), so
    the test knows where every frame is: one category per partition, both consumers get data."""
    from kafka.partitioner.default import murmur2

    for k in range(10_000):
        cam = f"{stem}-{k}"
        if (murmur2(cam.encode()) & 0x7FFFFFFF) % partitions == partition:
            return cam
    raise AssertionError("no camera id found for the partition")


def _stall_report(handled: dict, threads: dict[str, threading.Thread], consumers: dict[str, InferenceConsumer]) -> str:
    """What each consumer was doing when the frames stopped arriving (for a failure message)."""
    frames = sys._current_frames()
    out = [f"handled={handled}"]
    for name, t in threads.items():
        c = consumers[name]
        out.append(f"consumer {name}: alive={t.is_alive()} assignment={c.bus.assignment() if not c._closed else 'closed'}"
                   f" stored={c.stored} dead_lettered={c.dead_lettered}")
        if t.is_alive() and t.ident in frames:
            out.append("".join(traceback.format_stack(frames[t.ident])[-12:]))
    return "\n".join(out)


def _holds_partitions(c: InferenceConsumer) -> bool:
    """Whether a consumer running on another thread holds partitions (its listener's set, read racily)."""
    try:
        return bool(c.bus.assignment())
    except RuntimeError:  # the set changed size while it was being copied: ask again
        return False


def _consumer(settings: Settings, run_id: str) -> InferenceConsumer:
    store = open_store(settings)
    cache = RedisCache(settings.cache_url, ttl_s=600, stream_maxlen=1000, prefix=f"li-it-{run_id}:")
    return InferenceConsumer(settings, open_consumer(settings), BrightnessEngine(), store, cache,
                             ConsumerMetrics(settings), stat_interval_s=1.0, backoff_initial_s=0.1, backoff_max_s=1.0)


def test_two_consumers_rebalance_exactly_one_row_per_frame(real_data, pipeline_settings: Settings, run_id: str) -> None:
    s = pipeline_settings
    frames = real_test_images(real_data, PER_CATEGORY)
    assert len(frames) >= 20
    pub_bus = open_publisher(s)
    published: dict[tuple[str, int], tuple[str, tuple[int, int]]] = {}
    cats = sorted({c for c, _ in frames})
    assert len(cats) <= s.topic_partitions
    pubs = {cat: FramePublisher(s, cat, "L1", _camera_on_partition(f"cam-{cat}-{run_id}", i, s.topic_partitions),
                                pub_bus, first_frame_id=1, encoding="jpeg")
            for i, cat in enumerate(cats)}
    total = len(frames) + 2
    a, b = _consumer(s, run_id), _consumer(s, run_id)
    handled = {"a": 0, "b": 0, "lost_in_a": 0}
    t0 = time.perf_counter()

    def run_a() -> None:
        # Stop after a quarter of the stream (a owns half the partitions, one category each, so it
        # has data): the group rebalances and b takes over a's partitions.
        try:
            handled["a"] = a.run(max_frames=max(1, total // 4), idle_timeout_s=20)
            in_hand = a.bus.poll_batch(4, 2000)  # fetched, never stored or committed: a crash mid-batch
            handled["lost_in_a"] = len(in_hand)
        finally:
            a.close()  # leaves the group; a member that never leaves would hold up the rebalance

    def run_b() -> None:
        handled["b"] = b.run(idle_timeout_s=120)

    ta, tb = threading.Thread(target=run_a), threading.Thread(target=run_b)
    ta.start()
    tb.start()
    # Frames are published only once both consumers hold partitions: a consumer that joins first is given
    # every partition and can drain this small stream before the other joins (a CI run saw b store all 42
    # records 0.6 s before a's first assignment, leaving a nothing to do), which is not what this test is about.
    join_deadline = time.monotonic() + 60
    while not (_holds_partitions(a) and _holds_partitions(b)) and time.monotonic() < join_deadline:
        time.sleep(0.05)
    assert _holds_partitions(a) and _holds_partitions(b), "the two consumers did not both join the group in 60 s"
    t_pub = time.perf_counter()
    for cat, path in frames:
        img = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        env = pubs[cat].publish(img)
        published[(env.camera, env.frame_id)] = (cat, img.shape[:2])
    # poison: no envelope header, and a valid envelope around bytes that are not an image
    pub_bus.publish(b"cam-poison", b"hello", [("li-v", b"2")])
    bad = FramePublisher(s, "tire", "L1", f"cam-poison-{run_id}", pub_bus, first_frame_id=1).envelope(np.zeros((32, 32, 3), np.uint8))
    key, _value, headers = bad.to_message()
    pub_bus.publish(key, b"\xff\xd8 not really a jpeg", headers)
    pub_bus.flush(30)
    pub_bus.close()
    publish_s = time.perf_counter() - t_pub
    assert total == len(published) + 2
    watch = open_store(s, migrate=False)
    deadline = time.monotonic() + 150
    while watch.count_results() < len(published) and time.monotonic() < deadline:
        time.sleep(0.2)
    stall = "" if watch.count_results() >= len(published) else _stall_report(handled, {"a": ta, "b": tb}, {"a": a, "b": b})
    elapsed = time.perf_counter() - t0
    time.sleep(2.0)  # let b finish its last batch (the DLQ copies) and show any duplicate it would write
    watch.close()
    ta.join(60)
    b.request_stop()
    tb.join(60)
    assert not ta.is_alive() and not tb.is_alive()
    b.close()

    store = open_store(s, migrate=False)
    try:
        # exactly one row per published frame, none extra
        assert store.count_results() == len(published), stall
        for cam in {c for c, _ in published}:
            ids = [r["frame_id"] for r in store.results_for_camera(cam)]
            assert len(ids) == len(set(ids))
            assert set(ids) == {f for c, f in published if c == cam}
        # masks are stored at the engine's map resolution; the row records the frame's geometry
        defects = []
        for cam in {c for c, _ in published}:
            defects += [(cam, r["frame_id"]) for r in store.results_for_camera(cam) if r["verdict"] == "defect"]
        assert defects, "the fake engine should flag some frames"
        for cam, fid in defects[:5]:
            row = store.get_result(cam, fid)
            mask = cv2.imdecode(np.frombuffer(row["mask_png"], np.uint8), cv2.IMREAD_UNCHANGED)
            fh, fw = published[(cam, fid)][1][:2]
            assert (row["height"], row["width"]) == (fh, fw)
            n = int((mask == 255).sum())
            assert row["defect_area_px"] == round(n * fh * fw / (mask.shape[0] * mask.shape[1]))
            assert row["frame_bytes"] is not None
        # Redis counters match the database, per product
        cache = RedisCache(s.cache_url, ttl_s=600, stream_maxlen=1000, prefix=f"li-it-{run_id}:")
        per_product = Counter(cat for cat, _ in published.values())
        for product, n in per_product.items():
            counted = cache.counters(product, "L1", minutes=30)
            assert sum(i for _, i, _ in counted) == n == store.count_results(product)
        cache.close()
        stats = store.consumer_stats()
        assert stats
    finally:
        store.close()

    # poison frames are in the DLQ with reason headers
    from kafka import KafkaConsumer

    dlq = KafkaConsumer(s.topic_dlq, bootstrap_servers=s.kafka_bootstrap, auto_offset_reset="earliest",
                        enable_auto_commit=False, consumer_timeout_ms=5000, group_id=None)
    # Dead letters are at least once, like the results: a batch dead-lettered and then revoked before its commit
    # is redelivered and dead-lettered again. The li-src-* headers identify the source record, so one copy per
    # source record is what counts, and every copy must give the same reason.
    copies: dict[tuple[bytes, bytes], set[str]] = {}
    for m in dlq:
        h = dict(m.headers)
        copies.setdefault((h["li-src-partition"], h["li-src-offset"]), set()).add(h["li-dlq-reason"].decode())
    dlq.close()
    assert all(len(r) == 1 for r in copies.values()), copies
    assert sorted(next(iter(r)) for r in copies.values()) == ["bad_envelope", "undecodable"]
    assert handled["a"] >= 1 and handled["a"] + handled["b"] >= total
    print(f"\npipeline: {len(published)} real frames + 2 poison, published in {publish_s:.2f} s; "
          f"2 consumers (one crashed after {handled['a']} with {handled['lost_in_a']} in hand) stored all in "
          f"{elapsed:.1f} s = {len(published) / elapsed:.1f} frames/s including group joins and the rebalance")
