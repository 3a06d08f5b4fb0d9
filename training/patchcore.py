"""PatchCore-style baseline on the same frozen features as INP-Former (the yardstick to beat).

Memory bank = locally-aware (3x3 average-pooled) patch features of normal training images on the
same token grid and layers, randomly subsampled; a test patch's anomaly is its distance to the
nearest bank entry (k = 1). The map then goes through the very same upsample + blur + top-1%
score helpers as INP-Former, so the two differ only in how "normal" is modelled.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from inference.model.anomaly_map import gaussian_blur, gaussian_kernel1d, topk_mean_score


def patch_features(groups: list[torch.Tensor], local_pool: int = 3, already_pooled: bool = False) -> torch.Tensor:
    """Grouped (N, C_g, h, w) features -> (N, C, h, w): concatenated, locally aware."""
    x = torch.cat(groups, dim=1)
    if local_pool > 1 and not already_pooled:
        x = F.avg_pool2d(x, local_pool, stride=1, padding=local_pool // 2, count_include_pad=False)
    return x


@dataclass
class MemoryBank:
    bank: torch.Tensor          # (M, C)
    grid: tuple[int, int]


def fit_bank(feats: torch.Tensor, fraction: float = 0.25, seed: int = 0) -> MemoryBank:
    """Random subsample of all training patch vectors (PatchCore uses coreset; random is the cheap stand-in)."""
    if not 0 < fraction <= 1:
        raise ValueError("fraction must be in (0, 1]")
    n, c, h, w = feats.shape
    flat = feats.permute(0, 2, 3, 1).reshape(-1, c)
    k = max(1, int(round(flat.shape[0] * fraction)))
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(flat.shape[0], generator=g)[:k]
    return MemoryBank(flat[idx].contiguous(), (h, w))


@torch.no_grad()
def score(bank: MemoryBank, feats: torch.Tensor, input_hw: tuple[int, int], sigma: float = 4.0,
          top_fraction: float = 0.01, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Test features (N, C, h, w) -> (maps (N, H, W), scores (N,)) by 1-NN distance to the bank."""
    n, c, h, w = feats.shape
    q = feats.permute(0, 2, 3, 1).reshape(-1, c)
    d = torch.cat([torch.cdist(q[i:i + chunk], bank.bank).min(dim=1).values for i in range(0, q.shape[0], chunk)])
    grid_map = d.view(n, 1, h, w)
    up = F.interpolate(grid_map, size=input_hw, mode="bilinear", align_corners=False).squeeze(1)
    amap = gaussian_blur(up, gaussian_kernel1d(sigma))
    return amap, topk_mean_score(amap, top_fraction)


@torch.no_grad()
def greedy_coreset(x: torch.Tensor, k: int, seed: int = 0, proj_dim: int = 128, chunk: int = 65536) -> torch.Tensor:
    """Indices of ``k`` rows of ``x`` (P, C) chosen by PatchCore's greedy k-center rule: start at a
    random row, then repeatedly add the row farthest from everything chosen so far. Distances are
    measured after a fixed random projection to ``proj_dim`` dims (Johnson-Lindenstrauss), which
    keeps the order of distances and makes each step one pass over the rows. Covers rare normal
    patterns that a random sample of the same size misses."""
    p, c = x.shape
    if not 0 < k <= p:
        raise ValueError(f"coreset size must be in 1..{p}, got {k}")
    g = torch.Generator().manual_seed(seed)
    z = x
    if c > proj_dim:
        z = x @ (torch.randn(c, proj_dim, generator=g) / proj_dim ** 0.5)
    first = int(torch.randint(p, (1,), generator=g))
    chosen = torch.empty(k, dtype=torch.long)
    chosen[0] = first
    mind = ((z - z[first]) ** 2).sum(1)
    for i in range(1, k):
        nxt = int(mind.argmax())
        chosen[i] = nxt
        mind = torch.minimum(mind, ((z - z[nxt]) ** 2).sum(1))
    return chosen


def memory_rows(feats: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) -> (N*h*w, C) patch vectors."""
    return feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1])
