"""Save and load a self-contained model directory with PyTorch (the weights); its metadata files
(config.json, calibration.json, checksums.json), their formats, migration and verification belong to
:mod:`lineinspect.model_meta`, which every package uses.

Loading uses ``torch.load(weights_only=True)`` (no pickle execution) and refuses a directory whose
files or backbone do not match the recorded hashes, so a half-copied or swapped model can never
serve silently.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from inference.model.inp_former import InpConfig, InpFormer
from lineinspect import model_meta
from lineinspect.files import file_sha256
from lineinspect.model_meta import FORMAT_VERSION, ModelDirError, read_verified

__all__ = ["FORMAT_VERSION", "LoadedModel", "ModelDirError", "backbone_identity", "load_model_dir", "model_config",
           "read_verified", "save_model_dir"]


@dataclass
class LoadedModel:
    module: InpFormer
    config: dict[str, Any]
    calibration: dict[str, Any]
    version: str

    @property
    def threshold(self) -> float:
        return float(self.calibration["threshold"])

    @property
    def input_hw(self) -> tuple[int, int]:
        return self.module.cfg.input_hw


def backbone_identity(model: InpFormer) -> dict[str, Any]:
    wf = model.backbone.weights_file
    return {"name": model.cfg.backbone, "weights_file": wf.name if wf else None,
            "weights_sha256": file_sha256(wf) if wf else None}


def save_model_dir(path: str | Path, model: InpFormer, config: dict[str, Any], calibration: dict[str, Any]) -> Path:
    """Write a model dir; ``config`` is merged over the architecture/backbone/preprocessing fields."""
    if "threshold" not in calibration:
        raise ValueError("calibration must contain a 'threshold'")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    full = {
        "architecture": "inp_former",
        "model": model.cfg.to_dict(),
        "backbone": backbone_identity(model),
        "input_hw": list(model.cfg.input_hw),
        "preprocessing": {"layout": "NCHW", "color": "RGB", "scale": "uint8/255 -> [0,1]",
                          "resize": "cv2 INTER_AREA shrink / INTER_LINEAR grow to input_hw",
                          "normalisation": "in graph", "mean": list(model.backbone.spec.mean),
                          "std": list(model.backbone.spec.std)},
        **config,
    }
    weights = path / model_meta.WEIGHTS
    tmp = path / "weights.pt.tmp"
    torch.save({k: v.detach().cpu().contiguous() for k, v in model.head.state_dict().items()}, tmp)
    os.replace(tmp, weights)
    model_meta.write(path, full, calibration)  # config, calibration, then checksums of every file
    return path


def model_config(config: dict[str, Any], path: str | Path) -> InpConfig:
    """The network's config from a model dir's (migrated) ``config.json``. A field this build does not know is
    refused: ignoring a field a newer build wrote could change the model's scores without a word."""
    unknown = sorted(set(config["model"]) - {f.name for f in fields(InpConfig)} - model_meta.LEGACY_MODEL_KEYS)
    if unknown:
        raise ModelDirError(f"{path}: config.json sets model fields this build does not know ({', '.join(unknown)}): "
                            "it was written by a newer lineinspect; upgrade this one to load it")
    return InpConfig.from_dict(config["model"])


def load_model_dir(path: str | Path, device: str = "cpu", backbone_checkpoint: str | None = None) -> LoadedModel:
    """Load and verify a model dir; the module is in eval mode on ``device``."""
    path = Path(path)
    config, calibration, actual = read_verified(path, exports=False)  # the PyTorch module never runs the ONNX exports
    cfg = model_config(config, path)
    model = InpFormer(cfg, checkpoint=backbone_checkpoint)
    want = (config.get("backbone") or {}).get("weights_sha256")
    have = backbone_identity(model)["weights_sha256"]
    if want and have and want != have:
        raise ModelDirError(f"{path}: trained on backbone weights {want[:12]}... but the installed "
                            f"{cfg.backbone} weights are {have[:12]}...; install the matching package version")
    state = torch.load(path / "weights.pt", map_location="cpu", weights_only=True)
    try:
        model.head.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelDirError(f"{path}/weights.pt does not match config.json's architecture: {exc}") from None
    model.to(device).eval()
    version = str(config.get("version") or actual[:12])
    return LoadedModel(model, config, calibration, version)
