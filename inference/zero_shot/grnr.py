"""Training-free anomaly maps by global-regularised neighbourhood regression (after GRNR, arXiv 2406.07333).

Idea: on a product with repetitive structure (a texture, a thread, a woven or brushed surface) a
normal patch looks like the patches around it, so it can be *rebuilt* from them; a defect is a patch
its neighbourhood cannot explain. Everything comes from the one test image - no training data.

For each token ``i`` of a frozen-backbone feature grid (channel-L2-normalised):

1. **Local support**: the tokens in a ``window x window`` neighbourhood, *excluding* ``i`` and a
   small guard ring around it (pooled/strided CNN features of adjacent tokens overlap in their
   receptive fields, so an anomalous token's direct neighbours partly contain the anomaly).
2. **Global normality priors** from the same image: its typical patterns (centres of a spherical
   k-means over all tokens; clusters smaller than ``min_share / n_centres`` are not typical and are
   dropped) and each token's *typicality* ``t`` (how well patterns far away in the image - outside
   its window - support it: ``t = clamp(1 - (median - support) / max(1 - median, floor), 0, 1)``;
   1 for a repeating pattern, 0 for a local oddity even when it spans several adjacent tokens).
3. **Regularised regression**: every support vector is replaced by ``t_j f_j + (1 - t_j) c_j``
   (``c_j`` its nearest typical pattern), and token ``i`` is rebuilt as the softmax(cos/temperature)
   weighted mean of its ``k`` most similar regularised neighbours. A multi-token defect therefore
   cannot rebuild itself from its own (untypical) neighbours: they are pulled to normal patterns.
   The residual ``1 - cos(f_i, rec_i)`` is the token's anomaly.

Per-group maps go through the same upsample -> mean -> Gaussian blur -> top-1% score helpers as
INP-Former (:mod:`inference.model.anomaly_map`).

Where it fails (by construction, not by tuning):
* non-repetitive objects: a unique normal part (a logo, a screw head, an object's outline) has no
  similar neighbours and is reported as anomalous;
* large defects: when a defect covers a big share of the image it forms its own k-means cluster
  with a large share and its interior is rebuilt from itself - only its border stands out;
* defects that repeat periodically (a misprint on every repeat) look normal.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class GrnrParams:
    """Hyper-parameters; one set for every product (nothing is tuned per category)."""

    window: int = 7            # odd side of the local neighbourhood, in tokens
    guard: int = 1             # Chebyshev radius around the token that is excluded (0 = only the token)
    n_centres: int = 12        # k-means centres = global normality prior
    kmeans_iters: int = 10
    topk: int = 8              # support vectors mixed into each reconstruction
    temperature: float = 0.05  # softmax temperature on cosine similarity
    prior_power: float = 1.0   # exponent on the typicality (0 = no global regularisation)
    min_share: float = 0.5     # clusters smaller than min_share / n_centres are not "typical patterns"
    support_m: int = 8         # far tokens averaged into a token's global support
    spread_floor: float = 0.05  # typicality falls to 0 at a support deficit of max(1 - median, floor)

    def __post_init__(self) -> None:
        if self.window < 3 or self.window % 2 == 0:
            raise ValueError(f"window must be an odd number >= 3, got {self.window}")
        if not 0 <= self.guard < self.window // 2:
            raise ValueError(f"guard must be in [0, window//2), got {self.guard} for window {self.window}")
        if min(self.n_centres, self.topk, self.kmeans_iters, self.support_m) < 1:
            raise ValueError("n_centres, topk, kmeans_iters and support_m must be >= 1")
        if not 0 < self.spread_floor <= 1:
            raise ValueError("spread_floor must be in (0, 1]")
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0")


def neighbour_offsets(window: int, guard: int) -> torch.Tensor:
    """(K, 2) (dy, dx) offsets of the local support: the window minus the guard square around (0, 0)."""
    r = window // 2
    dy, dx = torch.meshgrid(torch.arange(-r, r + 1), torch.arange(-r, r + 1), indexing="ij")
    keep = torch.maximum(dy.abs(), dx.abs()) > guard
    return torch.stack([dy[keep], dx[keep]], dim=1)


def gather_neighbours(feat: torch.Tensor, offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Neighbour features at ``offsets`` for every token.

    feat (N, C, h, w) -> (N, C, K, h, w) neighbours and a (K, h, w) bool mask of which ones lie
    inside the grid (outside ones are zero and must not be used).
    """
    n, c, h, w = feat.shape
    r = int(offsets.abs().max())
    padded = F.pad(feat, (r, r, r, r))
    inside = F.pad(torch.ones(1, 1, h, w, dtype=torch.bool, device=feat.device), (r, r, r, r))
    nb, valid = [], []
    for dy, dx in offsets.tolist():
        nb.append(padded[:, :, r + dy:r + dy + h, r + dx:r + dx + w])
        valid.append(inside[0, 0, r + dy:r + dy + h, r + dx:r + dx + w])
    return torch.stack(nb, dim=2), torch.stack(valid, dim=0)


