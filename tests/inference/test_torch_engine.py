import json

import numpy as np
import pytest
import torch

from inference.engines.base import EngineOutput
from inference.engines.local import load_local_engine
from inference.engines.torch_engine import TorchEngine
from inference.model.inp_former import InpConfig, InpFormer
from inference.model_dir import ModelDirError, load_model_dir, save_model_dir
from lineinspect import model_meta
from lineinspect.errors import ConfigError


@pytest.fixture()
def model_dir(tmp_path):
    torch.manual_seed(1)
    m = InpFormer(InpConfig(backbone="random_tiny", input_hw=(64, 64), width=32, head_dim=16, decoder_blocks=2))
    return save_model_dir(tmp_path / "m", m, {"categories": ["a/b"], "seed": 1}, {"threshold": 0.5}), m


def test_round_trip_same_outputs(model_dir):
    path, m = model_dir
    lm = load_model_dir(path)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(lm.module(x)[1], m.eval()(x)[1])
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["format_version"] == model_meta.FORMAT_VERSION and cfg["categories"] == ["a/b"] and cfg["input_hw"] == [64, 64]
    assert lm.threshold == 0.5 and len(lm.version) == 12


def test_checksum_mismatch_is_a_clear_error(model_dir):
    path, _ = model_dir
    with open(path / "weights.pt", "ab") as fh:
        fh.write(b"x")
    with pytest.raises(ModelDirError, match="checksum"):
        load_model_dir(path)


def test_missing_files_and_save_needs_threshold(model_dir, tmp_path):
    path, m = model_dir
    (path / "calibration.json").unlink()
    with pytest.raises(ModelDirError, match="calibration.json"):
        load_model_dir(path)
    with pytest.raises(ValueError):
        save_model_dir(tmp_path / "x", m, {}, {})


def test_torch_engine_scores_frames_of_any_size(model_dir):
    path, _ = model_dir
    eng = load_local_engine(path, "torch")
    assert isinstance(eng, TorchEngine)
    out = eng.infer("p", [np.zeros((50, 90, 3), np.uint8), np.full((64, 64), 200, np.uint8)])
    assert isinstance(out, EngineOutput)
    assert out.scores.shape == (2,) and out.maps.shape == (2, 64, 64) and out.scores.dtype == np.float32
    assert out.threshold == 0.5 and out.model_version == eng.loaded.version
    with pytest.raises(ConfigError):
        load_local_engine(path, "tensorrt")
