"""Prototype (benchmarks only, not in the model): a cosine extrinsic memory whose query-by-bank product runs
in int8 (issue 13). Measured here to learn whether a larger bank fits the speed floor; the product's
``ExtrinsicMemory`` is unchanged.

Why int8: the fp32 product of 1024 queries per image against the bank is at the CPU's fp32 peak already,
so a bank that scores better (2048 entries) only fits with a cheaper product. ONNX Runtime's
``MatMulInteger`` (uint8 x int8, VNNI) is ~4x cheaper; a 1-NN by cosine is the largest dot product, so the
int32 products reduce with one ``ReduceMax`` (no ``TopK``, no per-entry bias: the bank rows are unit
vectors). Queries and bank share one fixed scale (the bank's largest |component| / 127), so a frame's
score never depends on the other frames of its batch (``DynamicQuantizeLinear`` would make it); a query
component beyond the bank's range saturates (the greedy coreset keeps the training set's extreme rows, so
normal patches stay inside it; an anomalous one is far from the bank either way).

The eager forward computes the very integers ONNX Runtime computes from the same float rows: round half
to even, saturate, and integer sums below 2^24, exact in float32. The whole graph is not bit-exact: ORT's
normalisation rounds differently in the last bit, and a component on a rounding boundary moves one int8
step (a map difference of ~1e-3 at that patch), so it would not meet the model's 1e-4 ORT parity bound
everywhere - one reason it stays a benchmark prototype.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from inference.model.inp_former import ExtrinsicMemory

ZERO_POINT = 128  # uint8 queries: q_int = round(q / scale) + 128


class NearestDot(torch.autograd.Function):
    """(R, C) float rows -> (R,) largest int8 dot product with the bank, as float."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bank_t: torch.Tensor) -> torch.Tensor:
        qi = torch.clamp(torch.round(q / scale) + float(ZERO_POINT), 0.0, 255.0) - float(ZERO_POINT)
        return (qi @ bank_t.float()).max(dim=-1).values

    @staticmethod
    def symbolic(g: Any, q: Any, scale: Any, zero: Any, bank_t: Any) -> Any:
        qq = g.op("QuantizeLinear", q, scale, zero)
        s = g.op("MatMulInteger", qq, bank_t, zero)
        return g.op("Cast", g.op("ReduceMax", s, axes_i=[-1], keepdims_i=0), to_i=1)  # 1 = FLOAT


def quantize_bank(rows: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Unit rows (M, C) -> (int8 (C, M) transposed bank, scale)."""
    scale = float(rows.abs().max()) / 127.0
    return torch.round(rows / scale).clamp(-127, 127).t().to(torch.int8).contiguous(), scale


class Int8CosMemory(ExtrinsicMemory):
    """1-NN cosine memory with the product in int8; same ``fit`` / ``fit_stats`` / ``fuse`` contract."""

    def __init__(self, size: int, channels: int) -> None:
        super().__init__(size, channels, 1, "cos", 0)
        self.register_buffer("bank_t", torch.zeros(channels, size, dtype=torch.int8))
        self.register_buffer("scale", torch.tensor(1.0 / 127.0))
        self.register_buffer("zero", torch.tensor(ZERO_POINT, dtype=torch.uint8))

    @torch.no_grad()
    def fit(self, bank: torch.Tensor) -> None:
        super().fit(bank)  # the float bank too (centred), for reference
        q, scale = quantize_bank(F.normalize(bank.float(), dim=1))
        self.bank_t.copy_(q)
        self.scale.fill_(scale)

    def distance(self, feats: torch.Tensor) -> torch.Tensor:
        n, c, h, w = feats.shape
        q = F.normalize(feats.flatten(2).transpose(1, 2).reshape(n * h * w, c), dim=1)
        s = NearestDot.apply(q, self.scale, self.zero, self.bank_t) * (self.scale * self.scale)
        return (2.0 - 2.0 * s).clamp_min(0.0).sqrt().view(n, h, w)
