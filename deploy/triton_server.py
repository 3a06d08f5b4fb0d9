"""Serve every product's active model on NVIDIA Triton (nvidia-pytriton), with hot swap.

pytriton bundles only Triton's Python backend, so each product is bound as a Python callable that
runs the *same* ONNX Runtime session code as the local engine (:class:`OnnxModel`). Triton adds
what a local engine lacks: HTTP/gRPC endpoints, dynamic batching across clients (configurable max
batch and queue delay), health/readiness and Prometheus metrics, all on 127.0.0.1 by default.

Hot swap: a watcher thread polls the registry's active versions; when a product's version changes
it builds the new session first, then replaces the slot's (version, session) pair with one
assignment. A batch reads the pair once, so it is scored entirely by one version, no request is
dropped, and the version that scored each image is returned with it. A version whose input size
differs from the bound one cannot be swapped in (Triton's input shape is fixed at bind time); that
is logged and the old version keeps serving until a restart.
"""

from __future__ import annotations

import logging
import os
import signal
import sysconfig
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from inference.engines.onnx_engine import OnnxModel
from inference.engines.triton_engine import (
    INPUT,
    OUT_MAP,
    OUT_SCORE,
    OUT_THRESHOLD,
    OUT_VERSION,
    triton_model_name,
)
from lineinspect.errors import ConfigError
from lineinspect.logs import kv

if TYPE_CHECKING:  # types only: these modules are imported where they are used
    from lineinspect.settings import Settings

log = logging.getLogger("lineinspect.triton")


@dataclass(frozen=True)
class ActiveModel:
    """One product's active version as the registry (or a static mapping) names it."""

    product: str
    version: str
    model_dir: Path
    threshold: float | None = None   # None: the model dir's calibrated threshold


ActiveSource = Callable[[], dict[str, ActiveModel]]


def registry_source(settings: Settings) -> ActiveSource:
    """Active versions from the model registry (``settings.resolved_db_url`` + models dir)."""
    from storage import open_store
    from storage.registry import ModelRegistry

    registry = ModelRegistry(open_store(settings), settings.resolved_models_dir)

    def active() -> dict[str, ActiveModel]:
        return {p: ActiveModel(p, v.version, Path(v.path), float(v.threshold))
                for p, v in registry.active_versions().items()}

    return active


def static_source(models: Mapping[str, str | Path]) -> ActiveSource:
    """Fixed {product: model_dir} (no registry); the version is the model dir's own."""
    from inference.onnx_export import read_model_meta

    fixed = {p: ActiveModel(p, read_model_meta(d).version, Path(d)) for p, d in models.items()}
    return lambda: dict(fixed)


def prepare_pytriton_env() -> None:
    """Make the tritonserver child process find its libraries (call before ``Triton.run``).

    * pytriton decides where its bundled ``nvidia_pytriton.libs`` live by checking whether it sits
      in one of ``site.getsitepackages()``; in a venv that chains a cached site-packages through a
      ``.pth`` file (``scripts/env.sh``) it wrongly assumes an editable install and the server dies
      with ``libcudart-*.so: cannot open shared object file``. We add the real folder.
    * The Python-backend stub must link this interpreter's libpython, not the system one.
    """
    import pytriton

    wanted = [str(Path(pytriton.__file__).resolve().parent.parent / "nvidia_pytriton.libs"),
              str(sysconfig.get_config_var("LIBDIR") or "")]
    current = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p]
    missing = [p for p in wanted if p and Path(p).is_dir() and p not in current]
    if missing:
        os.environ["LD_LIBRARY_PATH"] = ":".join(missing + current)


