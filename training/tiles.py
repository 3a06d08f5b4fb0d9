"""Training data for tiled inference: random crops at the model input size from high-res normals.

A model served through :class:`inference.tiling.TilingEngine` sees tiles at native resolution, so
it must be trained on the same thing - crops of full-resolution normal frames, not whole frames
squashed to the input size (which would teach it a scale it never sees in production). Crops are
drawn uniformly over each image with a seeded generator, so a training run is reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from training.features import ImageSource, load_rgb


def random_crops(image: np.ndarray, size: int, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``n`` random ``size x size`` crops of an RGB image; an image smaller than ``size`` is upscaled
    (shorter side to ``size``) first, since a tile engine would see it padded at that scale anyway."""
    if size < 16 or n < 1:
        raise ValueError(f"need size >= 16 and n >= 1 (got {size}, {n})")
    h, w = image.shape[:2]
    if min(h, w) < size:
        s = size / min(h, w)
        image = cv2.resize(image, (max(size, round(w * s)), max(size, round(h * s))), interpolation=cv2.INTER_LINEAR)
        h, w = image.shape[:2]
    ys = rng.integers(0, h - size + 1, size=n)
    xs = rng.integers(0, w - size + 1, size=n)
    return [np.ascontiguousarray(image[y:y + size, x:x + size]) for y, x in zip(ys.tolist(), xs.tolist())]


def crops_from_images(sources: Sequence[ImageSource], size: int, per_image: int = 16, seed: int = 0) -> list[np.ndarray]:
    """Random crops of every source (paths or RGB arrays), decoded one at a time (bounded memory per image)."""
    if not sources:
        raise ValueError("no images to crop")
    rng = np.random.default_rng(seed)
    out: list[np.ndarray] = []
    for src in sources:
        out.extend(random_crops(load_rgb(src), size, per_image, rng))
    return out
