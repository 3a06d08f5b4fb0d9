"""A self-contained model directory: everything needed to serve one trained model anywhere.

    weights.pt        state dict of the learnable head only (the frozen backbone comes from its package)
    config.json       format version, architecture, backbone identity + weight-file sha256, input size,
                      preprocessing, categories, train settings, seed
    calibration.json  normal-score statistics on held-out normal images and the image ``threshold``
    checksums.json    sha256 of weights.pt, verified at load

Loading uses ``torch.load(weights_only=True)`` (no pickle execution) and refuses a directory whose
weights or backbone file do not match the recorded hashes, so a half-copied or swapped model can
never serve silently.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from inference.model.inp_former import InpConfig, InpFormer
from lineinspect.errors import ConfigError
from lineinspect.files import file_sha256

FORMAT_VERSION = 1
FILES = ("weights.pt", "config.json", "calibration.json", "checksums.json")


class ModelDirError(ConfigError):
    """A model directory is missing files, has an unknown format or fails its checksum."""


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


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


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
        "format_version": FORMAT_VERSION,
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
    weights = path / "weights.pt"
    tmp = path / "weights.pt.tmp"
    torch.save({k: v.detach().cpu().contiguous() for k, v in model.head.state_dict().items()}, tmp)
    os.replace(tmp, weights)
    _write_json(path / "config.json", full)
    _write_json(path / "calibration.json", calibration)
    _write_json(path / "checksums.json", {"weights.pt": file_sha256(weights)})
    return path


def read_verified(path: Path) -> tuple[dict[str, Any], dict[str, Any], str]:
    """(config, calibration, weights sha256) of a model dir, after checking that every file is there,
    the format is one this build reads and weights.pt matches its recorded checksum. Shared by the
    PyTorch loader and the ONNX exporter so both refuse the same broken directories."""
    missing = [f for f in FILES if not (path / f).is_file()]
    if missing:
        raise ModelDirError(f"{path} is not a model directory: missing {', '.join(missing)}")
    try:
        config = json.loads((path / "config.json").read_text())
        calibration = json.loads((path / "calibration.json").read_text())
        checksums = json.loads((path / "checksums.json").read_text())
    except json.JSONDecodeError as exc:
        raise ModelDirError(f"{path}: unreadable JSON ({exc})") from None
    if config.get("format_version") != FORMAT_VERSION:
        raise ModelDirError(f"{path}: model format {config.get('format_version')!r} is not supported "
                            f"(this build reads format {FORMAT_VERSION}); retrain or upgrade")
    actual = file_sha256(path / "weights.pt")
    if actual != checksums.get("weights.pt"):
        raise ModelDirError(f"{path}/weights.pt fails its checksum (expected {checksums.get('weights.pt')}, "
                            f"got {actual}): the file is corrupt or was replaced; re-copy or retrain the model")
    return config, calibration, actual


def load_model_dir(path: str | Path, device: str = "cpu", backbone_checkpoint: str | None = None) -> LoadedModel:
    """Load and verify a model dir; the module is in eval mode on ``device``."""
    path = Path(path)
    config, calibration, actual = read_verified(path)
    cfg = InpConfig.from_dict(config["model"])
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
