"""Triton client engine: the same ``infer(product, images)`` as the local engines, served remotely.

Pre-processing stays here, client-side, in the shared :func:`batch_to_input`, so a Triton result
equals a local ONNX Runtime result on the same frames. Each product is a Triton model named
:func:`triton_model_name`; the server returns, per image, the map, the score, the registry version
that scored it and that version's threshold (a hot swap can happen between any two requests).

An unreachable server raises :class:`EngineUnavailable` (the consumer backs off and retries); a
product the server does not serve raises :class:`UnknownProduct`.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import numpy as np

from inference.engines.base import EngineOutput, EngineUnavailable, UnknownProduct
from inference.preprocess import batch_to_input
from lineinspect.errors import ConfigError

INPUT = "images"
OUT_MAP, OUT_SCORE, OUT_VERSION, OUT_THRESHOLD = "anomaly_map", "score", "model_version", "threshold"
SCHEMES = {"triton-grpc": "grpc", "triton-http": "http"}


def triton_model_name(product: str) -> str:
    """``inp_<product>`` with every character Triton's repository layout dislikes replaced by ``_``."""
    if not product:
        raise ValueError("empty product name")
    return "inp_" + re.sub(r"[^A-Za-z0-9_-]", "_", product)


def parse_engine_url(url: str) -> tuple[str, str]:
    """``triton-grpc://host:port`` -> ("grpc", "host:port"); same for ``triton-http://``."""
    u = urlparse(url)
    proto = SCHEMES.get(u.scheme)
    if proto is None or not u.hostname or not u.port:
        raise ConfigError(f"not a Triton engine URL: {url!r} (use triton-grpc://HOST:PORT or triton-http://HOST:PORT)")
    return proto, f"{u.hostname}:{u.port}"


@dataclass(frozen=True)
class _ModelInfo:
    input_hw: tuple[int, int]
    max_batch: int
    per_request_version: bool    # the server returns model_version/threshold outputs (pytriton server)
    version: str = ""            # else: from the config's parameters (standalone Triton repo)
    threshold: float = 0.0


def _param(cfg: dict, key: str) -> str | None:
    p = (cfg.get("parameters") or {}).get(key)
    if isinstance(p, dict):
        return p.get("string_value") or p.get("stringValue")
    return None


