"""Train INP-Former++'s residual head (``InpConfig.residual_head``) on synthetic pseudo-anomalies.

The main model is trained first and stays frozen. Normal training images get Perlin-noise masks
filled with something that does not belong there (a region of another training image, flipped or
turned; the image's own content shuffled in blocks; a procedural noise texture), blended at a random
opacity. Each synthetic image goes once through the frozen encoder and decoder; the stop-gradient
residual (:func:`inference.model.inp_former.residual_features`) and the mask on the token grid are
kept, so the head's training loop never touches the backbone and costs seconds. Loss: soft Dice over
the batch (an all-normal batch has no foreground to divide by) + binary cross-entropy.

No texture data set ships with the project: every fill comes from the training images or from noise.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from inference.model.inp_former import InpFormer, residual_features
from inference.preprocess import batch_to_input
from lineinspect.logs import kv
from training.features import ImageSource, load_rgb

log = logging.getLogger("lineinspect.training")


@dataclass
class ResidualTrainConfig:
    # 300 left the head near chance or inverted on fresh pseudo-anomalies (loss still falling); 1500 reach
    # ~0.93 token AUROC on them (tests/training/test_residual.py's set-up). Cheap: the loop never runs the backbone.
    iters: int = 1500
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    copies: int = 4               # synthetic images per normal training image
    normal_share: float = 0.25    # share of the synthetic set left normal (empty mask): the head must learn to stay quiet
    min_opacity: float = 0.3      # fills blend at U(min_opacity, 1); fainter ones are label noise at 16x16 tokens
    bce_weight: float = 1.0
    max_images: int = 320         # cap on the synthetic set (memory and time stay bounded for unified models)


def perlin(shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """2-D gradient (Perlin) noise of ``shape``, ``res`` lattice cells per axis; values about in [-1, 1]."""
    h, w = shape
    ry, rx = res
    gy, gx = np.meshgrid(np.linspace(0, ry, h, endpoint=False), np.linspace(0, rx, w, endpoint=False), indexing="ij")
    iy, ix = gy.astype(int), gx.astype(int)
    fy, fx = gy - iy, gx - ix
    ang = rng.uniform(0, 2 * np.pi, (ry + 1, rx + 1))
    grad = np.stack([np.cos(ang), np.sin(ang)], -1)

    def dot(oy: int, ox: int) -> np.ndarray:
        g = grad[iy + oy, ix + ox]
        return g[..., 0] * (fy - oy) + g[..., 1] * (fx - ox)

    def fade(t: np.ndarray) -> np.ndarray:
        return t * t * t * (t * (t * 6 - 15) + 10)

    uy, ux = fade(fy), fade(fx)
    top = dot(0, 0) * (1 - ux) + dot(0, 1) * ux
    bot = dot(1, 0) * (1 - ux) + dot(1, 1) * ux
    return (top * (1 - uy) + bot * uy) * math.sqrt(2)


def perlin_mask(shape: tuple[int, int], rng: np.random.Generator, min_px: int = 64) -> np.ndarray:
    """Binary blob mask from thresholded Perlin noise at a random scale; never empty (retries, then a disc)."""
    for _ in range(8):
        res = (int(2 ** rng.integers(1, 4)), int(2 ** rng.integers(1, 4)))
        m = perlin(shape, res, rng) > rng.uniform(0.35, 0.6)
        if m.sum() >= min_px:
            return m
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    cy, cx = rng.integers(0, shape[0]), rng.integers(0, shape[1])
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= (min(shape) // 8) ** 2


def _fill(img: np.ndarray, others: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A (3, H, W) float fill for image ``img`` (3, H, W): another image's content, the image's own
    content shuffled in blocks, or a noise texture; colour-jittered so it is foreign in tone as well."""
    _, h, w = img.shape
    kind = rng.integers(0, 3)
    if kind == 0 and len(others) > 1:
        src = others[rng.integers(0, len(others))]
        src = np.rot90(src, k=int(rng.integers(0, 4)), axes=(1, 2))
        if src.shape[1:] != (h, w):  # non-square inputs: turned by 90 degrees no longer fits
            src = np.rot90(src, k=1, axes=(1, 2))
        fill = np.ascontiguousarray(src[:, ::-1] if rng.random() < 0.5 else src)
    elif kind <= 1:
        b = int(2 ** rng.integers(3, 6))  # 8..32 px blocks
        hb, wb = h // b, w // b
        blocks = img[:, : hb * b, : wb * b].reshape(3, hb, b, wb, b).transpose(1, 3, 0, 2, 4).reshape(hb * wb, 3, b, b)
        blocks = blocks[rng.permutation(hb * wb)]
        fill = img.copy()
        fill[:, : hb * b, : wb * b] = blocks.reshape(hb, wb, 3, b, b).transpose(2, 0, 3, 1, 4).reshape(3, hb * b, wb * b)
    else:
        base = rng.uniform(0, 1, (3, 1, 1))
        tex = np.stack([perlin((h, w), (int(2 ** rng.integers(2, 5)),) * 2, rng) for _ in range(3)])
        fill = base + 0.35 * tex + rng.normal(0, rng.uniform(0.02, 0.15), (3, h, w))
    gain, shift = rng.uniform(0.6, 1.4), rng.uniform(-0.2, 0.2)
    return np.clip(fill * gain + shift, 0.0, 1.0).astype(np.float32)


