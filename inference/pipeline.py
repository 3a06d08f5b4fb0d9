"""The composition root: the one place that wires store, cache, registry, engine and consumer.

``lineinspect consume``, the embedded demo and the pipeline benchmark all run the same pipeline;
before this builder each wired the parts by hand and they drifted (one forgot to close the router,
one had no zero-shot fallback). A caller that needs a part first (the demo registers a model
before it streams) passes it in; everything not passed is built from ``settings``. The returned
:class:`Pipeline` owns every part, given or built, and :meth:`Pipeline.close` closes them in the
reverse order of use.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from inference.consumer import InferenceConsumer
from inference.engines.base import Engine
from inference.telemetry import ConsumerMetrics
from ingest.bus.base import BatchConsumer
from lineinspect.settings import Settings
from storage.cache import Cache
from storage.registry import ModelRegistry
from storage.store import ResultStore

# (settings, registry) -> the engine the consumer scores with; ModelRouter itself fits
EngineBuilder = Callable[[Settings, ModelRegistry], Engine]


@dataclass
class Pipeline:
    """The wired parts of one consumer process."""

    settings: Settings
    store: ResultStore
    cache: Cache
    registry: ModelRegistry
    engine: Engine
    consumer: InferenceConsumer

    def close(self) -> None:
        """Close consumer (bus, metrics), engine, cache, then store; safe to call twice."""
        self.consumer.close()
        self.engine.close()
        self.cache.close()
        self.store.close()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def build_pipeline(settings: Settings, bus: BatchConsumer | None = None, *, store: ResultStore | None = None,
                   cache: Cache | None = None, registry: ModelRegistry | None = None,
                   build_engine: EngineBuilder | None = None, metrics: ConsumerMetrics | None = None,
                   **consumer_options: Any) -> Pipeline:
    """Build what is not given and wire it: ``bus`` defaults to ``open_consumer(settings)``, the
    engine to ``build_engine(settings, registry)``, by default :func:`inference.router.open_engine`
    (router + zero-shot fallback, or the Triton client). ``consumer_options`` go to
    :class:`InferenceConsumer` (``pipelined``, ``name``, ``stat_interval_s``, ...)."""
    from inference.router import open_engine
    from ingest.bus import open_consumer
    from storage import open_cache, open_store

    bus = bus if bus is not None else open_consumer(settings)  # first: a bad bus URL opens nothing else
    store = store if store is not None else open_store(settings)
    registry = registry if registry is not None else ModelRegistry(store, settings.resolved_models_dir)
    cache = cache if cache is not None else open_cache(settings)
    engine = (build_engine or open_engine)(settings, registry)
    metrics = metrics if metrics is not None else ConsumerMetrics(settings)
    if "post_store" not in consumer_options:  # drift monitor, defect families: as the settings ask
        from inference.drift import build_steps

        consumer_options["post_store"] = build_steps(settings, store, registry, metrics.registry)
    consumer = InferenceConsumer(settings, bus, engine, store, cache, metrics, **consumer_options)
    return Pipeline(settings, store, cache, registry, engine, consumer)
