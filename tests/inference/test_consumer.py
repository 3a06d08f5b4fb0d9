"""InferenceConsumer on the memory bus with a deterministic fake engine, SQLite and MemoryCache."""

from __future__ import annotations

import threading
import time

import numpy as np

from inference.consumer import InferenceConsumer
from inference.engines.base import EngineOutput, EngineUnavailable, UnknownProduct
from inference.telemetry import ConsumerMetrics
from ingest.bus.memory import MemoryBus, MemoryConsumer, MemoryPublisher
from ingest.publisher import FramePublisher
from lineinspect.errors import ServiceUnavailable
from lineinspect.settings import Settings
from storage.memory_cache import MemoryCache
from storage.store import ResultStore

THRESHOLD = 0.5


class FakeEngine:
    """Score = mean red level / 255; map = red channel at 1/4 resolution / 255 (deterministic)."""

    name = "fake"

    def __init__(self, products: tuple[str, ...] = ("widget", "gear")) -> None:
        self.products = products
        self.calls: list[int] = []

    def infer(self, product: str, images: list[np.ndarray]) -> EngineOutput:
        if product not in self.products:
            raise UnknownProduct(product, list(self.products))
        self.calls.append(len(images))
        maps = np.stack([im[::4, ::4, 0].astype(np.float32)[:16, :16] / 255.0 for im in images])
        scores = np.array([im[:, :, 0].mean() / 255.0 for im in images], np.float32)
        return EngineOutput(scores, maps, "v0001", THRESHOLD, infer_ms=1.0)

    def close(self) -> None:
        pass


def frame(level: int, defect: bool = False) -> np.ndarray:
    img = np.full((64, 64, 3), level, np.uint8)
    if defect:
        img[:, :, 0] = 250
    return img


def publish(bus: MemoryBus, settings: Settings, n: int, camera: str = "cam-1", product: str = "widget",
            defect_every: int = 3, first: int = 1000) -> list[int]:
    pub = FramePublisher(settings, product, "L1", camera, MemoryPublisher(bus, settings.topic_frames),
                         first_frame_id=first, encoding="png")
    defects = []
    for i in range(n):
        d = i % defect_every == 0
        env = pub.publish(frame(20 + i, defect=d))
        if d:
            defects.append(env.frame_id)
    return defects


def make(settings: Settings, bus: MemoryBus, store, engine=None, cache=None, **kw) -> InferenceConsumer:
    return InferenceConsumer(settings, MemoryConsumer(bus, settings.topic_frames, "g", settings.topic_dlq),
                             engine or FakeEngine(), store, cache, ConsumerMetrics(settings),
                             backoff_initial_s=0.01, backoff_max_s=0.05, **kw)


def test_one_row_per_frame_with_masks_and_cache(settings: Settings, store: ResultStore) -> None:
    bus = MemoryBus(partitions=3)
    defects = publish(bus, settings, 10)
    publish(bus, settings, 5, camera="cam-2", product="gear", first=1)
    cache = MemoryCache()
    c = make(settings, bus, store, cache=cache)
    assert c.run(max_frames=15, idle_timeout_s=2) == 15
    rows = store.results_for_camera("cam-1")
    assert sorted(r["frame_id"] for r in rows) == list(range(1000, 1010))
    flagged = {r["frame_id"] for r in rows if r["verdict"] == "defect"}
    assert flagged == set(defects)
    assert store.count_results() == 15
    mask_row = store.get_result("cam-1", defects[0])
    assert mask_row is not None
    assert sum(n for _, n, _ in cache.counters("widget", "L1", minutes=5)) == 10
    assert cache.latest("cam-2")["frame_id"] == 5
    assert sum(bus.committed("g", "frames").values()) == 15
    # clearly normal frames became training samples (all published within a second on one camera: one of
    # them, keep_normal_every_s = 1); defect frames did not
    assert store.count_training_samples("widget") == 1
    c.close()


def _publish_at(bus: MemoryBus, settings: Settings, times: list[float], camera: str = "cam-1", level: int = 20) -> None:
    pub = FramePublisher(settings, "widget", "L1", camera, MemoryPublisher(bus, settings.topic_frames), encoding="png")
    for i, t in enumerate(times):
        pub.publish(frame(level + i), capture_ts=t)   # clearly normal (score < 0.8 x threshold), distinct images


