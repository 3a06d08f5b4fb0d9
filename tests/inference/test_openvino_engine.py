"""OpenVINO engine: parity with ONNX Runtime and PyTorch on a real model, batching, local:// wiring."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from inference.engines.base import Engine, decode_hw
from inference.engines.local import load_local_engine
from inference.engines.onnx_engine import OnnxEngine
from inference.engines.openvino_engine import OpenVinoEngine
from inference.engines.torch_engine import TorchEngine
from tests.inference.onnx_fixtures import RealModel, real_model  # noqa: F401 - fixture

REL_TOL = 1e-4  # as for ONNX Runtime: float reorderings only


@pytest.fixture(scope="module")
def engines(real_model: RealModel, tmp_path_factory: pytest.TempPathFactory) -> tuple[OpenVinoEngine, OnnxEngine, TorchEngine]:  # noqa: F811
    dst = tmp_path_factory.mktemp("ov-engine") / "m"
    shutil.copytree(real_model.model_dir, dst, ignore=shutil.ignore_patterns("model.onnx*"))
    return (OpenVinoEngine(dst, threads=2, batch_size=3), OnnxEngine(dst, threads=2, batch_size=3),
            TorchEngine(dst, threads=2))


def test_openvino_matches_onnx_runtime_and_torch(engines, real_model: RealModel) -> None:  # noqa: F811
    ov_e, onnx_e, torch_e = engines
    frames = real_model.normal + real_model.anomalous
    a, o, t = ov_e.infer("p", frames), onnx_e.infer("p", frames), torch_e.infer("p", frames)
    assert a.maps.shape == t.maps.shape == (len(frames), 128, 128)
    for ref in (o, t):
        scale = float(np.abs(ref.maps).max())
        assert float(np.abs(a.maps - ref.maps).max()) <= REL_TOL * scale
        assert float(np.abs(a.scores - ref.scores).max()) <= REL_TOL * float(np.abs(ref.scores).max())
    print(f"\nOpenVINO vs ORT max|score diff| {float(np.abs(a.scores - o.scores).max()):.3g}, "
          f"vs torch {float(np.abs(a.scores - t.scores).max()):.3g}")
    assert a.model_version == t.model_version and a.threshold == t.threshold
    assert a.maps.dtype == np.float32 and a.scores.dtype == np.float32
    assert isinstance(ov_e, Engine) and ov_e.name == "openvino" and decode_hw(ov_e, "p") == (128, 128)


def test_openvino_batching_empty_and_bad_input(engines, real_model: RealModel) -> None:  # noqa: F811
    ov_e = engines[0]
    frames = real_model.normal + real_model.anomalous
    whole = ov_e.infer("p", frames)
    single = np.concatenate([ov_e.infer("p", [f]).scores for f in frames])
    np.testing.assert_allclose(single, whole.scores, rtol=1e-5, atol=1e-6)
    assert ov_e.infer("p", []).maps.shape == (0, 128, 128)
    with pytest.raises(ValueError, match="expected input"):
        ov_e.model.run(np.zeros((1, 3, 64, 64), np.float32))


def test_local_openvino_kind(real_model: RealModel, tmp_path: Path) -> None:  # noqa: F811
    dst = tmp_path / "m"
    shutil.copytree(real_model.model_dir, dst, ignore=shutil.ignore_patterns("model.onnx*"))
    eng = load_local_engine(dst, "openvino", threads=1)
    assert isinstance(eng, OpenVinoEngine)
    eng.close()
