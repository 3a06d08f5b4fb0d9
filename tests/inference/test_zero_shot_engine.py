"""ZeroShotEngine (both methods) and the rolling per-product threshold."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from inference.engines.base import Engine
from inference.engines.zero_shot import ZeroShotEngine
from inference.zero_shot.inp_distance import inp_distance_tokens
from inference.zero_shot.threshold import RollingThreshold
from lineinspect.errors import ConfigError
from tests.images import wavy_texture


def test_rolling_threshold_warms_up_then_uses_the_quantile() -> None:
    th = RollingThreshold(quantile=0.9, window=20, min_scores=10, robust_min=4, warmup_threshold=0.0)
    e = th.estimate("p", pending=np.array([1.0, 2.0]))
    assert (e.value, e.calibrated, e.source) == (0.0, False, "default-warmup")
    e = th.estimate("p", pending=np.array([1.0, 1.1, 0.9, 1.2, 9.0]))
    assert e.source == "robust-warmup" and not e.calibrated and 1.0 < e.value < 9.0
    th.update("p", np.arange(30, dtype=float))           # window keeps the last 20: 10..29
    e = th.estimate("p")
    assert e.calibrated and e.source == "rolling-quantile" and e.n == 20
    assert e.value == pytest.approx(np.quantile(np.arange(10, 30), 0.9))
    assert th.count("other") == 0 and th.estimate("other").source == "default-warmup"


def test_rolling_threshold_rejects_bad_settings() -> None:
    with pytest.raises(ValueError):
        RollingThreshold(quantile=1.0)
    with pytest.raises(ValueError):
        RollingThreshold(window=10, min_scores=11)


def test_inp_distance_is_zero_on_a_prototype_and_one_when_orthogonal() -> None:
    inps = torch.eye(4)[None, :2]                     # prototypes e0, e1
    tokens = torch.stack([torch.eye(4)[0], torch.eye(4)[3], torch.eye(4)[1] * 5])[None]
    d = inp_distance_tokens(tokens, inps)[0]
    assert d.tolist() == pytest.approx([0.0, 1.0, 0.0], abs=1e-6)
    with pytest.raises(ValueError):
        inp_distance_tokens(tokens, torch.zeros(1, 2, 3))


def _texture(seed: int, spot: bool = False) -> np.ndarray:
    return wavy_texture(seed, (96, 128), (slice(40, 52), slice(60, 72)) if spot else None)


def test_grnr_engine_interface_version_and_threshold_marking() -> None:
    eng = ZeroShotEngine(method="grnr", input_hw=(128, 128), min_scores=6, window=10)
    assert isinstance(eng, Engine) and eng.name == "zero-shot"
    out = eng.infer("new-product", [_texture(0), _texture(1)])
    assert out.model_version == "zero-shot"
    assert out.scores.shape == (2,) and out.maps.shape == (2, 128, 128) and out.maps.dtype == np.float32
    assert not out.calibrated and out.threshold_source == "default-warmup"
    eng.infer("new-product", [_texture(s) for s in range(2, 6)])
    out = eng.infer("new-product", [_texture(9, spot=True)])
    assert out.calibrated and out.threshold_source == "rolling-quantile"
    assert out.scores[0] > out.threshold                      # the spot stands out against the product's history
    assert eng.infer("another", [_texture(3)]).calibrated is False   # windows are per product


def test_inp_engine_needs_a_model_dir_and_scores_with_it(tmp_path) -> None:
    from inference.model.inp_former import InpConfig, InpFormer
    from inference.model_dir import save_model_dir

    with pytest.raises(ConfigError):
        ZeroShotEngine(method="inp")
    with pytest.raises(ConfigError):
        ZeroShotEngine(method="nope")
    torch.manual_seed(0)
    model = InpFormer(InpConfig(backbone="random_tiny", input_hw=(64, 64), width=32, head_dim=16, decoder_blocks=2))
    save_model_dir(tmp_path / "m", model.eval(), {"version": "other-products"}, {"threshold": 1.0})
    eng = ZeroShotEngine(method="inp", model_dir=tmp_path / "m")
    assert eng.input_hw == (64, 64) and eng.source_version == "other-products"
    out = eng.infer("p", [_texture(0), _texture(1)])
    assert out.model_version == "zero-shot" and out.maps.shape == (2, 64, 64)
    assert np.all(np.isfinite(out.scores)) and np.all(out.maps >= -1e-6)
