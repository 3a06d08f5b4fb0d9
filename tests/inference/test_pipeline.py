"""build_pipeline: the one wiring of store, cache, registry, engine and consumer, end to end on the
embedded deployment (SQLite, in-memory bus and cache)."""

from __future__ import annotations

from pathlib import Path

from inference.pipeline import Pipeline, build_pipeline
from ingest.bus import open_consumer
from ingest.bus.memory import MemoryBus
from lineinspect.settings import Settings
from storage.memory_cache import MemoryCache
from storage.registry import ModelRegistry
from tests.inference.test_consumer import FakeEngine, publish


class _Recorder(FakeEngine):
    closed = False

    def close(self) -> None:
        self.closed = True


def test_built_pipeline_scores_stores_and_closes_every_part(tmp_path: Path) -> None:
    s = Settings(home=tmp_path, bus_url="memory://", cache_url="memory://")
    bus = MemoryBus(s.topic_partitions)
    seen: list[tuple[Settings, ModelRegistry]] = []
    engine = _Recorder()

    def build_engine(settings: Settings, registry: ModelRegistry) -> _Recorder:
        seen.append((settings, registry))
        return engine

    pipe = build_pipeline(s, open_consumer(s, memory_bus=bus), build_engine=build_engine, pipelined=False)
    assert isinstance(pipe, Pipeline) and isinstance(pipe.cache, MemoryCache)
    assert seen == [(s, pipe.registry)] and pipe.registry.models_dir == s.resolved_models_dir
    assert pipe.consumer.engine is engine and pipe.consumer.store is pipe.store
    defects = publish(bus, s, 6)
    with pipe:
        assert pipe.consumer.run(max_frames=6, idle_timeout_s=5) == 6
        assert pipe.store.count_results("widget") == 6
        assert len(pipe.cache.anomalies()) == len(defects)
    assert engine.closed
    pipe.close()  # twice is harmless


def test_given_parts_are_used_not_rebuilt(tmp_path: Path) -> None:
    from storage import open_store

    s = Settings(home=tmp_path)
    store = open_store(s)
    cache = MemoryCache()
    pipe = build_pipeline(s, open_consumer(s, memory_bus=MemoryBus(2)), store=store, cache=cache,
                          build_engine=lambda st, reg: _Recorder())
    try:
        assert pipe.store is store and pipe.cache is cache
    finally:
        pipe.close()
