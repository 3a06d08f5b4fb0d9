"""The PyTorch engine's device-decode path: on a machine without CUDA it falls back to the CPU
decode and must give the same results as decoding first and calling ``infer``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from inference.engines.torch_engine import TorchEngine
from inference.gpu_decode import cuda_decode_available, frames_to_input, jpeg_complete
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


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on a GPU host)")


@needs_cuda
def test_cuda_decode_matches_the_cpu_decode() -> None:
    """nvJPEG + device area resize gives the model the same input as the CPU's DCT-scaled decode,
    up to JPEG decoder rounding and the two resampling orders (on a smooth image: the DCT-scaled
    decode legitimately differs on hard 8-pixel block edges like ``_envs``'s)."""
    import cv2

    envs = [FrameEnvelope("p", "l", "c", e.frame_id, encode_image(cv2.GaussianBlur(decode_frame(e).image, (0, 0), 4), "jpeg", 92), "jpeg")
            for e in _envs()]
    x_gpu, geoms, path = frames_to_input(envs, (64, 64), "cuda")
    x_cpu, _, cpu_path = frames_to_input(envs, (64, 64), "cpu")
    assert path == "gpu" and cpu_path == "cpu" and geoms == [(480, 560)] * 3
    assert x_gpu.device.type == "cuda" and x_gpu.shape == x_cpu.shape
    diff = (x_gpu.cpu() - x_cpu).abs()
    assert float(diff.mean()) < 2.0 / 255 and float(diff.max()) < 0.1


@needs_cuda
def test_cuda_engine_scores_frames_decoded_on_the_device(tmp_path) -> None:
    torch.manual_seed(1)
    m = InpFormer(InpConfig(backbone="random_tiny", input_hw=(64, 64), width=32, head_dim=16, decoder_blocks=2))
    d = save_model_dir(tmp_path / "m", m, {"categories": ["a/b"], "seed": 1}, {"threshold": 0.5})
    gpu, cpu = TorchEngine(d, device="cuda"), TorchEngine(d)
    envs = _envs()
    out, geoms, path = gpu.infer_encoded("p", envs)
    assert path == "gpu" and out.engine_name == "torch+gpudecode" and geoms == [(480, 560)] * 3
    ref = cpu.infer("p", [decode_frame(e, target_hw=(64, 64)).image for e in envs])
    assert out.scores.shape == ref.scores.shape and out.maps.shape == ref.maps.shape
    np.testing.assert_allclose(out.scores, ref.scores, rtol=0.05, atol=0.02)


def test_a_cut_off_jpeg_is_never_sent_to_the_device_decoder() -> None:
    """nvJPEG may turn a truncated stream into a partly grey image without an error; such frames take the
    CPU path (which refuses them), so the GPU never scores a frame the CPU would dead-letter."""
    import cv2
    import numpy as np

    ok, buf = cv2.imencode(".jpg", np.full((32, 32, 3), 128, np.uint8))
    data = buf.tobytes()
    assert ok and jpeg_complete(data) and jpeg_complete(data + b"\x00" * 7)
    assert not jpeg_complete(data[: len(data) // 2]) and not jpeg_complete(b"") and not jpeg_complete(data[:-1])
