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


def _reference_input(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """The formula before the in-place fill: replicate to RGB, resize, convert, scale, transpose."""
    from inference.preprocess import resize_rgb

    x = resize_rgb(as_rgb(image), hw).astype(np.float32) * (1.0 / 255.0)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


@pytest.mark.parametrize("shape", [(24, 32), (24, 32, 1), (24, 32, 3), (24, 32, 4), (40, 30), (11, 50, 3), (12, 16)])
def test_batch_input_is_bitwise_the_rgb_formula(shape: tuple[int, ...]) -> None:
    """One-channel frames at the input size take the fast path (scaled once, copied to three planes);
    every path gives exactly the float32 values of replicating to RGB first."""
    rng = np.random.default_rng(len(shape) * 100 + shape[0])
    img = rng.integers(0, 256, shape, dtype=np.uint8)
    hw = (24, 32)
    got = batch_to_input([img, img], hw)
    assert got.dtype == np.float32 and got.shape == (2, 3, 24, 32) and got.flags.c_contiguous
    want = _reference_input(img, hw)
    assert np.array_equal(got[0], want) and np.array_equal(got[1], want)
    assert np.array_equal(to_input(img, hw), want)


def test_mono_fast_path_planes_are_equal_and_in_range() -> None:
    g = np.array([[0, 51, 255]], np.uint8)
    x = to_input(g, (1, 3))
    assert np.array_equal(x[0], x[1]) and np.array_equal(x[1], x[2])
    assert x[0, 0, 0] == 0.0 and x[0, 0, 2] == np.float32(255) * np.float32(1 / 255) and abs(x[0, 0, 1] - 0.2) < 1e-6


def test_bad_frames_still_refused() -> None:
    with pytest.raises(ValueError):
        batch_to_input([np.zeros((24, 32), np.float32)], (24, 32))
    with pytest.raises(TypeError):
        batch_to_input([[[0, 1]]], (24, 32))  # type: ignore[list-item]
    assert batch_to_input([], (4, 5)).shape == (0, 3, 4, 5)
