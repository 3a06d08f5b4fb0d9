import numpy as np
import pytest

from inference.preprocess import as_rgb, aspect_input_hw, batch_to_input, map_to_frame, to_input


def test_to_input_layout_range_and_size():
    img = np.full((50, 70, 3), 255, np.uint8)
    img[..., 1] = 0
    x = to_input(img, (32, 48))
    assert x.shape == (3, 32, 48) and x.dtype == np.float32
    assert np.allclose(x[0], 1.0) and np.allclose(x[1], 0.0)


def test_grayscale_and_bad_input():
    g = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert as_rgb(g).shape == (3, 4, 3) and (as_rgb(g)[..., 2] == g).all()
    with pytest.raises(ValueError):
        as_rgb(np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError):
        as_rgb(np.zeros((3, 4, 2), np.uint8))


def test_batch_of_mixed_sizes_and_map_back():
    b = batch_to_input([np.zeros((10, 20, 3), np.uint8), np.zeros((40, 30), np.uint8)], (16, 16))
    assert b.shape == (2, 3, 16, 16)
    m = map_to_frame(np.ones((16, 16), np.float32), (40, 30))
    assert m.shape == (40, 30) and np.allclose(m, 1.0)


def test_aspect_input_hw():
    assert aspect_input_hw((320, 786), 256) == (256, 640)
    assert aspect_input_hw((427, 320), 256) == (352, 256)
