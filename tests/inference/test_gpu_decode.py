"""The PyTorch engine's device-decode path: on a machine without CUDA it falls back to the CPU
decode and must give the same results as decoding first and calling ``infer``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from inference.engines.torch_engine import TorchEngine
from inference.gpu_decode import cuda_decode_available, frames_to_input
from inference.model.inp_former import InpConfig, InpFormer
from inference.model_dir import save_model_dir
from ingest.envelope import FrameEnvelope, PoisonFrame, decode_frame, encode_image


@pytest.fixture()
def engine(tmp_path) -> TorchEngine:
    torch.manual_seed(1)
    m = InpFormer(InpConfig(backbone="random_tiny", input_hw=(64, 64), width=32, head_dim=16, decoder_blocks=2))
    return TorchEngine(save_model_dir(tmp_path / "m", m, {"categories": ["a/b"], "seed": 1}, {"threshold": 0.5}))


def _envs() -> list[FrameEnvelope]:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (60, 70, 3), dtype=np.uint8)
    big = np.kron(base, np.ones((8, 8, 1), np.uint8))  # 480x560, smooth enough for JPEG
    return [FrameEnvelope("p", "l", "c", i, encode_image(np.roll(big, 7 * i, 1), "jpeg", 92), "jpeg") for i in range(3)]


def test_cpu_fallback_matches_decode_then_infer(engine: TorchEngine) -> None:
    envs = _envs()
    assert engine.device == "cpu" and not cuda_decode_available(engine.device)
    out, geoms, path = engine.infer_encoded("p", envs)
    assert path == "cpu" and geoms == [(480, 560)] * 3 and out.engine_name == "torch+cpudecode"
    ref = engine.infer("p", [decode_frame(e, target_hw=(64, 64)).image for e in envs])
    np.testing.assert_allclose(out.scores, ref.scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.maps, ref.maps, rtol=1e-5, atol=1e-5)


def test_unavailable_cuda_device_falls_back_and_the_header_guard_runs_first() -> None:
    envs = _envs()
    if not torch.cuda.is_available():
        assert not cuda_decode_available("cuda")
    x, _, path = frames_to_input(envs, (32, 32), "cpu")
    assert path == "cpu" and tuple(x.shape) == (3, 3, 32, 32) and x.dtype == torch.float32
    with pytest.raises(PoisonFrame) as e:
        frames_to_input(envs, (32, 32), "cpu", max_pixels=1000)
    assert e.value.reason == "oversized"
