"""Image helpers: decoding, heatmap overlay, mask accumulation."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from dashboard import imaging


def _png(img: np.ndarray) -> bytes:
    return cv2.imencode(".png", img)[1].tobytes()


def test_decode_roundtrip_and_errors() -> None:
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[..., 0] = 200  # red in RGB
    back = imaging.decode_image(_png(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)))
    assert back.shape == (4, 6, 3) and back[0, 0].tolist() == [200, 0, 0]
    assert imaging.decode_image(_png(np.full((3, 3), 7, np.uint8)), grayscale=True).tolist() == [[7] * 3] * 3
    with pytest.raises(ValueError, match="empty"):
        imaging.decode_image(b"")
    with pytest.raises(ValueError, match="decoded"):
        imaging.decode_image(b"not an image")


def test_overlay_leaves_cold_regions_and_colours_hot_ones() -> None:
    frame = np.full((20, 30, 3), 100, np.uint8)
    heat = np.zeros((10, 15), np.uint8)
    heat[:, 10:] = 255
    out = imaging.overlay_heatmap(frame, heat, alpha=0.5)
    assert out.shape == frame.shape and out.dtype == np.uint8
    assert (out[:, :15] == 100).all()  # zero heat: the frame unchanged
    assert not (out[:, 22:] == 100).all()  # hot: blended with the colour map
    mask = np.zeros((20, 30), np.uint8)
    mask[5:15, 5:15] = 255
    outlined = imaging.overlay_heatmap(frame, np.zeros((20, 30), np.uint8), mask=mask)
    assert (outlined == 255).all(axis=2).any()  # white outline drawn
    with pytest.raises(ValueError):
        imaging.overlay_heatmap(frame[..., 0], heat)
    with pytest.raises(ValueError):
        imaging.overlay_heatmap(frame, heat, alpha=2)


def test_accumulate_masks_is_the_mean_coverage_on_the_grid() -> None:
    a = np.zeros((40, 80), np.uint8)
    a[:, :40] = 255  # left half
    b = np.zeros((20, 20), np.uint8)  # a different frame size: resized to the same grid
    b[:10, :] = 255  # top half
    heat, used = imaging.accumulate_masks([_png(a), _png(b), b"garbage"], grid=(4, 2))
    assert used == 2 and heat.shape == (2, 4)
    assert np.allclose(heat, [[1.0, 1.0, 0.5, 0.5], [0.5, 0.5, 0.0, 0.0]])
    empty, n = imaging.accumulate_masks([], grid=(3, 3))
    assert n == 0 and not empty.any()
    with pytest.raises(ValueError):
        imaging.accumulate_masks([], grid=(0, 3))


def test_colorize_shape() -> None:
    img = imaging.colorize(np.array([[0.0, 0.5], [1.0, 0.25]], np.float32), size=(8, 8))
    assert img.shape == (8, 8, 3) and img.dtype == np.uint8
    assert imaging.colorize(np.zeros((2, 2), np.float32)).shape == (2, 2, 3)


def test_map_resolution_heat_and_mask_overlay_the_right_place_on_a_camera_frame() -> None:
    """Evidence is stored at map resolution (e.g. 64x64) for a 5 MP frame: the overlay on the
    bounded preview must put the hot spot where it is in the frame."""
    frame = np.full((2048, 2448, 3), 100, np.uint8)
    preview = imaging.bounded_preview(frame, 1024)
    assert preview.shape == (857, 1024, 3)
    heat = np.zeros((64, 64), np.uint8)
    heat[48:56, 8:16] = 255                      # lower-left: rows 75-87 %, columns 12-25 %
    mask = (heat > 0).astype(np.uint8) * 255
    out = imaging.overlay_heatmap(preview, heat, mask=mask)
    changed = np.abs(out.astype(int) - preview.astype(int)).sum(axis=2) > 30
    ys, xs = np.nonzero(changed)
    h, w = preview.shape[:2]
    assert 0.70 * h <= ys.min() and ys.max() <= 0.92 * h
    assert 0.08 * w <= xs.min() and xs.max() <= 0.30 * w
    assert imaging.bounded_preview(preview[:100, :200]) is not None and imaging.bounded_preview(preview[:100, :200]).shape == (100, 200, 3)
