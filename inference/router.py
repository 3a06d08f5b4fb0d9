"""Per-product engine routing with hot swap of newly promoted model versions.

:class:`ModelRouter` keeps one engine per product that has an active version in the model
registry. A background thread polls ``registry.active_versions()`` every ``poll_s`` seconds; when a
product's active version changes it verifies the weights' checksum, builds the new engine *first*
and then swaps the reference under a lock, so requests keep flowing through the old engine until
the new one is ready. The replaced engine is closed one poll later, after in-flight batches end.

A product with a promoted model is never downgraded silently. When its active version fails to
verify (any file of the model directory against checksums.json and the registry) or to load:
  * if the product is already served by an earlier version, that version keeps serving (it was
    verified when it was loaded) and an error is logged;
  * otherwise the product is *held*: :meth:`infer` raises :class:`ModelHeld` (an
    :class:`EngineUnavailable`), so the consumer backs off and commits nothing; its frames wait in
    Kafka instead of being scored zero-shot with uncalibrated verdicts. :meth:`held` lists them
    (the ``lineinspect_models_held{product}`` gauge and the dashboard's health page).
Failed versions are verified again on every registry poll, so repairing the file or promoting
another version recovers without a restart.

Engine construction sits behind an *engine factory* (``VersionInfo -> Engine``) so other engine
kinds plug in without touching the routing; :func:`open_engine` picks by ``settings.engine_url``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

# engine_base.decode_hw/takes_encoded: the module functions share this router's method names
from inference.engines import base as engine_base
from inference.engines.base import Engine, EngineOutput, EngineUnavailable, UnknownProduct
from lineinspect.errors import ConfigError
from lineinspect.logs import kv
from lineinspect.settings import Settings

if TYPE_CHECKING:  # types only: these modules are imported where they are used
    from ingest.envelope import FrameEnvelope
    from storage.registry import ModelRegistry, VersionInfo

log = logging.getLogger(__name__)

EngineFactory = Callable[["VersionInfo"], Engine]
LOUD_EVERY_S = 60.0  # a held product's error is repeated at ERROR level this often (and on every change)


class ModelHeld(EngineUnavailable):
    """The product's active model fails verification: its frames wait (never scored zero-shot)."""

    def __init__(self, product: str, version: str, error: str) -> None:
        super().__init__(f"{product}: active model {version} is held ({error}); repair the files or promote "
                         "another version (verified again on every registry poll)")
        self.product, self.version, self.error = product, version, error


def local_engine_factory(settings: Settings) -> EngineFactory:
    """``local://auto|onnx|onnx-int8|openvino|torch``: an in-process engine on the version's model directory."""
    kind = settings.engine_url[len("local://"):].strip("/") or "auto"

    def build(info: VersionInfo) -> Engine:
        from inference.engines.local import load_local_engine
        from inference.tiling import maybe_tiled

        return maybe_tiled(load_local_engine(info.path, kind=kind, threads=settings.threads,
                                             device=settings.engine_device), settings)

    return build


@dataclass
class _Route:
    version: str
    threshold: float
    engine: Engine


