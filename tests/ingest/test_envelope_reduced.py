"""Decode for the consumer's purpose: JPEG DCT scale choice, one-channel frames, PNG, tiling, bombs."""

from __future__ import annotations

import numpy as np
import pytest

from inference.preprocess import resize_rgb
from ingest.envelope import (
    FrameEnvelope,
    PoisonFrame,
    choose_jpeg_scale,
    decode_frame,
    decode_image,
    encode_image,
)


@pytest.mark.parametrize("src, target, want", [
    # the coarsest scale that covers the input (oversample=1): the fastest, not the most faithful
    ((2048, 2448), (256, 256), 8),      # 5 MP -> 256: 256x306 at 1/8 still covers the input
    ((2049, 2448), (256, 256), 8),      # libjpeg rounds up: ceil(2049/8) = 257
    ((2047, 2448), (256, 256), 8),      # ceil(2047/8) = 256 still covers 256
    ((2040, 2448), (256, 256), 4),      # ceil(2040/8) = 255 < 256 -> 1/4
    ((3000, 4000), (256, 256), 8),      # 12 MP
    ((2048, 2448), (512, 512), 4),      # bigger model input
    ((2048, 2448), (1024, 1024), 2),
    ((2048, 2448), (1025, 1024), 1),    # nothing but full resolution covers it
    ((320, 427), (256, 256), 1),        # the developer set's frames: already close to model size
    ((600, 800), (256, 256), 2),
    ((2048, 2448), None, 1),            # no target (tiling): full resolution
])
def test_scale_choice_coarsest(src, target, want) -> None:
    assert choose_jpeg_scale(src, target, oversample=1.0) == want


@pytest.mark.parametrize("src, target, want", [
    # oversample 2 (the default before the 3-seed AUROC run): each axis a whole multiple of the input
    # (exact block sums) or >= 2x it
    ((2048, 2448), (256, 256), 4),      # 2448/8 = 306 is neither 256 nor >= 512 -> 1/4 (512 x 612)
    ((2048, 2048), (256, 256), 8),      # 2048/8 = 256 on both axes: whole 8x8 blocks, exact
    ((4096, 4096), (256, 256), 8),      # 512 = 2 x 256 on both axes
    ((2048, 4096), (256, 256), 8),      # 256 (exact) x 512 (exact, and 2x)
    ((2049, 2048), (256, 256), 4),      # ceil(2049/8) = 257: not whole blocks, under 2x -> 1/4 (513 >= 512)
    ((3000, 4096), (256, 256), 4),      # 12 MP: 375 is not 2x -> 750 x 1024
    ((3648, 5472), (256, 256), 4),      # 20 MP: 456 x 684 at 1/8, 456 < 512 -> 1/4
    ((4096, 5120), (256, 256), 8),      # 21 MP: 512 (exact) x 640 (>= 2x)
    ((2048, 2448), (512, 512), 2),
    ((2048, 2448), (1024, 1024), 1),    # 1/2 gives 1024 (exact) x 1224 (not 2x): full resolution
    ((600, 800), (256, 256), 1),        # 300 x 400 at 1/2 is under 2x and not a multiple
    ((512, 512), (256, 256), 2),        # exact at 1/2
    ((2048, 2448), None, 1),
])
def test_scale_choice_two_x(src, target, want) -> None:
    assert choose_jpeg_scale(src, target, oversample=2.0) == want


@pytest.mark.parametrize("src, target, want", [
    # the default (4): each axis a whole multiple of the input (exact block sums) or >= 4x it
    ((2048, 2448), (256, 256), 2),      # 1/4 gives 512 (exact) x 612 (< 1024) -> 1/2 (1024 x 1224)
    ((2048, 2048), (256, 256), 8),      # whole 8x8 blocks per output pixel on both axes: exact
    ((4096, 4096), (256, 256), 8),
    ((2049, 2048), (256, 256), 2),      # 257 / 513 are neither exact nor 4x; 1025 >= 1024
    ((3000, 4096), (256, 256), 2),      # 12 MP: 750 < 1024 at 1/4 -> 1500 x 2048
    ((3648, 5472), (256, 256), 2),      # 20 MP: 912 < 1024 at 1/4
    ((4096, 5120), (256, 256), 4),      # 21 MP: 1024 (exact) x 1280 (>= 4x)
    ((2048, 2448), (512, 512), 1),      # 1/2 gives 1224 wide: neither a multiple of 512 nor 4x
    ((512, 512), (256, 256), 2),        # exact at 1/2
    ((2048, 2448), None, 1),
])
def test_scale_choice_default_faithful(src, target, want) -> None:
    assert choose_jpeg_scale(src, target) == want


def test_scale_choice_oversample_and_bad_sizes() -> None:
    assert choose_jpeg_scale((2048, 2448), (256, 256), oversample=2.0) == 4
    assert choose_jpeg_scale((2048, 2448), (256, 256), oversample=4.0) == 2
    with pytest.raises(ValueError):
        choose_jpeg_scale((0, 10), (256, 256))
    with pytest.raises(ValueError):
        choose_jpeg_scale((2048, 2448), (256, 256), oversample=0.5)