class ProductSlot:
    """The bound callable of one product: scores a batch with whatever (version, session) is current."""

    def __init__(self, active: ActiveModel, threads: int = 0) -> None:
        self.product = active.product
        self.threads = threads
        self._current = self._load(active)
        self._swap_lock = threading.Lock()

    def _load(self, active: ActiveModel) -> tuple[ActiveModel, OnnxModel]:
        return active, OnnxModel(active.model_dir, threads=self.threads)

    @property
    def version(self) -> str:
        return self._current[0].version

    @property
    def input_hw(self) -> tuple[int, int]:
        return self._current[1].input_hw

    def swap(self, active: ActiveModel) -> bool:
        """Load ``active`` and make it current; False (old version kept) if it cannot serve here."""
        with self._swap_lock:
            if active.version == self.version and active.model_dir == self._current[0].model_dir:
                return False
            new = self._load(active)   # built before the switch: batches keep flowing meanwhile
            if new[1].input_hw != self.input_hw:
                log.error("cannot hot-swap: input size changed; restart serve-triton to serve it",
                          extra=kv(product=self.product, version=active.version, old_hw=self.input_hw,
                                   new_hw=new[1].input_hw))
                return False
            old = self._current[0].version
            self._current = new        # one reference assignment: atomic between batches
        log.info("hot-swapped model", extra=kv(product=self.product, old=old, new=active.version))
        return True

    def infer(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        """Triton callable (batched by pytriton's ``@batch``): (N, 3, H, W) -> map, score, version, threshold."""
        active, model = self._current  # read once: the whole batch is scored by one version
        x = inputs[INPUT]
        amap, score = model.run(x)
        n = x.shape[0]
        thr = model.threshold if active.threshold is None else active.threshold
        return {OUT_MAP: amap.astype(np.float32, copy=False),
                OUT_SCORE: score.reshape(n, 1).astype(np.float32, copy=False),
                OUT_VERSION: np.full((n, 1), active.version.encode(), dtype=object),
                OUT_THRESHOLD: np.full((n, 1), thr, dtype=np.float32)}


@dataclass
class ServerConfig:
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    address: str = "127.0.0.1"
    max_batch: int = 16
    queue_delay_us: int = 2000
    threads: int = 0
    poll_s: float = 5.0
    instances: int = 1

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ConfigError("max batch must be >= 1")
        if self.queue_delay_us < 0:
            raise ConfigError("queue delay must be >= 0 microseconds")
        if self.poll_s <= 0:
            raise ConfigError("poll interval must be > 0")


def preferred_batch_sizes(max_batch: int) -> list[int]:
    """Powers of two up to ``max_batch`` (and ``max_batch`` itself): what the batcher tries to form."""
    sizes = [b for b in (1, 2, 4, 8, 16, 32, 64, 128) if b <= max_batch]
    if max_batch not in sizes:
        sizes.append(max_batch)
    return [s for s in sizes if s > 1] or [max_batch]


class TritonModelServer:
    """pytriton server with one bound model per product and a registry watcher for hot swaps."""

    def __init__(self, source: ActiveSource, config: ServerConfig | None = None) -> None:
        self.source = source
        self.config = config or ServerConfig()
        self.slots: dict[str, ProductSlot] = {}
        self._triton: Any = None
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._unserved: set[str] = set()

    # --- lifecycle ------------------------------------------------------------------------
    def start(self) -> TritonModelServer:
        """Load every active model, bind it and start Triton (returns once the server is up)."""
        from pytriton.decorators import batch
        from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
        from pytriton.triton import Triton, TritonConfig

        active = self.source()
        if not active:
            raise ConfigError("no product has an active model in the registry: train and promote one first "
                              "(lineinspect train ... then the registry's promote)")
        names: dict[str, str] = {}
        for product in sorted(active):
            name = triton_model_name(product)
            if name in names:
                raise ConfigError(f"products {names[name]!r} and {product!r} map to the same Triton model {name!r}")
            names[name] = product
        for product in sorted(active):
            self.slots[product] = ProductSlot(active[product], self.config.threads)
        c = self.config
        prepare_pytriton_env()
        tc = TritonConfig(http_address=c.address, http_port=c.http_port, grpc_address=c.address,
                          grpc_port=c.grpc_port, metrics_address=c.address, metrics_port=c.metrics_port,
                          exit_on_error=True, exit_timeout_secs=5, log_verbose=0)
        self._triton = Triton(config=tc)
        try:
            for product, slot in self.slots.items():
                h, w = slot.input_hw
                self._triton.bind(
                    model_name=triton_model_name(product),
                    infer_func=[batch(slot.infer) for _ in range(c.instances)],
                    inputs=[Tensor(name=INPUT, dtype=np.float32, shape=(3, h, w))],
                    outputs=[Tensor(name=OUT_MAP, dtype=np.float32, shape=(h, w)),
                             Tensor(name=OUT_SCORE, dtype=np.float32, shape=(1,)),
                             Tensor(name=OUT_VERSION, dtype=bytes, shape=(1,)),
                             Tensor(name=OUT_THRESHOLD, dtype=np.float32, shape=(1,))],
                    config=ModelConfig(max_batch_size=c.max_batch, batcher=DynamicBatcher(
                        max_queue_delay_microseconds=c.queue_delay_us,
                        preferred_batch_size=preferred_batch_sizes(c.max_batch))),
                    strict=True,
                )
            self._triton.run()
        except BaseException:
            self.stop()
            raise
        self._watcher = threading.Thread(target=self._watch, name="triton-registry-watch", daemon=True)
        self._watcher.start()
        log.info("triton serving", extra=kv(models=",".join(f"{triton_model_name(p)}={s.version}"
                                                            for p, s in self.slots.items()),
                                            http=f"{c.address}:{c.http_port}", grpc=f"{c.address}:{c.grpc_port}",
                                            metrics=f"{c.address}:{c.metrics_port}", max_batch=c.max_batch,
                                            queue_delay_us=c.queue_delay_us))
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join(timeout=self.config.poll_s + 5)
        if self._triton is not None:
            triton, self._triton = self._triton, None
            triton.stop()
            log.info("triton stopped")

    def serve_forever(self) -> None:
        """Block until SIGTERM/SIGINT, then stop Triton cleanly (no state left in ~/.cache/pytriton)."""
        def _handle(signum: int, _frame: Any) -> None:
            log.info("signal received, stopping", extra=kv(signal=signal.Signals(signum).name))
            self._stop.set()

        previous = {s: signal.signal(s, _handle) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            while not self._stop.wait(0.5):
                if self._triton is not None and not self._triton.is_alive():
                    log.error("triton server died")
                    break
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
            self.stop()

    def __enter__(self) -> TritonModelServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # --- hot swap ------------------------------------------------------------------------
    def poll_once(self) -> list[str]:
        """Compare the registry with what is served; swap changed products. Returns the swapped ones."""
        swapped = []
        active = self.source()
        for product, am in active.items():
            slot = self.slots.get(product)
            if slot is None:
                if product not in self._unserved:
                    self._unserved.add(product)
                    log.warning("new product has an active model; restart serve-triton to serve it",
                                extra=kv(product=product, version=am.version))
                continue
            if am.version != slot.version:
                try:
                    if slot.swap(am):
                        swapped.append(product)
                except Exception as exc:  # noqa: BLE001 - a broken new version must not stop serving the old
                    log.error("hot swap failed; still serving the previous version",
                              extra=kv(product=product, version=am.version, error=str(exc)))
        return swapped

    def _watch(self) -> None:
        while not self._stop.wait(self.config.poll_s):
            try:
                self.poll_once()
            except Exception as exc:  # noqa: BLE001 - a registry hiccup must not kill the watcher
                log.warning("registry poll failed", extra=kv(error=str(exc)))


def wait_ready(url: str, timeout_s: float = 60.0) -> bool:
    """Poll ``http://host:port/v2/health/ready`` until it answers 200 or ``timeout_s`` passes."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url.rstrip('/')}/v2/health/ready", timeout=2) as r:  # noqa: S310 (http URL from our own config)
                if r.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    return False
