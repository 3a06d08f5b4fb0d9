"""StableAdamW and the warm-up + cosine schedule used to train INP-Former.

StableAdamW (Wortsman et al. 2023): AdamW with AMSGrad whose update for each tensor is divided by
``max(1, RMS(g / (sqrt(v_hat) + eps)))``. When a gradient spikes far above its running second
moment, the update is shrunk instead of exploding - which matters here because eps is tiny (1e-10).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch


class StableAdamW(torch.optim.Optimizer):
    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-10, weight_decay: float = 1e-4, amsgrad: bool = True, clip_update: bool = True) -> None:
        if lr < 0 or eps < 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError("invalid StableAdamW hyper-parameters")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      amsgrad=amsgrad, clip_update=clip_update))

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                st = self.state[p]
                if not st:
                    st["step"] = 0
                    st["m"] = torch.zeros_like(p)
                    st["v"] = torch.zeros_like(p)
                    st["v_max"] = torch.zeros_like(p)
                st["step"] += 1
                t = st["step"]
                st["m"].mul_(b1).add_(g, alpha=1 - b1)
                st["v"].mul_(b2).addcmul_(g, g, value=1 - b2)
                v = st["v"]
                if group["amsgrad"]:
                    torch.maximum(st["v_max"], v, out=st["v_max"])
                    v = st["v_max"]
                m_hat = st["m"] / (1 - b1 ** t)
                v_hat = v / (1 - b2 ** t)
                denom = v_hat.sqrt().add_(group["eps"])
                lr = group["lr"]
                if group["clip_update"]:
                    rms = (g.pow(2) / denom.pow(2)).mean().sqrt().item()
                    lr = lr / max(1.0, rms)
                if group["weight_decay"]:
                    p.mul_(1 - lr * group["weight_decay"])
                p.addcdiv_(m_hat, denom, value=-lr)
        return loss


def warmup_cosine(it: int, total: int, base_lr: float = 1e-3, final_lr: float = 1e-4, warmup: int = 100) -> float:
    """Linear warm-up from 0 over ``warmup`` iterations, then cosine from base_lr to final_lr at ``total``."""
    if warmup > 0 and it < warmup:
        return base_lr * (it + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (it - warmup) / span)
    return final_lr + 0.5 * (base_lr - final_lr) * (1 + math.cos(math.pi * progress))
