"""ONNX Runtime engine vs the PyTorch reference on real images, through ``engine.infer``."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from inference.engines.base import Engine
from inference.engines.local import load_local_engine
from inference.engines.onnx_engine import OnnxEngine, session_options
from inference.engines.torch_engine import TorchEngine
from inference.onnx_export import ONNX_FILE
from tests.inference.onnx_fixtures import RealModel, real_model  # noqa: F401 - fixture

# Float32 reorderings (fused convs, different GEMM kernels) differ by ~1e-6 of the map's scale;
# 1e-4 of the scale is far below anything a threshold could notice.
REL_TOL = 1e-4


@pytest.fixture(scope="module")
def engines(real_model: RealModel, tmp_path_factory: pytest.TempPathFactory) -> tuple[OnnxEngine, TorchEngine]:  # noqa: F811
    dst = tmp_path_factory.mktemp("onnx-engine") / "m"
    shutil.copytree(real_model.model_dir, dst, ignore=shutil.ignore_patterns("model.onnx*"))
    return OnnxEngine(dst, threads=2, batch_size=3), TorchEngine(dst, threads=2)


def test_onnx_matches_torch_on_real_frames(engines: tuple[OnnxEngine, TorchEngine], real_model: RealModel) -> None:  # noqa: F811
    onnx_e, torch_e = engines
    frames = real_model.normal + real_model.anomalous  # original, non-square sizes: the shared resize runs
    a, b = onnx_e.infer("p", frames), torch_e.infer("p", frames)
    assert a.maps.shape == b.maps.shape == (len(frames), 128, 128)
    scale = float(np.abs(b.maps).max())
    map_diff = float(np.abs(a.maps - b.maps).max())
    score_diff = float(np.abs(a.scores - b.scores).max())
    print(f"\nONNX vs PyTorch on {len(frames)} real frames of {real_model.category}: max|map diff| {map_diff:.3g} "
          f"(map max {scale:.3g}), max|score diff| {score_diff:.3g}")
    assert map_diff <= REL_TOL * scale
    assert score_diff <= REL_TOL * float(np.abs(b.scores).max())
    assert a.model_version == b.model_version and a.threshold == b.threshold
    assert a.maps.dtype == np.float32 and a.scores.dtype == np.float32


def test_batch_size_does_not_change_results(engines: tuple[OnnxEngine, TorchEngine], real_model: RealModel) -> None:  # noqa: F811
    onnx_e, _ = engines
    frames = real_model.normal + real_model.anomalous
    whole = onnx_e.infer("p", frames)  # batches of 3, 3, 2
    single = [onnx_e.infer("p", [f]) for f in frames]
    np.testing.assert_allclose(np.concatenate([s.scores for s in single]), whole.scores, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.concatenate([s.maps for s in single]), whole.maps, rtol=1e-5, atol=1e-6)


def test_empty_batch_and_bad_input(engines: tuple[OnnxEngine, TorchEngine]) -> None:
    onnx_e, _ = engines
    out = onnx_e.infer("p", [])
    assert out.scores.shape == (0,) and out.maps.shape == (0, 128, 128)
    with pytest.raises(ValueError, match="expected input"):
        onnx_e.model.run(np.zeros((1, 3, 64, 64), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        onnx_e.infer("p", [np.zeros((10, 10, 3), np.float32)])


def test_auto_prefers_onnx_and_reuses_the_export(real_model: RealModel, tmp_path: Path) -> None:  # noqa: F811
    dst = tmp_path / "m"
    shutil.copytree(real_model.model_dir, dst, ignore=shutil.ignore_patterns("model.onnx*"))
    eng = load_local_engine(dst, "auto", threads=1)
    assert isinstance(eng, OnnxEngine) and isinstance(eng, Engine)
    assert (dst / ONNX_FILE).is_file()
    stamp = (dst / ONNX_FILE).stat().st_mtime_ns
    load_local_engine(dst, "onnx", threads=1)
    assert (dst / ONNX_FILE).stat().st_mtime_ns == stamp


def test_session_options_follow_threads() -> None:
    import onnxruntime as ort

    so = session_options(3)
    assert so.intra_op_num_threads == 3 and so.inter_op_num_threads == 1
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert so.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert session_options(0).intra_op_num_threads >= 1


def test_int8_engine_serves_the_quantised_copy_close_to_fp32(real_model: RealModel, tmp_path: Path) -> None:  # noqa: F811
    dst = tmp_path / "m"
    shutil.copytree(real_model.model_dir, dst, ignore=shutil.ignore_patterns("model.onnx*", "model.int8.onnx*"))
    fp32 = load_local_engine(dst, "onnx", threads=1)
    int8 = load_local_engine(dst, "onnx-int8", threads=1)
    assert int8.name == "onnx-int8" and str(int8.model.onnx_path).endswith(".int8.onnx")
    assert int8.model.onnx_path.stat().st_size < fp32.model.onnx_path.stat().st_size
    rng = np.random.default_rng(0)
    ims = [rng.integers(0, 255, (96, 128, 3), dtype=np.uint8) for _ in range(3)]
    a, b = fp32.infer("p", ims), int8.infer("p", ims)
    assert b.maps.shape == a.maps.shape and b.model_version == a.model_version and b.threshold == a.threshold
    assert np.allclose(a.scores, b.scores, atol=0.05)  # quantised weights: close, not equal