def test_clear_normals_become_samples_at_most_once_per_camera_per_interval(settings: Settings,
                                                                           store: ResultStore) -> None:
    bus = MemoryBus(partitions=1)
    t0 = 1_700_000_000.0
    _publish_at(bus, settings, [t0 + 0.25 * i for i in range(12)])            # 3 s of a 4 frames/s camera
    _publish_at(bus, settings, [t0 + 0.25 * i for i in range(4)], camera="cam-2", level=60)
    c = make(settings, bus, store)
    assert c.run(max_frames=16, idle_timeout_s=2) == 16
    samples = store.training_samples("widget")
    assert len(samples) == 4               # cam-1 at t0, t0 + 1, t0 + 2; cam-2 at t0
    assert store.count_results() == 16     # every frame still stored as a result
    c.close()


def test_zero_interval_keeps_every_clear_normal(tmp_path, store: ResultStore) -> None:
    s = Settings(home=tmp_path, batch_max_records=4, batch_max_wait_ms=20, topic_frames="frames",
                 topic_dlq="frames.dlq", keep_normal_margin=0.8, keep_normal_every_s=0)
    bus = MemoryBus(partitions=1)
    _publish_at(bus, s, [1_700_000_000.0 + 0.01 * i for i in range(6)])
    c = make(s, bus, store)
    assert c.run(max_frames=6, idle_timeout_s=2) == 6
    assert store.count_training_samples("widget") == 6
    c.close()


def test_poison_and_unknown_product_go_to_the_dlq_and_are_committed(settings: Settings, store: ResultStore) -> None:
    bus = MemoryBus(partitions=2)
    publish(bus, settings, 3)
    raw = MemoryPublisher(bus, settings.topic_frames)
    raw.publish(b"cam-1", b"not an image", [("li-v", b"2")])  # no li-meta
    publish(bus, settings, 2, camera="cam-9", product="unknown-thing", first=1)
    c = make(settings, bus, store)
    assert c.run(max_frames=6, idle_timeout_s=2) == 6
    assert store.count_results() == 3
    reasons = sorted(dict(r.headers)["li-dlq-reason"].decode() for r in bus.records(settings.topic_dlq))
    assert reasons == ["bad_envelope", "unknown_product", "unknown_product"]
    assert sum(bus.committed("g", "frames").values()) == 6
    assert c.dead_lettered == 3
    c.close()


class FailingStore:
    def __init__(self, real: ResultStore, failures: int) -> None:
        self.real, self.failures, self.calls = real, failures, 0

    def save_results(self, rows):
        self.calls += 1
        if self.calls <= self.failures:
            raise ServiceUnavailable("postgresql", "postgresql://db", "connection refused")
        return self.real.save_results(rows)


def test_store_outage_blocks_commit_then_recovers(settings: Settings, store: ResultStore) -> None:
    bus = MemoryBus(partitions=1)
    publish(bus, settings, 4)
    failing = FailingStore(store, failures=10**9)
    c = make(settings, bus, failing)
    t = threading.Thread(target=c.run, kwargs={"max_frames": 4})
    t.start()
    deadline = time.monotonic() + 5
    while failing.calls < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert failing.calls >= 3 and bus.committed("g", "frames") == {}
    c.request_stop()
    t.join(5)
    assert not t.is_alive() and bus.committed("g", "frames") == {} and store.count_results() == 0
    c.close()  # leaves the group; the batch is redelivered to the next consumer
    c2 = make(settings, bus, FailingStore(store, failures=2))
    assert c2.run(max_frames=4, idle_timeout_s=2) == 4
    assert store.count_results() == 4 and bus.committed("g", "frames") == {0: 4}
    c2.close()


def test_redelivery_is_harmless(settings: Settings, store: ResultStore) -> None:
    bus = MemoryBus(partitions=2)
    publish(bus, settings, 6)
    cache = MemoryCache()
    c = make(settings, bus, store, cache=cache)
    batch = c.bus.poll_batch(6, 50)
    c.process(batch)
    c.process(batch)  # the same records again (a replay after a rebalance)
    assert store.count_results() == 6
    assert sum(n for _, n, _ in cache.counters("widget", "L1", minutes=5)) == 6
    c.close()


class FlakyEngine(FakeEngine):
    def __init__(self, unavailable: int = 0, bad_level: int | None = None) -> None:
        super().__init__()
        self.unavailable, self.bad_level = unavailable, bad_level

    def infer(self, product, images):
        if self.unavailable > 0:
            self.unavailable -= 1
            raise EngineUnavailable("triton is restarting")
        if self.bad_level is not None and any(int(im[0, 0, 1]) == self.bad_level for im in images):
            raise RuntimeError("engine crashed on this frame")
        return super().infer(product, images)


