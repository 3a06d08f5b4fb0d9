"""Synthetic test images shared by several test packages."""

from __future__ import annotations

import numpy as np


def wavy_texture(seed: int, hw: tuple[int, int] = (128, 128),
                 spot: tuple[slice, slice] | None = None) -> np.ndarray:
    """A periodic grey texture (a repetitive product surface) as RGB uint8; ``spot`` paints a bright
    square there (a defect)."""
    h, w = hw
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = 120 + 40 * np.sin(xx / 2.5 + rng.uniform(0, 6)) * np.cos(yy / 2.5) + rng.normal(0, 3, (h, w))
    if spot is not None:
        img[spot] = 250
    return np.repeat(np.clip(img, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)