def kmeans(x: torch.Tensor, k: int, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Spherical k-means of unit vectors ``x`` (L, C): (centres (k, C) unit, assignment (L,)).

    Deterministic: farthest-point initialisation from the token most similar to the mean.
    """
    n = x.shape[0]
    k = min(k, n)
    first = int((x @ F.normalize(x.mean(0), dim=0)).argmax())
    idx = [first]
    best = x @ x[first]
    for _ in range(1, k):
        nxt = int(best.argmin())
        idx.append(nxt)
        best = torch.maximum(best, x @ x[nxt])
    centres = x[idx].clone()
    assign = (x @ centres.T).argmax(1)
    for _ in range(iters):
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k)
        empty = counts == 0
        centres = torch.where(empty[:, None], centres, F.normalize(sums, dim=1))
        new = (x @ centres.T).argmax(1)
        if torch.equal(new, assign):
            break
        assign = new
    return centres, assign


def typicality(tokens: torch.Tensor, hw: tuple[int, int], radius: int, m: int) -> torch.Tensor:
    """Global support of each token: mean of its ``m`` best cosine similarities to tokens *outside*
    its own ``(2 radius + 1)^2`` window (unit tokens (L, C) -> (L,)). A pattern that repeats across
    the image scores high; a local oddity (even one spanning several adjacent tokens) scores low."""
    h, w = hw
    yy, xx = torch.meshgrid(torch.arange(h, device=tokens.device), torch.arange(w, device=tokens.device), indexing="ij")
    yy, xx = yy.flatten(), xx.flatten()
    near = torch.maximum((yy[:, None] - yy[None]).abs(), (xx[:, None] - xx[None]).abs()) <= radius
    sim = (tokens @ tokens.T).masked_fill(near, float("-inf"))
    far = int((~near).sum(1).min())
    if far < 1:
        raise ValueError(f"grid {h}x{w} has no tokens outside a window of radius {radius}")
    return sim.topk(min(m, far), dim=1).values.mean(1)


def grnr_token_map(feat: torch.Tensor, p: GrnrParams = GrnrParams()) -> torch.Tensor:
    """Residual anomaly per token: feat (N, C, h, w) -> (N, h, w), ``1 - cos(f, reconstruction)``."""
    if feat.ndim != 4:
        raise ValueError(f"expected (N, C, h, w) features, got shape {tuple(feat.shape)}")
    n, c, h, w = feat.shape
    if min(h, w) <= p.window:
        raise ValueError(f"feature grid {h}x{w} too small for a {p.window}x{p.window} window")
    f = F.normalize(feat.float(), dim=1)
    offsets = neighbour_offsets(p.window, p.guard).to(f.device)
    out = []
    for b in range(n):  # one image at a time: the neighbour tensor is C x K x L, bounded per image
        tokens = f[b].flatten(1).T                                                   # (L, C)
        # global normality priors: typical patterns (large k-means clusters) and per-token support
        centres, assign = kmeans(tokens, p.n_centres, p.kmeans_iters)
        share = torch.bincount(assign, minlength=centres.shape[0]).float() / tokens.shape[0]
        typical_c = centres[share >= p.min_share / centres.shape[0]]                 # (M', C)
        dens = typicality(tokens, (h, w), p.window // 2, p.support_m)
        med = dens.median()
        spread = (1.0 - med).clamp_min(p.spread_floor)   # how far from perfect a typical token already is
        t = (1.0 - (med - dens).clamp_min(0.0) / spread).clamp(0.0, 1.0).pow(p.prior_power)
        nearest = typical_c[(tokens @ typical_c.T).argmax(1)]                         # (L, C)
        # regularised basis: each token replaced by a mix of itself and its typical pattern
        reg = F.normalize(t[:, None] * tokens + (1 - t[:, None]) * nearest, dim=1)   # (L, C)
        reg_map = reg.T.reshape(1, c, h, w)

        nb, valid = gather_neighbours(f[b:b + 1], offsets)                           # (1, C, K, h, w)
        nb_reg, _ = gather_neighbours(reg_map, offsets)
        sim = (nb[0] * f[b][:, None]).sum(0) / p.temperature                         # (K, h, w)
        sim = sim.masked_fill(~valid, float("-inf"))
        rec = _weighted_topk(sim.flatten(1), nb_reg[0].flatten(2), p.topk)           # (C, L)
        res = 1.0 - F.cosine_similarity(f[b].flatten(1), rec, dim=0, eps=1e-6)
        out.append(res.view(h, w))
    return torch.stack(out)


def _weighted_topk(logits: torch.Tensor, support: torch.Tensor, k: int) -> torch.Tensor:
    """Softmax-weighted mean of the ``k`` best support vectors per token: (S, L) x (C, S, L) -> (C, L)."""
    kk = min(k, logits.shape[0])
    top, idx = logits.topk(kk, dim=0)
    wts = torch.softmax(top, dim=0)
    chosen = torch.gather(support, 1, idx[None].expand(support.shape[0], -1, -1))
    return (chosen * wts[None]).sum(1)


def grnr_maps(groups: list[torch.Tensor], size: tuple[int, int], kernel1d: torch.Tensor,
              p: GrnrParams = GrnrParams(), top_fraction: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group GRNR residuals -> shared anomaly-map helpers: ((N, H, W) maps, (N,) scores)."""
    from inference.model.anomaly_map import fuse_maps, gaussian_blur, topk_mean_score

    per_group = [grnr_token_map(g, p) for g in groups]
    amap = gaussian_blur(fuse_maps(per_group, size), kernel1d)
    return amap, topk_mean_score(amap, top_fraction)


def expected_support(window: int, guard: int) -> int:
    """How many local neighbours an interior token has (documentation / tests)."""
    return window * window - (2 * guard + 1) ** 2