def _frame(h: int, w: int, mono: bool = False) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    r = ((xx * 255) // w).astype(np.uint8)
    g = ((yy * 255) // h).astype(np.uint8)
    b = (((xx + yy) // 7) % 256).astype(np.uint8)
    return r if mono else np.stack([r, g, b], axis=2)


def _env(data: bytes, enc: str = "jpeg", shape: tuple[int, ...] = ()) -> FrameEnvelope:
    return FrameEnvelope("p", "l", "c", 1, data, enc, shape)  # type: ignore[arg-type]


def test_reduced_jpeg_matches_full_decode_then_resize() -> None:
    img = _frame(1024, 1224)
    env = _env(encode_image(img, "jpeg", 92), shape=img.shape)
    ref = resize_rgb(decode_image(env), (128, 128))
    for oversample, scale in ((2.0, 4), (1.0, 8)):  # 153 px wide at 1/8 is neither 128 nor 2x: 1/4 by default
        got = decode_frame(env, target_hw=(128, 128), oversample=oversample)
        assert got.scale == scale and got.frame_hw == (1024, 1224)
        assert got.image.shape == (128, 128, 3)
        assert np.abs(got.image.astype(int) - ref.astype(int)).mean() < 2.0


def _edges(h: int, w: int) -> np.ndarray:
    """Sharp-edged gray structure (random-width stripes and blocks): what moves under a partial-block resize."""
    rng = np.random.default_rng(0)
    cols = np.repeat(rng.integers(0, 2, w // 3 + 1) * 200 + 20, 3)[:w]
    rows = np.repeat(rng.integers(0, 2, h // 5 + 1) * 60, 5)[:h]
    return np.clip(cols[None, :] + rows[:, None], 0, 255).astype(np.uint8)


def test_default_scale_is_faithful_where_the_coarsest_is_not() -> None:
    """1/8 of 1224 px is 153 for a 128 input: a 1.2:1 area resize of 8-px block means, which moves edges;
    the default's rule (whole multiples or >= 2x) keeps the input close to the full decode's."""
    img = _edges(1024, 1224)
    env = _env(encode_image(img, "jpeg", 92), shape=img.shape)
    ref = resize_rgb(decode_image(env), (128, 128)).astype(int)
    coarse = decode_frame(env, target_hw=(128, 128), oversample=1.0).image.astype(int)
    faithful = decode_frame(env, target_hw=(128, 128)).image.astype(int)
    d_coarse, d_faithful = np.abs(coarse - ref[:, :, 0]), np.abs(faithful - ref[:, :, 0])
    assert d_faithful.mean() < 0.6 * d_coarse.mean()
    assert d_faithful.max() < d_coarse.max()


def test_mono_jpeg_decodes_as_one_channel() -> None:
    img = _frame(800, 960, mono=True)
    env = _env(encode_image(img, "jpeg", 92), shape=img.shape)
    got = decode_frame(env, target_hw=(100, 100))
    assert got.image.ndim == 2 and got.image.shape == (100, 100) and got.scale == 2  # 1/4: 200 x 240, not 4x
    ref = resize_rgb(decode_image(env), (100, 100))[:, :, 0]
    assert np.abs(got.image.astype(int) - ref.astype(int)).mean() < 2.0


@pytest.mark.parametrize("mono", [False, True])
def test_png_decoded_once_resized_once(mono: bool) -> None:
    img = _frame(300, 400, mono=mono)
    env = _env(encode_image(img, "png"), "png", img.shape)
    got = decode_frame(env, target_hw=(64, 64))
    assert got.scale == 1 and got.frame_hw == (300, 400)
    assert got.image.shape == ((64, 64) if mono else (64, 64, 3))
    want = resize_rgb(img, (64, 64))  # PNG is lossless: exactly the area resize
    assert np.array_equal(got.image, want)


def test_no_target_keeps_full_resolution_for_tiling() -> None:
    img = _frame(700, 900)
    env = _env(encode_image(img, "jpeg", 92), shape=img.shape)
    got = decode_frame(env, target_hw=None)
    assert got.scale == 1 and got.image.shape == (700, 900, 3)
    assert np.array_equal(got.image, decode_image(env))


def _bomb_jpeg(h: int, w: int) -> bytes:
    """A real small JPEG whose SOF header is rewritten to claim h x w."""
    data = bytearray(encode_image(_frame(32, 32), "jpeg", 90))
    i = data.index(b"\xff\xc0")
    data[i + 5:i + 7] = h.to_bytes(2, "big")
    data[i + 7:i + 9] = w.to_bytes(2, "big")
    return bytes(data)


def test_oversized_header_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    import cv2

    def boom(*_a, **_k):
        raise AssertionError("the decoder ran on an oversized frame")

    monkeypatch.setattr(cv2, "imdecode", boom)
    for target in ((256, 256), None):
        with pytest.raises(PoisonFrame) as e:
            decode_frame(_env(_bomb_jpeg(60000, 60000)), max_pixels=40_000_000, target_hw=target)
        assert e.value.reason == "oversized"
    with pytest.raises(PoisonFrame) as e:
        decode_frame(_env(_bomb_jpeg(100, 100), shape=(9000, 9000)), max_pixels=1_000_000, target_hw=(64, 64))
    assert e.value.reason == "oversized"


def test_declared_shape_must_match_the_header() -> None:
    img = _frame(200, 240)
    with pytest.raises(PoisonFrame) as e:
        decode_frame(_env(encode_image(img, "jpeg"), shape=(100, 240)), target_hw=(64, 64))
    assert e.value.reason == "shape_mismatch"


def test_default_oversample_is_the_settings_default_and_keeps_half_scale_at_5_mp() -> None:
    """One default (ingest.envelope.DECODE_OVERSAMPLE) for every decoder and the settings: 4, so a 5 MP
    frame for a 256 px model decodes at 1/2 (the 3-seed AUROC run; benchmarks/RESULTS.md camera)."""
    from ingest.envelope import DECODE_OVERSAMPLE
    from lineinspect.settings import Settings

    assert Settings().decode_oversample == DECODE_OVERSAMPLE == 4.0
    assert choose_jpeg_scale((2048, 2448), (256, 256)) == 2
    assert choose_jpeg_scale((3000, 4096), (256, 256)) == 2
    assert choose_jpeg_scale((2048, 2048), (256, 256)) == 8  # whole multiples stay exact at any scale