class ModelRouter:
    """An :class:`inference.engines.base.Engine` over every product with an active model."""

    name = "router"

    def __init__(self, settings: Settings, registry: ModelRegistry, engine_factory: EngineFactory | None = None,
                 fallback: Engine | None = None, poll_s: float = 5.0, verify: bool = True, start: bool = True) -> None:
        self.settings = settings
        self.registry = registry
        self.factory = engine_factory or local_engine_factory(settings)
        self.fallback = fallback
        self.poll_s = poll_s
        self.verify = verify
        self._routes: dict[str, _Route] = {}
        self._retired: list[Engine] = []
        self._failed: dict[str, tuple[str, str, float]] = {}  # product -> (version, error, last loud log)
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._last_refresh = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.refresh()
        if start and poll_s > 0:
            self._thread = threading.Thread(target=self._poll, name="model-router", daemon=True)
            self._thread.start()

    # --- routing table ------------------------------------------------------------------
    def products(self) -> dict[str, str]:
        """{product: active version currently served}."""
        with self._lock:
            return {p: r.version for p, r in self._routes.items()}

    def refresh(self) -> list[str]:
        """Sync the routes with the registry now; returns the products whose engine changed."""
        with self._refresh_lock:
            self._last_refresh = time.monotonic()
            try:
                active = self.registry.active_versions()
            except Exception as exc:  # noqa: BLE001 - a registry hiccup must not stop inference
                log.warning("model registry unavailable; keeping current engines", extra=kv(error=str(exc)))
                return []
            with self._lock:
                retired, self._retired = self._retired, []
            for eng in retired:
                _close(eng)
            changed = []
            for product, info in active.items():
                cur = self._routes.get(product)
                if cur is not None and cur.version == info.version:
                    if cur.threshold != float(info.threshold):
                        with self._lock:
                            self._routes[product] = _Route(cur.version, float(info.threshold), cur.engine)
                    continue
                try:  # a version that failed before is verified again on every poll (repair = recovery)
                    if self.verify and hasattr(self.registry, "verify"):
                        self.registry.verify(info)
                    engine = self.factory(info)
                except Exception as exc:  # noqa: BLE001 - hold the product or keep the earlier version
                    self._fail(product, info.version, str(exc), serving=cur.version if cur else None)
                    continue
                with self._lock:
                    old = self._routes.get(product)
                    self._routes[product] = _Route(info.version, float(info.threshold), engine)
                    if old is not None:
                        self._retired.append(old.engine)
                if self._failed.pop(product, None) is not None:
                    log.warning("model verified and loaded; the product is no longer held",
                                extra=kv(product=product, version=info.version))
                changed.append(product)
                log.info("model routed", extra=kv(product=product, version=info.version,
                                                  previous=old.version if old else None, engine=getattr(engine, "name", "?")))
            for p in [p for p in self._failed if p not in active]:
                self._failed.pop(p)  # no active version any more: nothing is held
            gone = [p for p in self._routes if p not in active]
            if gone:
                with self._lock:
                    for p in gone:
                        self._retired.append(self._routes.pop(p).engine)
                log.info("products without an active model", extra=kv(products=gone))
                changed.extend(gone)
            return changed

    def _fail(self, product: str, version: str, error: str, serving: str | None) -> None:
        prev = self._failed.get(product)
        now = time.monotonic()
        loud = prev is None or prev[:2] != (version, error) or now - prev[2] >= LOUD_EVERY_S
        self._failed[product] = (version, error, now if loud else prev[2] if prev else now)
        if not loud:
            return
        if serving is not None:
            log.error("active model version fails verification or loading; the earlier version keeps serving",
                      extra=kv(product=product, version=version, serving=serving, error=error))
        else:
            log.error("active model version fails verification or loading; HOLDING the product's frames "
                      "(no commit, retried every poll) instead of scoring them zero-shot",
                      extra=kv(product=product, version=version, error=error))

    def held(self) -> dict[str, str]:
        """{product: why} for products whose active model fails and that have no verified engine."""
        with self._lock:
            served = set(self._routes)
        return {p: f"{v}: {e}" for p, (v, e, _) in self._failed.items() if p not in served}

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.refresh()

    # --- Engine ---------------------------------------------------------------------------
    def decode_hw(self, product: str) -> tuple[int, int] | None:
        """The routed engine's decode size (the fallback's for a product without a model)."""
        with self._lock:
            route = self._routes.get(product)
        engine = route.engine if route is not None else self.fallback
        return None if engine is None else engine_base.decode_hw(engine, product)

    def takes_encoded(self, product: str) -> bool:
        """Whether the routed engine decodes ``product``'s frames itself (see engines.base.takes_encoded)."""
        with self._lock:
            route = self._routes.get(product)
        return route is not None and engine_base.takes_encoded(route.engine, product)

    def infer_encoded(self, product: str, envs: list[FrameEnvelope], max_pixels: int = 40_000_000,
                      oversample: float | None = None) -> tuple[EngineOutput, list[tuple[int, int]], str]:
        """Encoded frames to the routed engine; a product whose route is gone (or never took encoded
        frames) is decoded here on the CPU and scored through :meth:`infer`, which knows the fallbacks.
        ``oversample``: see ``ingest.envelope.choose_jpeg_scale`` (None: its default)."""
        from ingest.envelope import DECODE_OVERSAMPLE, decode_frame

        oversample = DECODE_OVERSAMPLE if oversample is None else oversample
        with self._lock:
            route = self._routes.get(product)
        if route is None or not engine_base.takes_encoded(route.engine, product):
            hw = self.decode_hw(product)
            decoded = [decode_frame(e, max_pixels, hw, oversample) for e in envs]
            return self.infer(product, [d.image for d in decoded]), [d.frame_hw for d in decoded], "cpu"
        out, geoms, path = route.engine.infer_encoded(product, envs, max_pixels, oversample)  # type: ignore[attr-defined]
        out.model_version = route.version
        out.threshold = route.threshold
        out.engine_name = out.engine_name or getattr(route.engine, "name", "local")
        return out, geoms, path

    def infer(self, product: str, images: list[np.ndarray]) -> EngineOutput:
        with self._lock:
            route = self._routes.get(product)
        if route is None and time.monotonic() - self._last_refresh > 1.0:
            self.refresh()  # a product promoted moments ago
            with self._lock:
                route = self._routes.get(product)
        if route is None:
            failed = self._failed.get(product)
            if failed is not None:  # a promoted model that fails verification is never replaced by zero-shot
                raise ModelHeld(product, failed[0], failed[1])
            if self.fallback is not None:
                out = self.fallback.infer(product, images)
                out.engine_name = getattr(self.fallback, "name", "fallback")
                return out
            raise UnknownProduct(product, list(self.products()))
        out = route.engine.infer(product, images)
        out.model_version = route.version
        out.threshold = route.threshold
        out.engine_name = getattr(route.engine, "name", "local")
        return out

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.poll_s + 5)
        with self._lock:
            engines = [r.engine for r in self._routes.values()] + self._retired
            self._routes, self._retired = {}, []
        for eng in engines:
            _close(eng)
        if self.fallback is not None:
            _close(self.fallback)