def synthesize(images: np.ndarray, copies: int, normal_share: float, min_opacity: float,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3, H, W) float images in [0, 1] -> (N x copies images, (N x copies, H, W) float masks)."""
    n, _, h, w = images.shape
    out = np.empty((n * copies, 3, h, w), np.float32)
    masks = np.zeros((n * copies, h, w), np.float32)
    for c in range(copies):
        for i in range(n):
            j = c * n + i
            img = images[i]
            if rng.random() < normal_share:
                out[j] = img
                continue
            m = perlin_mask((h, w), rng).astype(np.float32)
            beta = rng.uniform(min_opacity, 1.0)
            others = np.delete(images, i, axis=0) if n > 1 else images
            a = beta * m[None]
            out[j] = img * (1 - a) + _fill(img, others, rng) * a
            masks[j] = m
    return out, masks


def dice_bce(logits: torch.Tensor, target: torch.Tensor, bce_weight: float = 1.0) -> torch.Tensor:
    """Soft Dice over the whole batch + ``bce_weight`` x BCE; (N, h, w) logits and targets in [0, 1]."""
    p = torch.sigmoid(logits)
    inter = (p * target).sum()
    dice = 1.0 - (2.0 * inter + 1.0) / (p.sum() + target.sum() + 1.0)
    return dice + bce_weight * F.binary_cross_entropy_with_logits(logits, target)


@torch.no_grad()
def residual_dataset(model: InpFormer, images: np.ndarray, masks: np.ndarray,
                     batch_size: int = 8, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic images -> (residual features (N, C, h, w), token-grid masks (N, h, w)) through the
    frozen encoder and decoder (eval mode: no bottleneck dropout, as at inference)."""
    model.eval()
    device = model.blur_kernel.device
    feats, targets = [], []
    for i in tqdm(range(0, len(images), batch_size), disable=not progress, desc="residual: encode", unit="batch",
                  leave=False):
        x = torch.from_numpy(images[i:i + batch_size]).to(device)
        out = model.head(model.encode(x))
        feats.append(residual_features(out.targets, out.dec).cpu())
        m = torch.from_numpy(masks[i:i + batch_size]).unsqueeze(1)
        targets.append(F.adaptive_avg_pool2d(m, model.cfg.grid).squeeze(1))  # share of each token covered
    return torch.cat(feats), torch.cat(targets)


def train_residual_head(model: InpFormer, sources: Sequence[ImageSource], seed: int,
                        cfg: ResidualTrainConfig | None = None, progress: bool = True) -> dict[str, float]:
    """Train ``model.head.residual`` in place on pseudo-anomalies made from ``sources``; the rest of the
    model is untouched. Returns a summary (final loss, seconds, synthetic set size)."""
    import time

    if not model.cfg.residual_head:
        raise ValueError("the model has no residual head (InpConfig.residual_head = 0)")
    cfg = cfg or ResidualTrainConfig()
    if cfg.copies < 1 or cfg.iters < 1:
        raise ValueError("residual training needs copies >= 1 and iters >= 1")
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    srcs = list(sources)
    if not srcs:
        raise ValueError("no images to make pseudo-anomalies from")
    copies = max(1, min(cfg.copies, cfg.max_images // len(srcs)))
    if len(srcs) * copies > cfg.max_images:  # a big (e.g. unified) set: a seeded subset of the images
        srcs = [srcs[i] for i in sorted(rng.choice(len(srcs), cfg.max_images, replace=False).tolist())]
    feat_parts, target_parts, n_anom = [], [], 0
    chunk = 32  # base images loaded at a time (the fills of "another image" come from the same chunk)
    for i in tqdm(range(0, len(srcs), chunk), disable=not progress, desc="residual: pseudo-anomalies", unit="chunk",
                  leave=False):
        base = batch_to_input([load_rgb(s) for s in srcs[i:i + chunk]], model.cfg.input_hw)
        images, masks = synthesize(base, copies, cfg.normal_share, cfg.min_opacity, rng)
        f, t = residual_dataset(model, images, masks)
        feat_parts.append(f)
        target_parts.append(t)
        n_anom += int((masks.reshape(len(masks), -1).max(1) > 0).sum())
    feats, target = torch.cat(feat_parts), torch.cat(target_parts)
    head = model.head.residual
    device = model.blur_kernel.device
    feats, target = feats.to(device), target.to(device)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    for m in head.net:  # a fresh, seeded head whatever was loaded before
        if isinstance(m, torch.nn.Conv2d):
            m.reset_parameters()
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.iters, eta_min=cfg.lr * 0.05)
    head.train()
    n = feats.shape[0]
    loss_v = float("nan")
    bar = tqdm(range(cfg.iters), disable=not progress, desc="residual head", unit="it", leave=False)
    for _ in bar:
        idx = torch.randint(n, (min(cfg.batch_size, n),), generator=gen).to(device)
        loss = dice_bce(head.logits(feats[idx]), target[idx], cfg.bce_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        loss_v = float(loss.detach())
        bar.set_postfix(loss=f"{loss_v:.4f}")
    bar.close()
    head.eval()
    model.eval()
    summary = {"residual_loss": loss_v, "residual_seconds": round(time.perf_counter() - t0, 2),
               "residual_images": int(n), "residual_anomalous": n_anom}
    log.info("residual head trained", extra=kv(**summary))
    return summary


@torch.no_grad()
def fit_residual_stats(model: InpFormer, cal_feats: list[torch.Tensor], cal_mem: torch.Tensor | None,
                       bs: int = 16) -> None:
    """(mean, std) of the base map and of the head's mask over the calibration normals: one scale for both."""
    bases, ress = [], []
    for i in range(0, cal_feats[0].shape[0], bs):
        b, r = model.base_and_residual([f[i:i + bs] for f in cal_feats], None if cal_mem is None else cal_mem[i:i + bs])
        bases.append(b)
        ress.append(r)
    model.head.residual.fit_stats(torch.cat(bases), torch.cat(ress))
