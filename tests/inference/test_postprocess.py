"""Verdict, masks and heatmaps from anomaly maps."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from inference.engines.base import EngineOutput
from inference.postprocess import (
    binary_mask,
    defect_area,
    heat_png,
    heat_u8,
    mask_png,
    verdict,
)


def test_verdict_rule() -> None:
    assert verdict(0.5, 0.5) == "defect"
    assert verdict(0.49, 0.5) == "ok"
    assert verdict(float("nan"), 0.5) == "defect"
    with pytest.raises(ValueError):
        verdict(0.1, float("inf"))


def test_mask_is_resized_to_the_frame_and_thresholded() -> None:
    amap = np.zeros((8, 8), np.float32)
    amap[2:4, 4:6] = 1.0
    mask = binary_mask(amap, 0.5, (32, 64))
    assert mask.shape == (32, 64) and mask.dtype == bool
    ys, xs = np.nonzero(mask)
    assert ys.min() >= 6 and ys.max() <= 17 and xs.min() >= 30 and xs.max() <= 49  # the hot cell, scaled 4x/8x
    assert defect_area(mask) == int(mask.sum()) > 0
    small = binary_mask(amap, 0.5)  # map resolution
    assert small.shape == (8, 8) and defect_area(small) == 4 and defect_area(small, (32, 64)) == 4 * 32


def test_mask_png_round_trip() -> None:
    mask = np.zeros((10, 12), bool)
    mask[3:5, 2:9] = True
    back = cv2.imdecode(np.frombuffer(mask_png(mask), np.uint8), cv2.IMREAD_UNCHANGED)
    assert back.shape == (10, 12) and back.dtype == np.uint8
    assert np.array_equal(back == 255, mask) and set(np.unique(back)) <= {0, 255}


def test_heat_scale_is_zero_to_twice_the_threshold() -> None:
    amap = np.array([[0.0, 0.5, 1.0, 3.0, np.nan]], np.float32)
    assert heat_u8(amap, 0.5).tolist() == [[0, 128, 255, 255, 255]]
    png = heat_png(np.full((4, 4), 0.25, np.float32), 0.5, frame_hw=(8, 6))
    back = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert back.shape == (8, 6) and int(back[0, 0]) == 64
    with pytest.raises(ValueError):
        heat_u8(amap, 0.0)


def _out(scores: list[float], thr: float = 1.0, calibrated: bool = True) -> EngineOutput:
    maps = np.zeros((len(scores), 16, 16), np.float32)
    maps[:, 4:8, 8:12] = 3.0 * thr
    return EngineOutput(np.asarray(scores, np.float32), maps, "v1", thr, 5.0, engine_name="onnx", calibrated=calibrated)


def test_build_row_flagged_frame_keeps_map_resolution_and_original_bytes() -> None:
    from inference.postprocess import build_row
    from ingest.envelope import FrameEnvelope

    env = FrameEnvelope("p", "l", "c", 7, b"\xff\xd8original-bytes", "jpeg", (2048, 2448))
    row = build_row(env, (2048, 2448), _out([2.0, 0.1]), 0, 123.0, 2, "onnx")
    assert row.verdict == "defect" and (row.width, row.height) == (2448, 2048)
    mask = cv2.imdecode(np.frombuffer(row.mask_png, np.uint8), cv2.IMREAD_UNCHANGED)
    heat = cv2.imdecode(np.frombuffer(row.heat_png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert mask.shape == heat.shape == (16, 16)           # map resolution, not 5 MP
    assert row.frame_bytes == env.payload                  # the camera's bytes, never re-encoded
    assert row.defect_area_px == round(16 * 2048 * 2448 / 256)  # in frame pixels
    ok = build_row(env, (2048, 2448), _out([2.0, 0.1]), 1, 123.0, 2, "onnx")
    assert ok.verdict == "ok" and ok.mask_png is None and ok.heat_png is None and ok.keep_as_normal


def test_build_row_marks_an_uncalibrated_threshold() -> None:
    from inference.postprocess import build_row
    from ingest.envelope import FrameEnvelope

    env = FrameEnvelope("p", "l", "c", 7, b"\xff\xd8x", "jpeg")
    assert build_row(env, (64, 64), _out([0.9], calibrated=False), 0, 1.0, 1, "zero-shot").engine == "zero-shot:warmup"


def test_heatmap_png_is_lossless_at_its_fast_level() -> None:
    """The heatmap PNG is written at a low zlib level for CPU; the pixels are exactly :func:`heat_u8`'s."""
    from inference.postprocess import HEAT_PNG_LEVEL

    rng = np.random.default_rng(3)
    amap = cv2.GaussianBlur(rng.random((256, 256), dtype=np.float32), (0, 0), 6) * 2.0
    png = heat_png(amap, 0.5)
    back = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert HEAT_PNG_LEVEL == 1 and np.array_equal(back, heat_u8(amap, 0.5))
