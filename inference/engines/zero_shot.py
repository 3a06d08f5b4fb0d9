"""The zero-shot engine: scores a product that has no trained model yet (cold start).

``method="grnr"`` rebuilds each patch of the frame from its own neighbourhood and the frame's
typical patterns (:mod:`inference.zero_shot.grnr`) - no model at all, just the frozen backbone.
``method="inp"`` uses the INP-distance map of an INP-Former trained on *other* products
(:mod:`inference.zero_shot.inp_distance`); ``model_dir`` names that model.

Threshold: there is no calibration set, so each product's threshold is ``threshold_quantile`` of
its own last ``window`` scores (:class:`inference.zero_shot.threshold.RollingThreshold`). This
silently assumes the product's defect rate is below ``1 - threshold_quantile``: with q = 0.99 about
1 % of frames are flagged whatever the true defect rate is, so a line producing 5 % defects has
most of them passed and a line producing 0.1 % sees mostly false alarms. Until ``min_scores``
scores exist the threshold is a conservative warm-up estimate and every output says so
(``calibrated=False``). ``model_version`` is always ``"zero-shot"``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from inference.engines.base import EngineOutput
from inference.model.anomaly_map import gaussian_kernel1d
from inference.model.backbones import FrozenBackbone, build_backbone
from inference.model.inp_former import InpConfig, InpFormer, encode_groups
from inference.preprocess import score_in_batches
from inference.zero_shot.grnr import GrnrParams, grnr_maps
from inference.zero_shot.threshold import RollingThreshold
from lineinspect.errors import ConfigError

if TYPE_CHECKING:  # types only
    from lineinspect.settings import Settings

METHODS = ("grnr", "inp")
GRNR_TOKEN_STRIDE = 8  # the grid GRNR was designed and benchmarked on
ZERO_SHOT_VERSION = "zero-shot"


@dataclass
class ZeroShotOutput(EngineOutput):
    """An :class:`EngineOutput` that also says how trustworthy its threshold is."""

    calibrated: bool = False          # False while the product's rolling window is still warming up
    threshold_source: str = ""        # rolling-quantile | robust-warmup | default-warmup


class ZeroShotEngine:
    """Training-free scoring for any product (see the module doc for the threshold caveat)."""

    name = "zero-shot"

    def __init__(self, method: str = "grnr", backbone: str = "efficientnet_lite0", model_dir: str | Path | None = None,
                 threshold_quantile: float = 0.99, window: int = 200, min_scores: int = 50,
                 input_hw: tuple[int, int] = (256, 256), params: GrnrParams | None = None,
                 batch_size: int = 8, threads: int = 0, device: str = "cpu") -> None:
        if method not in METHODS:
            raise ConfigError(f"unknown zero-shot method {method!r}; choose one of {', '.join(METHODS)}")
        if threads > 0:
            torch.set_num_threads(threads)
        self.method = method
        self.device = device
        self.batch_size = max(1, int(batch_size))
        self.params = params or GrnrParams()
        self.thresholds = RollingThreshold(threshold_quantile, window, min(min_scores, window))
        self.model: InpFormer | None = None
        self._backbone: FrozenBackbone | None = None
        self.source_version: str | None = None
        if method == "inp":
            if model_dir is None:
                raise ConfigError("zero-shot method 'inp' needs model_dir: an INP-Former trained on other products")
            from inference.model_dir import load_model_dir

            loaded = load_model_dir(model_dir, device=device)
            self.model = loaded.module
            self.cfg = self.model.cfg
            self.source_version = loaded.version
        else:
            # GRNR needs a fine grid for its 7x7 neighbourhoods and was measured on stride 8 (32x32 at
            # 256 px): pinned here so a change of the trained model's default grid does not move it.
            self.cfg = InpConfig(backbone=backbone, input_hw=(input_hw[0], input_hw[1]), token_stride=GRNR_TOKEN_STRIDE)
            # the backbone is built on first use: a router holds this engine even when every product
            # has a model, and then it never needs the weights
        self.kernel = gaussian_kernel1d(self.cfg.sigma).to(device)

    @property
    def input_hw(self) -> tuple[int, int]:
        return self.cfg.input_hw

    @property
    def backbone(self) -> FrozenBackbone:
        if self._backbone is None:
            blocks = sorted({b for g in self.cfg.groups for b in g})
            self._backbone = build_backbone(self.cfg.backbone, blocks).to(self.device)
        return self._backbone

    @torch.inference_mode()
    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Float NCHW [0, 1] at ``input_hw`` -> frozen encoder groups on the token grid."""
        if self.model is not None:
            return self.model.encode(x)
        bb = self.backbone
        return encode_groups(bb(x), bb.blocks, self.cfg)

    @torch.inference_mode()
    def score_groups(self, groups: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder groups -> ((N, H, W) maps, (N,) scores); exposed so benchmarks can reuse features."""
        if self.model is not None:
            from inference.zero_shot.inp_distance import inp_distance_maps

            return inp_distance_maps(self.model, groups)
        return grnr_maps(groups, self.cfg.input_hw, self.kernel, self.params, self.cfg.top_fraction)

    def raw_scores(self, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Maps and scores of RGB uint8 frames, without touching any threshold state."""
        return score_in_batches(images, self.input_hw, self.batch_size, self._run)

    def _run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        m, s = self.score_groups(self.encode(torch.from_numpy(x).to(self.device)))
        return m.float().cpu().numpy(), s.float().cpu().numpy()

    def decode_hw(self, product: str) -> tuple[int, int] | None:
        """Frames are resized to the backbone input: decode no more than that."""
        return self.input_hw

    def infer(self, product: str, images: list[np.ndarray]) -> ZeroShotOutput:
        t0 = time.perf_counter()
        maps, scores = self.raw_scores(images)
        est = self.thresholds.estimate(product, pending=scores)
        self.thresholds.update(product, scores)
        return ZeroShotOutput(scores, maps, ZERO_SHOT_VERSION, est.value, (time.perf_counter() - t0) * 1000.0,
                              calibrated=est.calibrated, threshold_source=est.source)

    def close(self) -> None:
        pass


def fallback_from_settings(settings: Settings) -> ZeroShotEngine | None:
    """The router's cold-start engine, or ``None`` when ``settings.zero_shot_fallback`` is off."""
    if not settings.zero_shot_fallback:
        return None
    window = settings.zero_shot_window
    return ZeroShotEngine(method=settings.zero_shot_method, model_dir=settings.zero_shot_model_dir,
                          threshold_quantile=settings.threshold_quantile, window=window,
                          min_scores=min(settings.zero_shot_min_normals, window), threads=settings.threads)
