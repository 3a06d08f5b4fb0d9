"""The embedded line the retrain and drift flow tests share: a store with a first version trained
from seed images through the scheduler, then a consumer + router running in the background on a
memory bus, fed by a frame publisher. One setup, so the two flows differ only in what they check."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inference.consumer import InferenceConsumer, PostStore
from inference.router import ModelRouter
from inference.telemetry import ConsumerMetrics
from ingest.bus.memory import MemoryBus, MemoryConsumer, MemoryPublisher
from ingest.publisher import FramePublisher
from ingest.simulator import LineSimulator
from lineinspect.settings import Settings
from storage.registry import ModelRegistry
from storage.store import ResultStore
from tests.training.test_retrain import tiny_model
from training.gate import GatePolicy
from training.retrain import RetrainOptions, import_seed
from training.scheduler import Schedule, Scheduler

PRODUCT, CAMERA = "widget", "cam-1"


def wait_for(cond: Callable[[], bool], timeout_s: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@dataclass
class Seeded:
    """A store whose product has v0001, trained and promoted by the scheduler from 16 seed images."""

    settings: Settings
    store: ResultStore
    registry: ModelRegistry
    scheduler: Scheduler
    sim: LineSimulator  # the live line's frames (10 % defects, seed 7)


def seeded_line(tmp_path: Path, db_url: str, **settings: Any) -> Seeded:
    """Settings (plus ``settings`` overrides), store, registry and scheduler; v0001 is active."""
    s = Settings(home=tmp_path, engine_url="local://torch", batch_max_records=8, batch_max_wait_ms=20,
                 topic_frames="frames", topic_dlq="frames.dlq", keep_normal_margin=0.95, threads=1, **settings)
    store = ResultStore.open(db_url, normal_cap=200)
    registry = ModelRegistry(store, tmp_path / "models")
    # These tests are about plumbing, so the gate is loose: the gate half of the held-back slice is a
    # handful of images (one image = a 10-20 % FPR step) and the model is a tiny random-feature one.
    # The gate's tolerances and a real refusal are tested in tests/training/test_gate.py / test_retrain.py.
    opts = RetrainOptions(iters=8, holdout=0.4, min_samples=12, model=tiny_model(), progress=False, threads=1,
                          train_overrides={"batch_size": 4}, policy=GatePolicy(max_fpr=0.6, fpr_tolerance=1.0))
    seeds = tmp_path / "seeds"
    LineSimulator(PRODUCT, size=(128, 128), seed=99).write_mvtec(seeds, 16, 0, 0)
    assert import_seed(store, PRODUCT, seeds) == (16, 0)
    scheduler = Scheduler(store, registry, Schedule(min_new=16, backoff_s=0), opts)
    assert [o.status for o in scheduler.tick()] == ["ok"]
    assert registry.active(PRODUCT).version == "v0001"
    return Seeded(s, store, registry, scheduler, LineSimulator(PRODUCT, size=(128, 128), defect_rate=0.1, seed=7))


@dataclass
class Running:
    router: ModelRouter
    consumer: InferenceConsumer
    thread: threading.Thread
    pub: FramePublisher


@contextmanager
def running_consumer(line: Seeded, metrics: ConsumerMetrics | None = None,
                     post_store: Sequence[PostStore] = ()) -> Iterator[Running]:
    """The live line for the whole ``with`` block; on exit the consumer stops and router and store close."""
    settings = line.settings
    bus = MemoryBus(partitions=2)
    router = ModelRouter(settings, line.registry, poll_s=0.2)
    consumer = InferenceConsumer(settings, MemoryConsumer(bus, settings.topic_frames, "g", settings.topic_dlq),
                                 router, line.store, None, metrics or ConsumerMetrics(settings),
                                 backoff_initial_s=0.01, post_store=list(post_store))
    thread = threading.Thread(target=consumer.run, name="consumer", daemon=True)
    thread.start()
    pub = FramePublisher(settings, PRODUCT, "L1", CAMERA, MemoryPublisher(bus, settings.topic_frames),
                         first_frame_id=0, encoding="png")
    try:
        yield Running(router, consumer, thread, pub)
    finally:
        consumer.request_stop()
        thread.join(timeout=10)
        consumer.close()
        router.close()
        line.store.close()
