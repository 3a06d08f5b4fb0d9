"""Anomaly map and image score as pure, traceable tensor functions.

Shared by INP-Former and the PatchCore baseline so both are scored identically, and written
with static shapes only (fixed Gaussian conv kernel, ``topk`` with k from the static map size)
so the whole pipeline exports to ONNX in one graph.
"""

from __future__ import annotations

import math
from functools import reduce
from operator import add

import torch
import torch.nn.functional as F


def gaussian_kernel1d(sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian, radius 4 sigma (the reach scipy's gaussian_filter uses)."""
    if sigma <= 0:
        raise ValueError("sigma must be > 0")
    radius = int(4.0 * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(maps: torch.Tensor, kernel1d: torch.Tensor) -> torch.Tensor:
    """Separable blur of (N, H, W) maps with reflect padding (no dark border from zero padding)."""
    r = kernel1d.numel() // 2
    x = maps.unsqueeze(1)
    kh = kernel1d.view(1, 1, -1, 1).to(device=maps.device, dtype=maps.dtype)
    kw = kernel1d.view(1, 1, 1, -1).to(device=maps.device, dtype=maps.dtype)
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), kh)
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), kw)
    return x.view(-1, int(maps.shape[-2]), int(maps.shape[-1]))


def cosine_distance_map(enc: torch.Tensor, dec: torch.Tensor) -> torch.Tensor:
    """1 - cos over channels: (N, C, h, w) x 2 -> (N, h, w)."""
    return 1.0 - F.cosine_similarity(enc, dec, dim=1, eps=1e-6)


def length_weighted_cosine_map(enc: torch.Tensor, dec: torch.Tensor, typical_length: torch.Tensor | float) -> torch.Tensor:
    """(1 - cos) x |enc| / typical_length: (N, C, h, w) x 2 -> (N, h, w).

    On standardised features a token's length is how far it lies from the normal mean, in units of
    the normal spread; its direction is only meaningful in proportion. A token near the mean (plain
    background) has a noisy direction that plain cosine distance reports as an anomaly; weighting by
    length turns the measure into "how much of the token could not be rebuilt", comparable across
    tokens. ``typical_length`` (the median training-token length of the group) makes groups of
    different width count alike; it does not change the ranking within a group."""
    return cosine_distance_map(enc, dec) * enc.norm(dim=1) / typical_length


MAP_METRICS = ("cos", "cos_len")


def resize_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, h, w) -> (N, *size), bilinear; a map already at ``size`` is returned as is (a same-size bilinear
    resize is the identity, but in an ONNX graph it is a Resize node and a copy). The channel axis is dropped
    by a reshape to the static size, which exports as one Reshape (``squeeze`` exports as an If node when
    the exporter cannot prove the axis is 1)."""
    h, w = int(size[0]), int(size[1])
    if (int(maps.shape[-2]), int(maps.shape[-1])) == (h, w):
        return maps
    return F.interpolate(maps.unsqueeze(1), size=(h, w), mode="bilinear", align_corners=False).view(-1, h, w)


def mean_of(maps: list[torch.Tensor]) -> torch.Tensor:
    """Element-wise mean of same-shape tensors, as a chain of adds (the values of ``stack(...).mean(0)`` for
    one or two; in an ONNX graph no Concat of copies and no ReduceMean over them)."""
    total = reduce(add, maps)
    return total if len(maps) == 1 else total / len(maps)


def fuse_maps(maps: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """Upsample per-group (N, h, w) maps bilinearly to ``size`` and average them."""
    return mean_of([resize_maps(m, size) for m in maps])


def topk_mean_score(maps: torch.Tensor, fraction: float = 0.01) -> torch.Tensor:
    """Image score = mean of the top ``fraction`` of pixels of each (N, H, W) map."""
    n_pix = maps.shape[-2] * maps.shape[-1]
    k = max(1, int(math.ceil(n_pix * fraction)))
    return torch.topk(maps.flatten(1), k, dim=1).values.mean(dim=1)


def anomaly_map_and_score(
    enc: list[torch.Tensor], dec: list[torch.Tensor], size: tuple[int, int], kernel1d: torch.Tensor,
    top_fraction: float = 0.01, metric: str = "cos", work_size: tuple[int, int] | None = None,
    typical_lengths: list[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group distance (``metric`` in MAP_METRICS) -> upsample -> mean -> blur -> top-fraction score.

    With ``work_size`` (smaller than ``size``) the upsample, blur and score run at that resolution
    and only the finished map is upsampled to ``size``: a map that comes from a coarse token grid
    and is then blurred holds no detail finer than a few pixels, so this costs nothing in accuracy
    and a 16x smaller working map (the blur and top-k were a third of the model's CPU time).
    ``kernel1d`` must then be built for the working resolution (sigma scaled alike)."""
    return finish_maps(group_distance_maps(enc, dec, metric, typical_lengths), size, kernel1d, top_fraction, work_size)


def group_distance_maps(enc: list[torch.Tensor], dec: list[torch.Tensor], metric: str = "cos",
                        typical_lengths: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """Per-group (N, h, w) reconstruction error maps for ``metric`` in MAP_METRICS."""
    if metric == "cos":
        per_group = [cosine_distance_map(e, d) for e, d in zip(enc, dec)]
    elif metric == "cos_len":
        if typical_lengths is None or len(typical_lengths) != len(enc):
            raise ValueError("cos_len needs one typical length per group")
        per_group = [length_weighted_cosine_map(e, d, n) for e, d, n in zip(enc, dec, typical_lengths)]
    else:
        raise ValueError(f"unknown map metric {metric!r}; known: {MAP_METRICS}")
    return per_group


def finish_maps(per_group: list[torch.Tensor], size: tuple[int, int], kernel1d: torch.Tensor,
                top_fraction: float = 0.01, work_size: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Grid-level (N, h, w) distance maps -> (map (N, H, W) at ``size``, score (N,)); see
    :func:`anomaly_map_and_score` for ``work_size``."""
    work = (work_size or size)[0], (work_size or size)[1]
    amap = gaussian_blur(fuse_maps(per_group, work), kernel1d)
    score = topk_mean_score(amap, top_fraction)
    return resize_maps(amap, size), score