class TritonEngine:
    """Scores frames on a Triton server (gRPC or HTTP); one client, thread-safe for ``infer``."""

    name = "triton"

    def __init__(self, url: str, timeout_s: float = 30.0) -> None:
        self.url = url
        self.protocol, self.address = parse_engine_url(url)
        self.timeout_s = float(timeout_s)
        self._info: dict[str, _ModelInfo] = {}
        self._lock = threading.Lock()
        self._local = threading.local()

    # --- client plumbing --------------------------------------------------------------------
    def _client(self) -> Any:
        """One client per thread: the HTTP client is not safe to share between threads."""
        c = getattr(self._local, "client", None)
        if c is None:
            if self.protocol == "grpc":
                import tritonclient.grpc as tc

                c = tc.InferenceServerClient(url=self.address)
            else:
                import tritonclient.http as tc

                c = tc.InferenceServerClient(url=self.address, connection_timeout=self.timeout_s,
                                             network_timeout=self.timeout_s)
            self._local.client = c
        return c

    def _call(self, product: str, fn: Any) -> Any:
        """Run one client call, turning transport failures into EngineUnavailable."""
        from tritonclient.utils import InferenceServerException

        try:
            return fn(self._client())
        except InferenceServerException as exc:
            msg = str(exc)
            low = msg.lower()
            if ("unknown model" in low or "not found" in low or "is not ready" in low
                    or "no model version" in low) and "unavailable" not in low:
                # A server that is starting, stopping or loading answers "unknown / not ready" for
                # every model: that is an outage to wait out, not a product to dead-letter.
                if "is not ready" in low or not self._server_ready():
                    self._local.client = None
                    raise EngineUnavailable(f"Triton at {self.url} is not serving {product!r} right now "
                                            f"(starting, stopping or loading): {msg}") from None
                raise UnknownProduct(product) from None
            if any(s in low for s in ("unavailable", "failed to connect", "connection", "deadline", "timed out",
                                      "socket closed", "broken pipe")):
                self._local.client = None
                raise EngineUnavailable(f"Triton at {self.url} is unreachable: {msg}") from None
            raise
        except (OSError, ConnectionError, TimeoutError) as exc:
            self._local.client = None
            raise EngineUnavailable(f"Triton at {self.url} is unreachable: {exc}") from None

    def _server_ready(self) -> bool:
        try:
            return bool(self._client().is_server_ready())
        except Exception:  # noqa: BLE001 - unreachable or shutting down: not ready
            return False

    def model_info(self, product: str) -> _ModelInfo:
        """Input size and max batch of the product's model (read once from the server, then cached)."""
        with self._lock:
            info = self._info.get(product)
        if info is not None:
            return info
        name = triton_model_name(product)
        if self.protocol == "grpc":
            meta = self._call(product, lambda c: c.get_model_metadata(name, as_json=True))
            cfg = self._call(product, lambda c: c.get_model_config(name, as_json=True))["config"]
        else:
            meta = self._call(product, lambda c: c.get_model_metadata(name))
            cfg = self._call(product, lambda c: c.get_model_config(name))
        inp = next((i for i in meta["inputs"] if i["name"] == INPUT), None)
        if inp is None:
            raise ConfigError(f"Triton model {name} has no input {INPUT!r}; is it a lineinspect model?")
        dims = [int(d) for d in inp["shape"]][-3:]
        if len(dims) != 3 or dims[0] != 3 or min(dims[1:]) <= 0:
            raise ConfigError(f"Triton model {name} input shape {inp['shape']} is not (N, 3, H, W) with a static H, W")
        out_names = {o["name"] for o in meta.get("outputs", [])}
        per_request = OUT_VERSION in out_names and OUT_THRESHOLD in out_names
        version = _param(cfg, "lineinspect_version") or f"{name}/{meta.get('versions', ['?'])[-1]}"
        try:
            threshold = float(_param(cfg, "threshold") or "nan")
        except ValueError:
            threshold = float("nan")
        info = _ModelInfo((dims[1], dims[2]), max(1, int(cfg.get("max_batch_size") or cfg.get("maxBatchSize") or 1)),
                          per_request, version, threshold)
        with self._lock:
            self._info[product] = info
        return info

    def is_ready(self) -> bool:
        try:
            return bool(self._call("", lambda c: c.is_server_ready()))
        except EngineUnavailable:
            return False

    # --- the engine interface -------------------------------------------------------------
    def _request(self, product: str, x: np.ndarray, info: _ModelInfo) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
        name = triton_model_name(product)
        if self.protocol == "grpc":
            import tritonclient.grpc as tc
        else:
            import tritonclient.http as tc
        inp = tc.InferInput(INPUT, list(x.shape), "FP32")
        inp.set_data_from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        names = (OUT_MAP, OUT_SCORE, OUT_VERSION, OUT_THRESHOLD) if info.per_request_version else (OUT_MAP, OUT_SCORE)
        outs = [tc.InferRequestedOutput(n) for n in names]
        kw = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}
        res = self._call(product, lambda c: c.infer(name, [inp], outputs=outs, **kw))
        amap = res.as_numpy(OUT_MAP).astype(np.float32, copy=False)
        score = res.as_numpy(OUT_SCORE).reshape(-1).astype(np.float32, copy=False)
        if not info.per_request_version:
            return amap, score, [info.version] * len(score), np.full(len(score), info.threshold, np.float32)
        versions = [v.decode() if isinstance(v, bytes) else str(v) for v in res.as_numpy(OUT_VERSION).reshape(-1)]
        thr = res.as_numpy(OUT_THRESHOLD).reshape(-1).astype(np.float32, copy=False)
        return amap, score, versions, thr

    def decode_hw(self, product: str) -> tuple[int, int] | None:
        """The served model's input size once known (after the first batch); None before (full decode)."""
        with self._lock:
            info = self._info.get(product)
        return None if info is None else info.input_hw

    def infer(self, product: str, images: list[np.ndarray]) -> EngineOutput:
        t0 = time.perf_counter()
        info = self.model_info(product)
        x = batch_to_input(images, info.input_hw)
        if len(images) == 0:
            return EngineOutput(np.zeros((0,), np.float32), np.zeros((0, *info.input_hw), np.float32), "", 0.0, 0.0)
        for _attempt in range(3):  # a hot swap between two chunks of one call: score the call again
            maps, scores, versions, thrs = [], [], [], []
            for i in range(0, x.shape[0], info.max_batch):
                m, s, v, t = self._request(product, x[i:i + info.max_batch], info)
                maps.append(m)
                scores.append(s)
                versions += v
                thrs.append(t)
            if len(set(versions)) == 1:
                break
        else:
            raise EngineUnavailable(f"Triton kept switching model versions of {product!r} mid-call: {sorted(set(versions))}")
        return EngineOutput(np.concatenate(scores), np.concatenate(maps), versions[0], float(np.concatenate(thrs)[0]),
                            (time.perf_counter() - t0) * 1000.0)

    def close(self) -> None:
        c = getattr(self._local, "client", None)
        if c is not None:
            try:
                c.close()
            except Exception:  # noqa: BLE001 - closing a dead connection is not an error
                pass
            self._local.client = None
