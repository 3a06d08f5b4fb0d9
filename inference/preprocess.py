"""Frame <-> model-input conversions shared by every engine (kept outside the exported graph).

Frames arrive at any size; the graph has a static input size (``config.json: input_hw``), so the
resize happens here, once, identically for ONNX Runtime, PyTorch and Triton clients. Colour
normalisation is *inside* the graph (see :mod:`inference.model.backbones`): this module only
resizes and scales to [0, 1].

Input geometry: the model input is ``input_hw`` (H, W). By default it is square (the frame is
squashed, as MVTec practice does); ``aspect_input_hw`` picks an aspect-preserving size for a
product whose frames are far from square. The choice is recorded in the model's config.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np


def as_rgb(image: np.ndarray) -> np.ndarray:
    """Accept (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) uint8 and return (H, W, 3) uint8 RGB."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"expected a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {image.dtype}")
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    if image.ndim == 3 and image.shape[2] == 4:
        return image[:, :, :3]
    raise ValueError(f"expected an (H, W[, 1|3|4]) image, got shape {image.shape}")


def resize_rgb(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Resize to (H, W): INTER_AREA when shrinking (no aliasing), INTER_LINEAR when growing."""
    h, w = int(hw[0]), int(hw[1])
    if image.shape[:2] == (h, w):
        return image
    shrink = image.shape[0] * image.shape[1] >= h * w
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


_SCALE = np.float32(1.0 / 255.0)


def _fill_input(out: np.ndarray, image: np.ndarray, hw: tuple[int, int]) -> None:
    """Write one frame's float32 (3, H, W) model input into ``out`` (a view into the batch array).

    WHY not ``as_rgb`` then convert: a one-channel frame already at the input size (a mono camera's
    frames come out of :func:`ingest.envelope.decode_frame` that way) is scaled once and the result
    copied to the three planes; replicating the uint8 pixels first, then converting, transposing and
    stacking the copies cost several times that per frame. Same float32 values either way (one multiply
    by the same float32 factor per pixel)."""
    h, w = int(hw[0]), int(hw[1])
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.shape[:2] == (h, w) and (
            image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1)):
        np.multiply(image.reshape(h, w), _SCALE, out=out[0], dtype=np.float32)
        out[1] = out[0]
        out[2] = out[0]
        return
    rgb = resize_rgb(as_rgb(image), hw)
    np.multiply(rgb.transpose(2, 0, 1), _SCALE, out=out, dtype=np.float32)


def to_input(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """One RGB uint8 frame -> float32 (3, H, W) in [0, 1] at the model input size."""
    out = np.empty((3, int(hw[0]), int(hw[1])), np.float32)
    _fill_input(out, image, hw)
    return out


def batch_to_input(images: list[np.ndarray], hw: tuple[int, int]) -> np.ndarray:
    """Frames of any sizes -> float32 (N, 3, H, W), written in place (no per-frame arrays to stack)."""
    out = np.empty((len(images), 3, int(hw[0]), int(hw[1])), np.float32)
    for i, im in enumerate(images):
        _fill_input(out[i], im, hw)
    return out


def score_in_batches(images: list[np.ndarray], hw: tuple[int, int], batch_size: int,
                     run: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Frames of any sizes -> float32 ((N, H, W) maps, (N,) scores): preprocessed ``batch_size`` at a
    time and scored by ``run`` (float32 (n, 3, H, W) -> numpy (maps, scores)). The one batching loop
    of every engine, so they differ only in how a batch is run."""
    maps, scores = [], []
    for i in range(0, len(images), batch_size):
        m, s = run(batch_to_input(images[i:i + batch_size], hw))
        maps.append(m)
        scores.append(s)
    if not maps:
        return np.zeros((0, *hw), np.float32), np.zeros((0,), np.float32)
    return np.concatenate(maps).astype(np.float32, copy=False), np.concatenate(scores).astype(np.float32, copy=False)


def map_to_frame(amap: np.ndarray, frame_hw: tuple[int, int]) -> np.ndarray:
    """Resize an (h, w) float anomaly map back to the frame's (H, W) (bilinear)."""
    h, w = int(frame_hw[0]), int(frame_hw[1])
    if amap.shape[:2] == (h, w):
        return amap.astype(np.float32, copy=False)
    return cv2.resize(amap.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)


def aspect_input_hw(frame_hw: tuple[int, int], short_side: int, multiple: int = 32) -> tuple[int, int]:
    """Aspect-preserving input size: shorter side ``short_side``, both sides multiples of ``multiple``."""
    h, w = frame_hw
    if h <= 0 or w <= 0:
        raise ValueError("frame size must be positive")
    s = short_side / min(h, w)
    rnd = lambda v: max(multiple, int(round(v * s / multiple)) * multiple)  # noqa: E731
    return rnd(h), rnd(w)
