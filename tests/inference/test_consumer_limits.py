"""Consumer edge cases: raw frames over max_message_bytes, --idle-timeout across a rebalance, reused frame ids."""

from __future__ import annotations

import threading
import time

import numpy as np

from inference.consumer import InferenceConsumer
from inference.telemetry import ConsumerMetrics
from ingest.bus.memory import MemoryBus, MemoryConsumer, MemoryPublisher
from ingest.envelope import FrameEnvelope, encode_image
from lineinspect.settings import Settings
from storage.store import ResultStore
from tests.inference.test_consumer import FakeEngine, frame, make, publish


def test_a_raw_frame_slightly_over_the_limit_is_dead_lettered_oversized(settings: Settings,
                                                                       store: ResultStore) -> None:
    settings = settings.model_copy(update={"max_message_bytes": 8000})
    bus = MemoryBus(partitions=1)
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    env = FrameEnvelope("widget", "L1", "cam-1", 1, encode_image(noise, "png"), "png", (64, 64, 3))
    key, value, headers = env.to_message()
    assert 8000 < len(value) < 8000 + 64 * 1024  # inside the broker's framing headroom
    bus.produce(settings.topic_frames, key, value, headers)  # as a broker with headroom would accept it
    publish(bus, settings, 3, first=2)
    c = make(settings, bus, store)
    assert c.run(max_frames=4, idle_timeout_s=2) == 4
    c.close()
    reasons = [dict(r.headers)["li-dlq-reason"].decode() for r in bus.records(settings.topic_dlq)]
    assert reasons == ["oversized"] and store.count_results() == 3
    assert bus.committed("g", settings.topic_frames) == {0: 4}


class RebalancingConsumer(MemoryConsumer):
    """Holds no partitions (a rebalance in progress) until ``assigned`` is set."""

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.assigned = threading.Event()

    def assignment(self) -> list[int]:
        return super().assignment() if self.assigned.is_set() else []

    def poll_batch(self, max_records: int, max_wait_ms: int):
        if not self.assigned.is_set():
            time.sleep(max_wait_ms / 1000)
            return []
        return super().poll_batch(max_records, max_wait_ms)


def test_idle_timeout_does_not_count_time_without_partitions(settings: Settings, store: ResultStore) -> None:
    bus = MemoryBus(partitions=1)
    publish(bus, settings, 6)
    consumer = RebalancingConsumer(bus, settings.topic_frames, "g", settings.topic_dlq)
    c = InferenceConsumer(settings, consumer, FakeEngine(), store, None, ConsumerMetrics(settings),
                          backoff_initial_s=0.01, backoff_max_s=0.05)
    handled: list[int] = []
    t = threading.Thread(target=lambda: handled.append(c.run(idle_timeout_s=0.2)))
    t.start()
    time.sleep(0.7)  # several idle timeouts long, with frames waiting
    assert t.is_alive(), "the consumer idled out during a rebalance with frames waiting"
    consumer.assigned.set()
    t.join(10)
    assert not t.is_alive() and handled == [6] and store.count_results() == 6
    c.close()


def test_the_consumer_counts_reused_frame_ids(settings: Settings, store: ResultStore) -> None:
    """A redelivered (camera, frame id) with a different image: first row kept, logged and counted."""
    bus = MemoryBus(partitions=1)
    pub = MemoryPublisher(bus, settings.topic_frames)
    for ts, level in ((100.0, 20), (200.0, 90)):  # the camera restarted and reused frame id 1
        env = FrameEnvelope("widget", "L1", "cam-1", 1, encode_image(frame(level), "png"), "png", (64, 64, 3), ts)
        pub.publish(*env.to_message())
    metrics = ConsumerMetrics(settings)
    c = make(settings, bus, store, pipelined=False)
    c.metrics = metrics
    assert c.run(max_frames=2, idle_timeout_s=1) == 2
    c.close()
    assert store.count_results() == 1
    assert metrics.registry.get_sample_value("lineinspect_redelivery_conflicts_total") == 1.0
