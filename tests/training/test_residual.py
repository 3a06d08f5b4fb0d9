"""Residual-head training: pseudo-anomalies, the loss, that the head learns, and train()'s wiring."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from inference.model.inp_former import InpConfig, InpFormer
from inference.model_dir import load_model_dir
from training import metrics
from training.residual import (
    ResidualTrainConfig,
    dice_bce,
    perlin,
    perlin_mask,
    residual_dataset,
    synthesize,
    train_residual_head,
)
from training.train import TrainConfig, train


def test_perlin_noise_and_masks() -> None:
    rng = np.random.default_rng(0)
    n = perlin((64, 48), (4, 2), rng)
    assert n.shape == (64, 48) and np.isfinite(n).all() and n.std() > 0.05 and np.abs(n).max() <= 1.5
    for _ in range(20):
        m = perlin_mask((32, 32), rng)
        assert m.dtype == bool and m.sum() >= 1


def test_synthesize_changes_only_inside_the_mask() -> None:
    rng = np.random.default_rng(1)
    imgs = rng.random((5, 3, 64, 64)).astype(np.float32)
    out, masks = synthesize(imgs, 4, 0.25, 0.3, rng)
    assert out.shape == (20, 3, 64, 64) and masks.shape == (20, 64, 64)
    assert out.min() >= 0 and out.max() <= 1
    src = np.tile(imgs, (4, 1, 1, 1))
    outside = np.broadcast_to(masks[:, None] == 0, out.shape)
    assert np.array_equal(out[outside], src[outside])
    anomalous = masks.reshape(20, -1).max(1) > 0
    assert 0 < anomalous.sum() < 20  # some copies stay normal (normal_share)
    inside = np.broadcast_to(masks[:, None] > 0, out.shape)
    assert np.abs(out[inside] - src[inside]).mean() > 0.05  # the fill is foreign
    # a non-square input: fills from other (turned) images still fit
    o2, _ = synthesize(rng.random((3, 3, 32, 64)).astype(np.float32), 3, 0.0, 0.3, rng)
    assert o2.shape == (9, 3, 32, 64)


def test_dice_bce_prefers_the_right_mask() -> None:
    t = torch.zeros(2, 8, 8)
    t[:, 2:5, 2:5] = 1
    good, bad = (t * 2 - 1) * 6, (1 - t * 2) * 6
    assert float(dice_bce(good, t)) < 0.1 < float(dice_bce(bad, t))
    assert torch.isfinite(dice_bce(torch.zeros(2, 8, 8), torch.zeros(2, 8, 8)))  # an all-normal batch


def test_the_head_learns_to_find_pseudo_anomalies_on_real_images(real_data: Path, tmp_path: Path) -> None:
    """Trained on pseudo-anomalies of some real training images, the head finds fresh pseudo-anomalies
    (another seed) on images it never saw far better than chance, and better than its untrained self."""
    from tests.conftest import real_categories
    from training.data import load_split

    ds, cat = real_categories(real_data)[0]
    items = list(load_split(real_data / ds / cat, None, "train"))
    fit = [it.image() for it in items[:12]]
    unseen = [it.image() for it in items[12:18]]
    cfg = TrainConfig(model=InpConfig(input_hw=(128, 128), width=64, decoder_blocks=2, n_inps=4, residual_head=16),
                      iters=15, batch_size=4, warmup=5, threads=2, cache_dir=None)
    model_dir = train(fit, replace(cfg, model=replace(cfg.model, residual_head=0)), tmp_path / "m", seed=0,
                      progress=False)
    pure = load_model_dir(model_dir).module
    m = InpFormer(cfg.model, backbone=pure.backbone).eval()
    m.head.load_state_dict(pure.head.state_dict(), strict=False)
    from inference.preprocess import batch_to_input

    def pseudo(images: list[np.ndarray], seed: int) -> tuple[torch.Tensor, np.ndarray]:
        imgs, masks = synthesize(batch_to_input(images, cfg.model.input_hw), 4, 0.0, 0.5, np.random.default_rng(seed))
        feats, target = residual_dataset(m, imgs, masks)
        return feats, (target > 0.5).numpy().ravel().astype(int)

    fresh, unseen_set = pseudo(fit, 123), pseudo(unseen, 123)  # another seed: masks and fills never trained on

    def auroc(data: tuple[torch.Tensor, np.ndarray]) -> float:
        with torch.no_grad():
            return float(metrics.image_auroc(data[1], m.head.residual.logits(data[0]).numpy().ravel()))

    before = auroc(unseen_set)
    summary = train_residual_head(m, fit, 0, ResidualTrainConfig(copies=4), progress=False)
    assert summary["residual_images"] == 48 and summary["residual_anomalous"] > 24
    assert auroc(fresh) >= 0.75, auroc(fresh)
    after = auroc(unseen_set)  # unseen images: their residual is higher everywhere (a decoder of 15 steps)
    assert after >= 0.65 and after > before + 0.1, (before, after)


def _images(n: int = 10, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (48, 72, 3), dtype=np.uint8) for _ in range(n)]


@pytest.mark.parametrize("memory_size", [0, 32])
def test_train_writes_a_residual_head_with_its_statistics(tmp_path: Path, memory_size: int) -> None:
    m = InpConfig(backbone="random_tiny", input_hw=(64, 64), token_stride=8, width=32, head_dim=16, decoder_blocks=2,
                  memory_size=memory_size, residual_head=8)
    c = TrainConfig(model=m, iters=3, batch_size=4, train_tokens=16, residual=ResidualTrainConfig(iters=5, copies=2))
    out = train(_images(), c, tmp_path / "m", seed=0, progress=False)
    lm = load_model_dir(out)
    head = lm.module.head.residual
    assert float(head.base_stats[1]) > 0 and float(head.res_stats[1]) > 0
    assert not torch.equal(head.base_stats, torch.tensor([0.0, 1.0]))  # fitted, not the defaults
    assert lm.config["residual_images"] > 0 and "residual_seconds" in lm.config
    amap, score = lm.module(torch.rand(2, 3, 64, 64))
    assert amap.shape == (2, 64, 64) and torch.isfinite(score).all()
    # same seed, same head
    out2 = train(_images(), c, tmp_path / "m2", seed=0, progress=False)
    w1 = torch.load(out / "weights.pt", weights_only=True)
    w2 = torch.load(out2 / "weights.pt", weights_only=True)
    assert all(torch.equal(w1[k], w2[k]) for k in w1 if k.startswith("residual."))
    with pytest.raises(ValueError, match="residual head"):
        train_residual_head(InpFormer(replace(m, residual_head=0, memory_size=0)), _images(2), 0)