def test_engine_outage_is_waited_out_and_a_frame_that_always_fails_is_isolated(settings: Settings, store: ResultStore) -> None:
    bus = MemoryBus(partitions=1)
    publish(bus, settings, 4, defect_every=100)
    c = make(settings, bus, store, engine=FlakyEngine(unavailable=3, bad_level=22))
    assert c.run(max_frames=4, idle_timeout_s=2) == 4
    assert store.count_results() == 3
    (dlq,) = bus.records(settings.topic_dlq)
    assert dict(dlq.headers)["li-dlq-reason"] == b"engine_error"
    assert c.metrics.engine_errors._value.get() >= 3
    c.close()


def test_cache_failure_does_not_block_the_commit(settings: Settings, store: ResultStore) -> None:
    class BrokenCache:
        def record_results(self, results):
            raise ConnectionError("redis down")

    bus = MemoryBus(partitions=1)
    publish(bus, settings, 3)
    c = make(settings, bus, store, cache=BrokenCache())
    assert c.run(max_frames=3, idle_timeout_s=2) == 3
    assert store.count_results() == 3 and bus.committed("g", "frames") == {0: 3}
    c.close()


def test_two_consumers_share_the_work_and_a_crash_loses_nothing(settings: Settings, store: ResultStore) -> None:
    bus = MemoryBus(partitions=4)
    for cam in range(6):
        publish(bus, settings, 8, camera=f"cam-{cam}")
    a, b = make(settings, bus, store), make(settings, bus, store)
    batch = a.bus.poll_batch(4, 50)
    a.close()  # crash mid-batch: nothing committed, its partitions move to b
    assert batch
    assert b.run(idle_timeout_s=0.5) == 48
    assert store.count_results() == 48
    snap = store.consumer_stats()
    assert snap and snap[0]["frames"] > 0
    b.close()


class SizedEngine(FakeEngine):
    """A fake engine that says its model input size (or None, like tiling) and records what it got."""

    def __init__(self, hw: tuple[int, int] | None) -> None:
        super().__init__()
        self.hw = hw
        self.shapes: list[tuple[int, ...]] = []

    def decode_hw(self, product: str) -> tuple[int, int] | None:
        return self.hw

    def infer(self, product: str, images: list[np.ndarray]) -> EngineOutput:
        self.shapes.extend(im.shape for im in images)
        return super().infer(product, [np.atleast_3d(im) if im.ndim == 3 else np.stack([im] * 3, 2) for im in images])


def _publish_jpeg(bus: MemoryBus, settings: Settings, img: np.ndarray, n: int = 3) -> None:
    pub = FramePublisher(settings, "widget", "L1", "cam-1", MemoryPublisher(bus, settings.topic_frames),
                         first_frame_id=1, encoding="jpeg")
    for _ in range(n):
        pub.publish(img)


def test_frames_are_decoded_at_the_engine_size_and_rows_keep_the_frame_geometry(settings: Settings,
                                                                                   store: ResultStore) -> None:
    bus = MemoryBus(partitions=1)
    big = np.full((640, 800, 3), 200, np.uint8)
    big[:, :, 0] = 250
    _publish_jpeg(bus, settings, big)
    eng = SizedEngine((32, 32))
    c = make(settings, bus, store, engine=eng)
    assert c.run(max_frames=3, idle_timeout_s=2) == 3
    assert eng.shapes == [(32, 32, 3)] * 3          # 1/8 DCT decode (80x100) then one area resize
    row = store.get_result("cam-1", 1)
    assert row is not None and (row["width"], row["height"]) == (800, 640)  # the camera frame's geometry
    c.close()


def test_tiling_engines_get_full_resolution_and_mono_stays_one_channel(settings: Settings,
                                                                         store: ResultStore) -> None:
    bus = MemoryBus(partitions=1)
    _publish_jpeg(bus, settings, np.full((240, 320, 3), 90, np.uint8), n=2)
    tiled = SizedEngine(None)
    c = make(settings, bus, store, engine=tiled)
    assert c.run(max_frames=2, idle_timeout_s=2) == 2
    assert tiled.shapes == [(240, 320, 3)] * 2
    c.close()
    bus2 = MemoryBus(partitions=1)
    pub = FramePublisher(settings, "widget", "L1", "cam-9", MemoryPublisher(bus2, settings.topic_frames),
                         first_frame_id=1, encoding="jpeg")
    pub.publish(np.full((240, 320), 90, np.uint8))
    mono = SizedEngine((24, 24))
    c2 = make(settings, bus2, store, engine=mono)
    assert c2.run(max_frames=1, idle_timeout_s=2) == 1
    assert mono.shapes == [(24, 24)]                 # a grayscale JPEG reaches the engine as one channel
    c2.close()
