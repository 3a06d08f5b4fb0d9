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


def random_projection(c: int, proj_dim: int, g: torch.Generator) -> torch.Tensor | None:
    """Gaussian (C, proj_dim) map drawn from ``g``, or None when ``c`` is already that small (JL:
    pairwise distances are kept within a small factor, which is all the farthest-point order needs)."""
    if c <= proj_dim:
        return None
    return torch.randn(c, proj_dim, generator=g) / proj_dim ** 0.5


def _sqdist(z: torch.Tensor, zn: torch.Tensor, cz: torch.Tensor) -> torch.Tensor:
    """Squared distances of rows ``z`` (norms ``zn``) to ``cz``: one matrix-vector pass."""
    return (zn - 2.0 * (z @ cz) + cz @ cz).clamp_min(0.0)


@torch.no_grad()
def greedy_coreset(x: torch.Tensor, k: int, seed: int = 0, proj_dim: int = 128, dense_share: float = 0.25) -> torch.Tensor:
    """Indices of ``k`` rows of ``x`` (P, C) chosen by PatchCore's greedy k-center rule: start at a
    random row, then repeatedly add the row farthest from everything chosen so far. Distances are
    measured after a fixed random projection to ``proj_dim`` dims, as PatchCore does.

    Why it is cheap: a plain step measures all P rows against the new centre. Here every row also
    remembers its nearest centre a(j) and squared distance r_j; by the triangle inequality the new
    centre c can only come closer than r_j if |c - a(j)| < 2 sqrt(r_j), and |c - a(j)| comes from
    one small centre-to-centre pass. Once the centres cover the data (real patch features are
    clustered) only a few rows pass that test and only they are measured; while more than
    ``dense_share`` of the rows pass, the plain pass is cheaper and is used. Either way the
    result is the plain greedy order: skipped rows are exactly those whose distance cannot drop."""
    p, c = x.shape
    if not 0 < k <= p:
        raise ValueError(f"coreset size must be in 1..{p}, got {k}")
    # thousands of small sequential steps: intra-op threads only add hand-offs (7x slower with 2 threads
    # than with 1 on a loaded 2-core machine), so the loop runs on one thread and restores the setting
    if x.device.type != "cpu":  # on an accelerator the same loop runs there (no thread setting to pin)
        return _greedy(x, k, seed, proj_dim, dense_share)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _greedy(x, k, seed, proj_dim, dense_share)
    finally:
        torch.set_num_threads(threads)


def _projected_start(x: torch.Tensor, seed: int, proj_dim: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The seeded part both greedy versions share: projected rows, their squared norms, the first pick."""
    p, c = x.shape
    g = torch.Generator().manual_seed(seed)
    proj = random_projection(c, proj_dim, g)
    first = int(torch.randint(p, (1,), generator=g))
    z = (x.float() @ proj.to(x.device) if proj is not None else x.float()).contiguous()
    return z, (z * z).sum(1), first


def _greedy(x: torch.Tensor, k: int, seed: int, proj_dim: int, dense_share: float) -> torch.Tensor:
    p = x.shape[0]
    z, zn, first = _projected_start(x, seed, proj_dim)
    dev = z.device
    centres = torch.empty(k, z.shape[1], device=dev)
    cn = torch.empty(k, device=dev)
    chosen = torch.empty(k, dtype=torch.long, device=dev)
    assign = torch.zeros(p, dtype=torch.long, device=dev)  # index (into chosen) of each row's nearest centre
    chosen[0] = first
    centres[0], cn[0] = z[first], zn[first]
    mind = _sqdist(z, zn, z[first])
    for i in range(1, k):
        nxt = int(mind.argmax())
        cz = z[nxt]
        chosen[i] = nxt
        centres[i], cn[i] = cz, zn[nxt]
        dcc = (cn[:i] - 2.0 * (centres[:i] @ cz) + cz @ cz).clamp_min(0.0)  # new centre to earlier ones
        near = dcc[assign] < 4.0 * mind
        n_near = int(near.sum())
        if n_near > dense_share * p:
            d = _sqdist(z, zn, cz)
            better = d < mind
            mind = torch.where(better, d, mind)
            assign = torch.where(better, torch.full_like(assign, i), assign)
        elif n_near:
            cand = near.nonzero().squeeze(1)
            d = _sqdist(z[cand], zn[cand], cz)
            better = d < mind[cand]
            upd = cand[better]
            mind[upd] = d[better]
            assign[upd] = i
    return chosen


@torch.no_grad()
def greedy_coreset_reference(x: torch.Tensor, k: int, seed: int = 0, proj_dim: int = 128) -> torch.Tensor:
    """The plain O(k P) greedy k-center with the same start, projection and distance formula
    (for tests: the fast version must pick the same rows)."""
    z, zn, first = _projected_start(x, seed, proj_dim)
    chosen = torch.empty(k, dtype=torch.long)
    chosen[0] = first
    mind = _sqdist(z, zn, z[first])
    for i in range(1, k):
        nxt = int(mind.argmax())
        chosen[i] = nxt
        mind = torch.minimum(mind, _sqdist(z, zn, z[nxt]))
    return chosen


def covering_radius(x: torch.Tensor, idx: torch.Tensor, chunk: int = 8192) -> float:
    """Largest distance (in the full feature space) from any row of ``x`` to its nearest selected row:
    the quantity greedy k-center keeps small, so the yardstick of a coreset's quality."""
    sel = x[idx].float()
    return float(max(torch.cdist(x[i:i + chunk].float(), sel).min(1).values.max() for i in range(0, x.shape[0], chunk)))


def memory_rows(feats: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) -> (N*h*w, C) patch vectors."""
    return feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1])
