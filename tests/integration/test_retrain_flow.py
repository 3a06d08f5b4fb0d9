"""End to end, embedded (SQLite + memory bus): live frames accumulate normal data, the scheduler
retrains, the gate promotes, and the *running* consumer scores new frames with the new version.

No services are needed, so this runs in the default test suite. The model is tiny (random test
backbone, 64x64 input, few iterations): this checks the plumbing, not detection quality.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from inference.consumer import InferenceConsumer
from inference.router import ModelRouter
from inference.telemetry import ConsumerMetrics
from ingest.bus.memory import MemoryBus, MemoryConsumer, MemoryPublisher
from ingest.publisher import FramePublisher
from ingest.simulator import LineSimulator
from lineinspect.settings import Settings
from storage.jobs import list_runs
from storage.registry import ModelRegistry
from storage.store import ResultStore
from tests.training.test_retrain import tiny_model
from training.gate import GatePolicy
from training.retrain import RetrainOptions, import_seed
from training.scheduler import Schedule, Scheduler

PRODUCT, CAMERA = "widget", "cam-1"


def wait_for(cond, timeout_s: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_stream_accumulate_retrain_promote_hot_swap(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, engine_url="local://torch", batch_max_records=8, batch_max_wait_ms=20,
                        topic_frames="frames", topic_dlq="frames.dlq", keep_normal_margin=0.95, threads=1)
    store = ResultStore.open(f"sqlite:///{(tmp_path / 'flow.sqlite').as_posix()}", normal_cap=200)
    registry = ModelRegistry(store, tmp_path / "models")
    # This test is about plumbing, so the gate is loose: the gate half of the held-back slice is a
    # handful of images (one image = a 10-20 % FPR step) and the model is a tiny random-feature one.
    # The gate's tolerances and a real refusal are tested in tests/training/test_gate.py / test_retrain.py.
    opts = RetrainOptions(iters=8, holdout=0.4, min_samples=12, model=tiny_model(), progress=False, threads=1,
                          train_overrides={"batch_size": 4}, policy=GatePolicy(max_fpr=0.6, fpr_tolerance=1.0))
    sim = LineSimulator(PRODUCT, size=(128, 128), defect_rate=0.1, seed=7)

    # Bootstrap: seed images -> the first version, through the scheduler (min_new counts them).
    seeds = tmp_path / "seeds"
    LineSimulator(PRODUCT, size=(128, 128), seed=99).write_mvtec(seeds, 16, 0, 0)
    assert import_seed(store, PRODUCT, seeds) == (16, 0)
    scheduler = Scheduler(store, registry, Schedule(min_new=16, backoff_s=0), opts)
    assert [o.status for o in scheduler.tick()] == ["ok"]
    assert registry.active(PRODUCT).version == "v0001"

    # The live line: consumer + router running in the background for the whole test.
    bus = MemoryBus(partitions=2)
    router = ModelRouter(settings, registry, poll_s=0.2)
    consumer = InferenceConsumer(settings, MemoryConsumer(bus, settings.topic_frames, "g", settings.topic_dlq),
                                 router, store, None, ConsumerMetrics(settings), backoff_initial_s=0.01)
    thread = threading.Thread(target=consumer.run, name="consumer", daemon=True)
    thread.start()
    pub = FramePublisher(settings, PRODUCT, "L1", CAMERA, MemoryPublisher(bus, settings.topic_frames),
                         first_frame_id=0, encoding="png")
    try:
        for i in range(24):
            pub.publish(sim.frame(i).image)
        wait_for(lambda: store.count_results(PRODUCT) == 24, what="24 scored frames")
        first = store.results_for_camera(CAMERA)
        assert {r["model_version"] for r in first} == {"v0001"}
        kept = store.count_training_samples(PRODUCT) - 16
        assert kept >= 16, f"only {kept} clearly-normal frames were kept"
        sample_sources = {s.source for s in store.training_samples(PRODUCT)}
        assert sample_sources == {"seed", "clear_normal"}

        # Enough new normal data arrived since v0001's snapshot: the scheduler retrains and promotes.
        scheduler.schedule = Schedule(min_new=kept, backoff_s=0)
        assert scheduler.due() == {PRODUCT: f"{kept} new samples >= {kept}"}
        outcome, = scheduler.tick()
        assert outcome.status == "ok" and "v0002: active" in outcome.detail, outcome.detail
        v2 = registry.active(PRODUCT)
        assert v2.version == "v0002" and v2.parent_version == "v0001"
        assert v2.data_snapshot["by_source"] == {"clear_normal": kept, "seed": 16}
        assert registry.get(PRODUCT, "v0001").status == "retired"
        assert [r["status"] for r in list_runs(store.db_engine, PRODUCT)] == ["ok", "ok"]

        # No restart: the same consumer thread keeps running; the router swaps engines on its poll.
        wait_for(lambda: router.products().get(PRODUCT) == "v0002", what="router to serve v0002")
        assert thread.is_alive()
        for i in range(24, 36):
            pub.publish(sim.frame(i).image)
        wait_for(lambda: store.count_results(PRODUCT) == 36, what="12 more frames")
        later = store.results_for_camera(CAMERA, min_frame_id=24)
        assert len(later) == 12 and {r["model_version"] for r in later} == {"v0002"}
        assert all(abs(r["threshold"] - v2.threshold) < 1e-9 for r in later)

        # Rolling back is picked up the same way.
        registry.rollback(PRODUCT)
        wait_for(lambda: router.products().get(PRODUCT) == "v0001", what="router to serve v0001 again")
        pub.publish(sim.frame(36).image)
        wait_for(lambda: store.count_results(PRODUCT) == 37, what="one more frame")
        assert store.results_for_camera(CAMERA, min_frame_id=36)[0]["model_version"] == "v0001"
    finally:
        consumer.request_stop()
        thread.join(timeout=10)
        consumer.close()
        router.close()
        store.close()
