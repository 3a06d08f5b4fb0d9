"""INP-Former training losses as pure functions.

* Global cosine loss with soft mining: each group's encoder/decoder maps are compared as one long
  vector per image (1 - cos), and every token's gradient is scaled by ``(d / mean d) ** p`` where
  ``d`` is that token's own cosine distance. Hard-to-rebuild tokens get more weight, easy ones
  fade out smoothly, so the decoder does not over-fit the easy majority. Done with a detach trick
  (the value is unchanged, only the gradient is rescaled), so no hooks and it composes with
  ``torch.func`` / ``gradcheck``.
* INP coherence: each projected encoder token should lie close to its nearest INP, which forces the
  INPs to cover the image's normal content. ``soft=True`` is INP-Former++'s variant: the token
  rebuilt as a softmax-weighted sum of the INPs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def scale_grad(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Return ``x`` unchanged in value whose gradient is multiplied by ``w`` (broadcast, no grad)."""
    # x.detach() + (x - x.detach()) * w: the value is x exactly ((x - x.detach()) is exactly 0), the
    # gradient is w. The tempting x * w + (x * (1 - w)).detach() cancels catastrophically when w is
    # large (a near-perfect group makes d / mean d explode) and returns a wrong loss value.
    xd = x.detach()
    return xd + (x - xd) * w.detach()


def soft_mining_weights(enc: torch.Tensor, dec: torch.Tensor, power: float = 3.0) -> torch.Tensor:
    """Per-token weights (N, 1, h, w): (d / mean d) ** power, d = 1 - cos over channels (no grad)."""
    with torch.no_grad():
        d = 1.0 - F.cosine_similarity(enc, dec, dim=1, eps=1e-6)
        w = (d / d.mean().clamp_min(1e-12)) ** power
    return w.unsqueeze(1)


def global_cosine_loss(enc: list[torch.Tensor], dec: list[torch.Tensor], power: float = 3.0) -> torch.Tensor:
    """Mean over groups and images of 1 - cos(flatten(enc), flatten(dec)), soft-mined if power > 0."""
    total = enc[0].new_zeros(())
    for e, d in zip(enc, dec):
        e = e.detach()
        if power > 0:
            d = scale_grad(d, soft_mining_weights(e, d, power))
        total = total + (1.0 - F.cosine_similarity(e.flatten(1), d.flatten(1), dim=1, eps=1e-6)).mean()
    return total / len(enc)


def coherence_loss(tokens: torch.Tensor, inps: torch.Tensor, soft: bool = False, temperature: float = 0.1) -> torch.Tensor:
    """Mean distance (1 - cos) from each token (N, L, D) to its nearest INP (N, M, D)."""
    t = F.normalize(tokens, dim=-1)
    p = F.normalize(inps, dim=-1)
    sim = t @ p.transpose(1, 2)                       # (N, L, M)
    if not soft:
        return (1.0 - sim.max(dim=-1).values).mean()
    rebuilt = torch.softmax(sim / temperature, dim=-1) @ inps
    return (1.0 - F.cosine_similarity(tokens, rebuilt, dim=-1, eps=1e-6)).mean()


def inp_former_loss(enc: list[torch.Tensor], dec: list[torch.Tensor], tokens: torch.Tensor, inps: torch.Tensor,
                    coherence_weight: float = 0.2, power: float = 3.0, soft: bool = False) -> torch.Tensor:
    return global_cosine_loss(enc, dec, power) + coherence_weight * coherence_loss(tokens, inps, soft)
