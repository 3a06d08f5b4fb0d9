"""INP-Former's own zero-shot signal: each token's distance to its nearest intrinsic normal prototype.

A trained INP extractor turns *any* image into M prototypes that summarise what is typical in it
(the queries cross-attend to that image's own tokens). A token no prototype resembles is odd for
this image. The extractor and the projection were trained on *other* products, so nothing about the
new product is learnt; the map is ``min_m (1 - cos(token, INP_m))`` on the token grid, then the
shared upsample / blur / top-1% helpers.

Limits: the prototypes are biased towards what the training products looked like; a new product
whose normal variety needs more than M prototypes gets a noisy map, and a large defect can capture
a prototype of its own (then it looks typical).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from inference.model.anomaly_map import finish_maps
from inference.model.inp_former import InpFormer


def inp_distance_tokens(tokens: torch.Tensor, inps: torch.Tensor) -> torch.Tensor:
    """(N, L, D) tokens x (N, M, D) prototypes -> (N, L) distance to the nearest prototype (1 - cos)."""
    if tokens.ndim != 3 or inps.ndim != 3 or tokens.shape[0] != inps.shape[0] or tokens.shape[2] != inps.shape[2]:
        raise ValueError(f"shapes do not match: tokens {tuple(tokens.shape)}, inps {tuple(inps.shape)}")
    sim = F.normalize(tokens, dim=-1) @ F.normalize(inps, dim=-1).transpose(1, 2)   # (N, L, M)
    return 1.0 - sim.max(dim=-1).values


@torch.no_grad()
def inp_distance_maps(model: InpFormer, groups: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoder groups (as :meth:`InpFormer.encode` returns) -> ((N, H, W) maps, (N,) scores)."""
    n, _, h, w = groups[0].shape
    out = model.head(groups)
    dist = inp_distance_tokens(out.tokens, out.inps).view(n, h, w)
    return finish_maps([dist], model.cfg.input_hw, model.blur_kernel, model.cfg.top_fraction, model.cfg.map_hw)
