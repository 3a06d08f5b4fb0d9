"""End to end, embedded (SQLite + memory bus): live frames accumulate normal data, the scheduler
retrains, the gate promotes, and the *running* consumer scores new frames with the new version.

No services are needed, so this runs in the default test suite. The model is tiny (random test
backbone, 64x64 input, few iterations): this checks the plumbing, not detection quality.
"""

from __future__ import annotations

import time
from pathlib import Path

from storage.jobs import list_runs
from tests.integration.live_line import CAMERA, PRODUCT, running_consumer, seeded_line, wait_for
from training.scheduler import Schedule


def test_stream_accumulate_retrain_promote_hot_swap(tmp_path: Path) -> None:
    # Bootstrap: seed images -> the first version, through the scheduler (min_new counts them).
    line = seeded_line(tmp_path, f"sqlite:///{(tmp_path / 'flow.sqlite').as_posix()}")
    store, registry, scheduler, sim = line.store, line.registry, line.scheduler, line.sim
    # The live line: consumer + router running in the background for the whole test.
    with running_consumer(line) as live:
        router, thread, pub = live.router, live.thread, live.pub
        t0 = time.time() - 60
        for i in range(24):  # a camera at one frame a second: each clearly normal frame is a sample
            pub.publish(sim.frame(i).image, capture_ts=t0 + i)
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
