"""The engine seam: score a batch of frames of one product.

Every engine (ONNX Runtime, PyTorch, Triton client, zero-shot) takes the same input and returns
the same output, and they share :mod:`inference.preprocess` (resize/layout, done outside the
graph because frame sizes vary) and :mod:`inference.postprocess` (verdict, mask), so exported and
local results cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


class UnknownProduct(LookupError):
    """No model (and no zero-shot fallback) is registered for a product."""

    def __init__(self, product: str, known: list[str] | None = None) -> None:
        known_s = f"; known products: {', '.join(sorted(known))}" if known else ""
        super().__init__(f"no active model for product {product!r}{known_s}")
        self.product = product


class EngineUnavailable(RuntimeError):
    """The engine's backend (e.g. the Triton server) cannot be reached right now; retry later."""


@dataclass
class EngineOutput:
    scores: np.ndarray          # (N,) float32 image anomaly scores
    maps: np.ndarray            # (N, h, w) float32 anomaly maps at the model's input resolution
    model_version: str          # the registry version that produced them ("zero-shot" for cold start)
    threshold: float            # the version's calibrated image threshold
    infer_ms: float = 0.0       # wall time spent in the engine for the whole batch
    engine_name: str = ""       # what scored it (rows record it); "" = the consumer's engine name
    calibrated: bool = True     # False while a zero-shot threshold is still warming up (rows say so)


@runtime_checkable
class Engine(Protocol):
    name: str

    def infer(self, product: str, images: list[np.ndarray]) -> EngineOutput:
        """Score RGB uint8 (H, W, 3) images of one product (any sizes)."""

    def close(self) -> None: ...


def decode_hw(engine: object, product: str) -> tuple[int, int] | None:
    """The size frames of ``product`` should be decoded to for ``engine``: its model input size
    when the engine resizes frames to a fixed input (decoding more pixels is wasted work), None
    when it needs full resolution (tiling) or does not say (the safe default: decode everything).

    Engines opt in with a ``decode_hw(product)`` method; the :class:`Engine` protocol does not
    require it, so external engines and test doubles keep working unchanged."""
    fn = getattr(engine, "decode_hw", None)
    if fn is None:
        return None
    hw = fn(product)
    return None if hw is None else (int(hw[0]), int(hw[1]))


def takes_encoded(engine: object, product: str) -> bool:
    """Whether ``engine`` wants ``product``'s frames as the camera's encoded bytes
    (``infer_encoded(product, envelopes, max_pixels, oversample) -> (EngineOutput, geometries, path)``)
    instead of decoded pixels: an engine that decodes on its own device (nvJPEG on a GPU) saves the
    consumer's CPU the decode, the biggest cost besides the model at camera resolutions.

    Opt-in like :func:`decode_hw` (``takes_encoded(product)``); engines without it get pixels."""
    fn = getattr(engine, "takes_encoded", None)
    return bool(fn(product)) if fn is not None else False