def _close(engine: Engine) -> None:
    try:
        engine.close()
    except Exception as exc:  # noqa: BLE001 - closing is best effort
        log.warning("engine close failed", extra=kv(error=str(exc)))


def open_engine(settings: Settings, registry: ModelRegistry) -> Engine:
    """The engine ``settings.engine_url`` names.

    * ``local://auto|onnx|torch``: a :class:`ModelRouter` of in-process engines;
    * ``zero-shot://grnr|inp``: the same router, with the zero-shot engine for products that have
      no active model yet (cold start);
    * ``triton-grpc://host:port`` / ``triton-http://host:port``: the Triton client (the server
      routes by product model name).
    """
    url = settings.engine_url
    if url.startswith("local://"):
        from inference.engines.zero_shot import fallback_from_settings

        # products without an active model are scored zero-shot (settings.zero_shot_fallback)
        return ModelRouter(settings, registry, fallback=fallback_from_settings(settings))
    if url.startswith("zero-shot://"):
        from inference.engines.zero_shot import ZeroShotEngine

        method = url[len("zero-shot://"):].strip("/") or "grnr"
        fallback = ZeroShotEngine(method=method, threshold_quantile=settings.threshold_quantile,
                                  min_scores=settings.zero_shot_min_normals, threads=settings.threads)
        settings = settings.with_overrides(engine_url="local://auto")
        return ModelRouter(settings, registry, fallback=fallback)
    if url.startswith(("triton-grpc://", "triton-http://")):
        from inference.engines.triton_engine import TritonEngine

        return TritonEngine(url)
    raise ConfigError(f"engine_url {url!r} is not local://, zero-shot:// or triton-*://")
