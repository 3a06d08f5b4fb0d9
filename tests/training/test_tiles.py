"""Random training crops for tiled models."""

from __future__ import annotations

import numpy as np
import pytest

from training.tiles import crops_from_images, random_crops


def test_crops_have_the_input_size_come_from_the_image_and_are_seeded() -> None:
    img = np.random.default_rng(0).integers(0, 255, (300, 500, 3), dtype=np.uint8)
    a = random_crops(img, 64, 5, np.random.default_rng(1))
    b = random_crops(img, 64, 5, np.random.default_rng(1))
    assert len(a) == 5 and all(c.shape == (64, 64, 3) for c in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    for c in a:  # every crop is a real window of the image
        hits = np.argwhere((img[:, :, 0] == c[0, 0, 0]) & (img[:, :, 1] == c[0, 0, 1]))
        assert any(np.array_equal(img[y:y + 64, x:x + 64], c) for y, x in hits if y + 64 <= 300 and x + 64 <= 500)


def test_small_images_are_upscaled_and_bad_args_refused(tmp_path) -> None:
    import cv2

    small = np.zeros((40, 80, 3), np.uint8)
    assert random_crops(small, 64, 2, np.random.default_rng(0))[0].shape == (64, 64, 3)
    with pytest.raises(ValueError):
        random_crops(small, 8, 1, np.random.default_rng(0))
    p = tmp_path / "a.png"
    cv2.imwrite(str(p), np.zeros((128, 128, 3), np.uint8))
    assert len(crops_from_images([p, small], 32, per_image=3)) == 6
    with pytest.raises(ValueError):
        crops_from_images([], 32)
