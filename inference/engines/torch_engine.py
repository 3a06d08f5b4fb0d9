"""PyTorch engine for one model directory (eager; the reference the exported engines are checked against)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from inference.engines.base import EngineOutput
from inference.model_dir import LoadedModel, load_model_dir
from inference.preprocess import score_in_batches

if TYPE_CHECKING:
    from ingest.envelope import FrameEnvelope


class TorchEngine:
    """Scores frames with the model dir's InpFormer; ``product`` is informational (one model per engine)."""

    name = "torch"

    def __init__(self, model_dir: str | Path, threads: int = 0, device: str = "cpu", batch_size: int = 16) -> None:
        if threads > 0:
            torch.set_num_threads(threads)
        self.loaded: LoadedModel = load_model_dir(model_dir, device=device)
        self.device = device
        self.batch_size = batch_size

    @property
    def input_hw(self) -> tuple[int, int]:
        return self.loaded.input_hw

    def decode_hw(self, product: str) -> tuple[int, int] | None:
        """Frames are resized to the model input: decode no more than that (see engines.base.decode_hw)."""
        return self.input_hw

    def infer(self, product: str, images: list[np.ndarray]) -> EngineOutput:
        t0 = time.perf_counter()
        with torch.inference_mode():
            maps, scores = score_in_batches(images, self.input_hw, self.batch_size, self._run)
        return EngineOutput(scores, maps, self.loaded.version, self.loaded.threshold, (time.perf_counter() - t0) * 1000.0)

    def _run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        amap, score = self.loaded.module(torch.from_numpy(x).to(self.device))
        return amap.float().cpu().numpy(), score.float().cpu().numpy()

    def takes_encoded(self, product: str) -> bool:
        """Always: on a GPU the JPEG is decoded there; on the CPU ``infer_encoded`` runs the same
        decode the consumer would (so the consumer's encoded path is exercised on every machine)."""
        return True

    def infer_encoded(self, product: str, envs: list[FrameEnvelope], max_pixels: int = 40_000_000,
                      oversample: float | None = None) -> tuple[EngineOutput, list[tuple[int, int]], str]:
        """Score encoded frames, decoding JPEG on this engine's device (nvJPEG on a GPU, the
        CPU's DCT-scaled decode otherwise; see :mod:`inference.gpu_decode`). Returns the output,
        each frame's geometry and the decode path used ("gpu" / "cpu"); ``oversample`` None: the decoder's default."""
        from inference.gpu_decode import infer_encoded
        from ingest.envelope import DECODE_OVERSAMPLE

        oversample = DECODE_OVERSAMPLE if oversample is None else oversample

        t0 = time.perf_counter()
        maps, scores, geoms, path = infer_encoded(self.loaded.module, self.input_hw, self.device, envs, max_pixels,
                                                  oversample)
        out = EngineOutput(scores.astype(np.float32), maps.astype(np.float32), self.loaded.version,
                           self.loaded.threshold, (time.perf_counter() - t0) * 1000.0, engine_name=f"{self.name}+{path}decode")
        return out, geoms, path

    def close(self) -> None:
        pass
