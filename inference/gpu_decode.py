"""JPEG frames straight to the PyTorch engine's input tensor, decoded on the GPU when there is one.

On a GPU host the CPU decode is the consumer's bottleneck at camera resolutions (5-20 MP):
nvJPEG (``torchvision.io.decode_jpeg(device="cuda")``) decodes a batch on the device, and the
area resize to the model input runs there too, so only compressed bytes cross PCIe. Without CUDA
(or for a frame nvJPEG refuses, or a PNG) the same function falls back to the CPU path used
everywhere else (:func:`ingest.envelope.decode_frame`: DCT-scaled decode + one area resize), so
both paths return the same tensor layout and their results are compared in the tests.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from inference.preprocess import batch_to_input
from ingest.envelope import DECODE_OVERSAMPLE, FrameEnvelope, check_frame_header, decode_frame
from lineinspect.logs import kv

log = logging.getLogger(__name__)


def cuda_decode_available(device: str | torch.device) -> bool:
    """True when ``device`` is a CUDA device that is present and torchvision can decode on it."""
    dev = torch.device(device)
    return dev.type == "cuda" and torch.cuda.is_available()


def jpeg_complete(payload: bytes) -> bool:
    """Whether a JPEG ends with its end-of-image marker (trailing zero padding allowed). A cut-off
    stream may be decoded by nvJPEG into a partly grey image without an error, where the CPU decoder
    refuses it; such a batch goes to the CPU path, which dead-letters the frame alone."""
    return payload.rstrip(b"\x00").endswith(b"\xff\xd9")


def _gpu_batch(payloads: list[bytes], hw: tuple[int, int], device: torch.device) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_jpeg

    data = [torch.frombuffer(bytearray(p), dtype=torch.uint8) for p in payloads]
    imgs = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)  # list of (3, H, W) uint8 on device
    out = torch.empty((len(imgs), 3, hw[0], hw[1]), dtype=torch.float32, device=device)
    for i, im in enumerate(imgs):
        x = im.unsqueeze(0).float()
        # area interpolation = the CPU path's INTER_AREA when shrinking
        out[i] = torch.nn.functional.interpolate(x, size=hw, mode="area")[0] * (1.0 / 255.0)
    return out


def frames_to_input(envs: list[FrameEnvelope], hw: tuple[int, int], device: str | torch.device = "cpu",
                    max_pixels: int = 40_000_000, oversample: float = DECODE_OVERSAMPLE
                    ) -> tuple[torch.Tensor, list[tuple[int, int]], str]:
    """Envelopes -> float32 (N, 3, H, W) on ``device``, each frame's (H, W), and the path used
    ("gpu" or "cpu"). The ``max_pixels`` header guard runs on the CPU before either decoder; a
    GPU failure falls back to the CPU path for the whole batch (logged, never lost)."""
    dev = torch.device(device)
    geoms = [check_frame_header(e, max_pixels)[:2] for e in envs]  # the shared bomb guard, before any decoder
    if cuda_decode_available(dev) and all(e.encoding == "jpeg" and jpeg_complete(e.payload) for e in envs):
        try:
            return _gpu_batch([e.payload for e in envs], hw, dev), geoms, "gpu"
        except RuntimeError as exc:  # nvJPEG refuses some streams (e.g. CMYK, arithmetic coding)
            log.warning("GPU JPEG decode failed; decoding this batch on the CPU", extra=kv(error=str(exc)[:300]))
    images = [decode_frame(e, max_pixels, target_hw=hw, oversample=oversample).image for e in envs]
    return torch.from_numpy(batch_to_input(images, hw)).to(dev), geoms, "cpu"


def infer_encoded(module: torch.nn.Module, input_hw: tuple[int, int], device: str | torch.device,
                  envs: list[FrameEnvelope], max_pixels: int = 40_000_000, oversample: float = DECODE_OVERSAMPLE
                  ) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]], str]:
    """Score encoded frames with a PyTorch model, decoding on its device: (maps, scores, frame
    geometries, decode path used)."""
    x, geoms, path = frames_to_input(envs, input_hw, device, max_pixels, oversample)
    with torch.inference_mode():
        amap, score = module(x)
    return amap.float().cpu().numpy(), score.float().cpu().numpy(), geoms, path
