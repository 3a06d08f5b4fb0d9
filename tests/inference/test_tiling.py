"""Tiling: grid coverage, blending, spot reconstruction at full resolution, chunked memory bound."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inference.engines.base import EngineOutput
from inference.tiling import (
    TilingEngine,
    blend_window,
    calibrate_tiled,
    maybe_tiled,
    stitch,
    tile_grid,
    tile_starts,
    top_fraction_score,
)


@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 700), w=st.integers(1, 700), t=st.integers(16, 200), ov=st.floats(0.0, 0.9))
def test_tile_grid_covers_the_frame(h: int, w: int, t: int, ov: float) -> None:
    corners = tile_grid((h, w), (t, t), ov)
    cover = np.zeros((h, w), bool)
    for y, x in corners:
        assert y >= 0 and x >= 0 and (y + t <= h or y == 0) and (x + t <= w or x == 0)
        cover[y:y + t, x:x + t] = True
    assert cover.all()
    assert len(set(corners)) == len(corners)


def test_tile_starts_are_flush_and_overlap_as_asked() -> None:
    assert tile_starts(1000, 256, 192) == [0, 192, 384, 576, 744]
    assert tile_starts(256, 256, 128) == [0]
    assert tile_starts(100, 256, 128) == [0]
    with pytest.raises(ValueError):
        tile_grid((10, 10), (4, 4), 1.0)


def test_blend_window_is_positive_and_peaks_in_the_middle() -> None:
    w = blend_window((32, 48))
    assert w.shape == (32, 48) and float(w.min()) > 0
    assert w[16, 24] == pytest.approx(w.max(), rel=1e-3) and w[0, 0] < 0.1


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_stitching_a_constant_gives_the_constant(scale: float) -> None:
    hw, t = (300, 517), (64, 64)
    corners = tile_grid(hw, t, 0.3)
    out = stitch([np.full(t, 0.7, np.float32)] * len(corners), corners, hw, t, scale)
    assert out.shape == (round(300 * scale), round(517 * scale))
    np.testing.assert_allclose(out, 0.7, rtol=1e-5)


def test_stitch_refuses_mismatched_inputs() -> None:
    with pytest.raises(ValueError):
        stitch([np.zeros((8, 8))], [(0, 0), (0, 4)], (12, 8), (8, 8))


class SpotEngine:
    """A fake tile engine: its map is the tile's red channel / 255 at its own input size."""

    name = "spot"

    def __init__(self, input_hw: tuple[int, int] = (64, 64)) -> None:
        self.input_hw = input_hw
        self.calls: list[int] = []

    def infer(self, product: str, images: list[np.ndarray]) -> EngineOutput:
        self.calls.append(len(images))
        for im in images:
            assert im.shape[:2] == self.input_hw
        maps = np.stack([im[:, :, 0].astype(np.float32) / 255.0 for im in images]) if images else np.zeros((0, *self.input_hw), np.float32)
        return EngineOutput(maps.reshape(len(images), -1).max(1) if images else np.zeros(0, np.float32),
                            maps, "v1", 0.5, 1.0)

    def close(self) -> None:
        pass


def test_spot_defect_is_reconstructed_at_full_resolution() -> None:
    frame = np.zeros((700, 1100, 3), np.uint8)
    frame[400:406, 800:806, 0] = 255                     # a 6x6 px defect in a 1100 px frame
    eng = TilingEngine(SpotEngine((64, 64)), overlap=0.25, chunk=7)
    out = eng.infer("p", [frame])
    m = out.maps[0]
    assert m.shape == (700, 1100)
    np.testing.assert_allclose(m[400:406, 800:806], 1.0, atol=1e-5)
    m2 = m.copy()
    m2[400:406, 800:806] = 0
    assert float(m2.max()) < 1e-6
    assert out.model_version == "v1" and out.threshold == 0.5
    k = int(np.ceil(64 * 64 * 0.01))                      # top 1% of a tile's area (41 px)
    assert out.scores[0] == pytest.approx(36 / k, rel=1e-4)
    frame_rule = TilingEngine(SpotEngine((64, 64)), overlap=0.25, score_area="frame").infer("p", [frame])
    assert frame_rule.scores[0] == pytest.approx(36 / int(np.ceil(700 * 1100 * 0.01)), rel=1e-4)
    # the whole-frame alternative: downscaled to one 64 px input the spot is below one pixel
    small = SpotEngine((64, 64)).infer("p", [cv2.resize(frame, (64, 64), interpolation=cv2.INTER_AREA)])
    assert float(small.maps[0].max()) < 0.2


def test_chunking_bounds_calls_and_live_accumulators() -> None:
    inner = SpotEngine((32, 32))
    frames = [np.zeros((200, 150, 3), np.uint8) for _ in range(5)]
    n_per = len(tile_grid((200, 150), (32, 32), 0.5))
    eng = TilingEngine(inner, overlap=0.5, chunk=10)
    out = eng.infer("p", frames)
    assert out.maps.shape == (5, 200, 150)
    assert max(inner.calls) <= 10 and sum(inner.calls) == 5 * n_per
    assert len(inner.calls) == int(np.ceil(5 * n_per / 10))
    assert eng.stats.tiles == 5 * n_per and eng.stats.peak_live_frames <= 2   # chunk < tiles per frame


def test_small_frames_mixed_sizes_and_empty_batches() -> None:
    eng = TilingEngine(SpotEngine((64, 64)), threshold=0.9)
    tiny = np.full((20, 30, 3), 255, np.uint8)
    big = np.zeros((90, 130, 3), np.uint8)
    out = eng.infer("p", [tiny, big])
    assert out.maps.shape == (2, 20, 30) and out.threshold == 0.9
    np.testing.assert_allclose(out.maps[0], 1.0, atol=1e-5)
    assert eng.infer("p", []).scores.shape == (0,)


def test_calibrate_and_setting_switch() -> None:
    eng = TilingEngine(SpotEngine((32, 32)))
    frames = [np.full((64, 64, 3), v, np.uint8) for v in (10, 20, 30)]
    thr = calibrate_tiled(eng, "p", frames, quantile=1.0, margin=1.0)
    assert thr == pytest.approx(30 / 255, rel=1e-4)
    assert top_fraction_score(np.arange(100, dtype=np.float32), 0.02) == pytest.approx(98.5)
    assert top_fraction_score(np.arange(100, dtype=np.float32), 0.01, area=400) == pytest.approx(97.5)
    with pytest.raises(ValueError):
        TilingEngine(SpotEngine(), score_area="half")

    class S:
        tile = True

    inner = SpotEngine()
    assert isinstance(maybe_tiled(inner, S()), TilingEngine)
    S.tile = False
    assert maybe_tiled(inner, S()) is inner
