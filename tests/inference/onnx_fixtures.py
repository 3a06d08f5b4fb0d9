"""A small model quickly trained on one real category, shared by the ONNX and Triton tests.

It does not need to be good, only real: real images through the real frozen backbone and a head
trained for a few iterations, so parity checks see realistic activations and maps. Small input
and decoder keep it to seconds on 2 cores; it is trained once per test session (cached on disk).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import real_categories


@dataclass
class RealModel:
    model_dir: Path
    category: str
    normal: list[np.ndarray]      # held-out normal test frames (RGB uint8, original sizes)
    anomalous: list[np.ndarray]   # defect test frames


def _train_once(root: Path, out: Path) -> RealModel:
    from inference.model.inp_former import InpConfig
    from training.data import load_split
    from training.train import TrainConfig, train

    ds, cat = real_categories(root)[0]
    train_split = load_split(root / ds / cat, None, "train")
    test_split = load_split(root / ds / cat, None, "test")
    normal = [it.image() for it in test_split if it.label == 0][:4]
    anomalous = [it.image() for it in test_split if it.label == 1][:4]
    model_dir = out / "model"
    if not (model_dir / "checksums.json").is_file():
        cfg = TrainConfig(model=InpConfig(input_hw=(128, 128), width=64, decoder_blocks=2, n_inps=4),
                          iters=15, batch_size=4, warmup=5, threads=2, cache_dir=str(out / "cache"))
        images = [it.image() for it in list(train_split)[:16]]
        train(images, cfg, out_dir=model_dir, seed=0, progress=False)
    return RealModel(model_dir, f"{ds}/{cat}", normal, anomalous)


@pytest.fixture(scope="session")
def real_model(real_data: Path, tmp_path_factory: pytest.TempPathFactory) -> RealModel:
    return _train_once(real_data, tmp_path_factory.getbasetemp() / "onnx-real-model")
