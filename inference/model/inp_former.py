"""INP-Former (Luo et al., CVPR 2025) adapted to a frozen CNN backbone.

Pipeline: frozen encoder -> multi-scale maps on one token grid, concatenated into two fused groups
(shallow / deep) -> linear projection to the model width -> (a) an INP extractor: M learnable
queries cross-attend to the tokens and become the image's *intrinsic normal prototypes*; (b) a
noisy bottleneck MLP (dropout) -> an INP-guided decoder whose attention uses the INPs as the only
keys/values (L2-normalised q/k, ReLU, learnable per-head scale, no softmax, no residual around
attention), so a token can only be rebuilt from normal prototypes -> per-group output heads that
reconstruct the frozen encoder groups (decoder halves reversed). Anomalies are where the
reconstruction fails (1 - cos).

All the learnable parts live in :class:`InpHead`; the backbone is frozen and rebuilt from its
package at load time, so ``weights.pt`` holds only the head.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from inference.model.anomaly_map import (
    MAP_METRICS,
    anomaly_map_and_score,
    finish_maps,
    fuse_maps,
    gaussian_kernel1d,
    group_distance_maps,
    mean_of,
    resize_maps,
)
from inference.model.backbones import FrozenBackbone, build_backbone, default_groups, resize_to_grid

# How the frozen encoder features are normalised (fixed train statistics) before the head sees them
# and before they are compared with the reconstruction:
#   none         raw features
#   center       subtract the per-channel train mean (removes the shared offset that makes all tokens
#                alike under cosine) without rescaling channels
#   zscore       subtract the mean, divide by the per-channel std
#   zscore_floor as zscore, std clamped below at STD_FLOOR x the group's median channel std, so that
#                near-constant channels are not amplified into noise
FEATURE_NORMS = ("none", "center", "zscore", "zscore_floor")
BANK_METRICS = ("l2", "cos")              # the distance of one bank (ExtrinsicMemory)
MEMORY_METRICS = BANK_METRICS + ("cos+l2",)  # InpConfig.memory_metric; "cos+l2": two banks (PairedMemory)
STD_FLOOR = 0.5

# How a token's reconstruction error is measured for the anomaly map (and so the image score),
# InpConfig.map_metric, one of anomaly_map.MAP_METRICS:
#   cos      1 - cos(target, rebuilt) on the normalised features (the paper's measure)
#   cos_len  cos x the target token's length / the group's median training-token length: a token
#            near the normal mean (plain background) has a noisy direction; its error counts in
#            proportion to how far it is from the mean (benchmarks/RESULTS.md, lever sweep: the cos and
#            cos_len rows of the tire column)
# (A squared-error map is no option: the cosine loss leaves the reconstruction's length free, so
# |target - rebuilt| measures the target's distance from the mean, not the reconstruction.)


@dataclass
class InpConfig:
    """Architecture hyper-parameters; stored verbatim in a model dir's config.json."""

    backbone: str = "efficientnet_lite0"
    groups: list[list[int]] = field(default_factory=list)  # block indices per fused group; [] = backbone default
    input_hw: tuple[int, int] = (256, 256)
    token_stride: int = 16         # token grid = input / stride (16: same accuracy as 8 in the sweep, 4x fewer tokens)
    local_pool: int = 3            # k x k average pooling of encoder maps (PatchCore's locally-aware patches); 1 = off
    width: int = 128
    head_dim: int = 32
    mlp_ratio: float = 2.0         # 2 and 4 decoder blocks: more accurate than 4 / 8 in bench_levers (a decoder
                                   # with less capacity also rebuilds anomalies less well) and ~2x cheaper
    n_inps: int = 6
    extractor_blocks: int = 1
    decoder_blocks: int = 4
    dropout: float = 0.2           # bottleneck dropout during training
    feature_norm: str = "zscore"   # fixed per-channel train statistics applied to encoder features: FEATURE_NORMS
    map_metric: str = "cos_len"    # reconstruction error measure of the anomaly map: MAP_METRICS
    sigma: float = 4.0             # Gaussian blur of the map, in input pixels
    top_fraction: float = 0.01
    map_stride: int = 4            # the map is blurred and scored at input / map_stride, then upsampled
    # Extrinsic memory (INP-Former + memory): a greedy coreset of ``memory_size`` normal training
    # patches (the last block of each group, 3x3 pooled, on the input/``memory_stride`` grid, coarser
    # blocks upsampled to it); a patch's distance to its nearest memory entry is a second map, fused
    # with the reconstruction map after both are standardised on held-out normal images. 0 = the pure
    # INP-Former (and what every config written before this field means).
    memory_size: int = 0
    memory_stride: int = 8
    memory_weight: float = 1.0     # weight of the standardised memory map in the sum (reconstruction: 1)
    # a patch's memory distance = mean Euclidean distance to its ``memory_k`` nearest entries; 3 scores
    # like the strongest kNN yardstick (knn_cs1_k3: +0.007 P-AUROC over k = 1, bench_memory_diag.py).
    # Configs written before this field meant 1: lineinspect.model_meta.migrate restores that.
    memory_k: int = 3
    # "l2": Euclidean distance of the pooled features; "cos": of their unit vectors (= sqrt(2 - 2 cos),
    # the order of 1 - cos): blind to a patch's feature length, so contrast and brightness shifts of a
    # normal part move it less (bench_memory_diag.py: image AUROC +0.04, pixel AUROC about level)
    memory_metric: str = "l2"
    # > 0: distances on the memory features' top ``memory_dims`` principal axes (fit on the training
    # patches), a cheaper query-by-bank product; 0 = all channels (and what older configs mean)
    memory_dims: int = 0
    # INP-Former++'s residual learning: a small convolutional segmentation head (this many hidden
    # channels) reads the stop-gradient residual between the encoder targets and their reconstruction,
    # is trained after the main model on synthetic pseudo-anomalies (training.residual), and its mask
    # is fused with the (reconstruction or memory-fused) map after both are standardised on held-out
    # normals. 0 = off (and what every config written before this field means).
    residual_head: int = 0
    residual_weight: float = 1.0   # weight of the standardised head mask in the sum (the base map counts 1)

    def __post_init__(self) -> None:
        self.input_hw = (int(self.input_hw[0]), int(self.input_hw[1]))
        if not self.groups:
            self.groups = default_groups(self.backbone)
        self.groups = [list(map(int, g)) for g in self.groups]
        if len(self.groups) < 1:
            raise ValueError("need at least one feature group")
        if self.decoder_blocks % len(self.groups):
            raise ValueError("decoder_blocks must be a multiple of the number of groups")
        if any(s % self.token_stride for s in self.input_hw):
            raise ValueError(f"input size {self.input_hw} must be a multiple of token_stride {self.token_stride}")
        if self.width % self.head_dim:
            raise ValueError("width must be a multiple of head_dim")
        if self.feature_norm not in FEATURE_NORMS:
            raise ValueError(f"feature_norm must be one of {FEATURE_NORMS}, got {self.feature_norm!r}")
        if self.map_stride < 1 or any(s % self.map_stride for s in self.input_hw):
            raise ValueError(f"input size {self.input_hw} must be a multiple of map_stride {self.map_stride}")
        if self.map_metric not in MAP_METRICS:
            raise ValueError(f"map_metric must be one of {MAP_METRICS}, got {self.map_metric!r}")
        if self.memory_size < 0:
            raise ValueError("memory_size must be >= 0 (0 = no extrinsic memory)")
        if self.memory_size and any(s % self.memory_stride for s in self.input_hw):
            raise ValueError(f"input size {self.input_hw} must be a multiple of memory_stride {self.memory_stride}")
        if self.memory_weight < 0:
            raise ValueError("memory_weight must be >= 0")
        if self.memory_metric not in MEMORY_METRICS:
            raise ValueError(f"memory_metric must be one of {MEMORY_METRICS}, got {self.memory_metric!r}")
        if self.memory_dims < 0:
            raise ValueError("memory_dims must be >= 0 (0 = all channels)")
        if self.memory_dims and self.memory_metric == "cos+l2":
            raise ValueError("memory_dims is not available with the paired memory (memory_metric 'cos+l2')")
        if self.memory_k < 1 or (self.memory_size and self.memory_k > self.memory_size):
            raise ValueError(f"memory_k must be in 1..memory_size ({self.memory_size}), got {self.memory_k}")
        if self.residual_head < 0:
            raise ValueError("residual_head must be >= 0 (hidden channels; 0 = no residual head)")
        if self.residual_weight < 0:
            raise ValueError("residual_weight must be >= 0")

    @property
    def map_hw(self) -> tuple[int, int]:
        """Working resolution of the anomaly map (blur and score)."""
        return (self.input_hw[0] // self.map_stride, self.input_hw[1] // self.map_stride)

    @property
    def memory_grid(self) -> tuple[int, int]:
        return (self.input_hw[0] // self.memory_stride, self.input_hw[1] // self.memory_stride)

    @property
    def grid(self) -> tuple[int, int]:
        return (self.input_hw[0] // self.token_stride, self.input_hw[1] // self.token_stride)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_hw"] = list(self.input_hw)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InpConfig:
        known = {f.name for f in fields(cls)}
        # Older model directories are upgraded by lineinspect.model_meta.migrate before they get here.
        return cls(**{k: v for k, v in d.items() if k in known})


def channel_stats(e: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (mean, divisor) of features (N, C, ...) for ``mode`` in FEATURE_NORMS.

    The divisor is 1 for ``center``/``none``, so every mode is applied as (x - mean) / divisor.
    """
    x = e.transpose(0, 1).reshape(e.shape[1], -1)
    mean, std = x.mean(1), x.std(1)
    if mode == "none":
        mean, div = torch.zeros_like(mean), torch.ones_like(std)
    elif mode == "center":
        div = torch.ones_like(std)
    elif mode == "zscore":
        div = std.clamp_min(1e-6)
    elif mode == "zscore_floor":
        div = std.clamp_min(max(STD_FLOOR * float(std.median()), 1e-6))
    else:
        raise ValueError(f"unknown feature_norm {mode!r}")
    return mean, div


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, out: int | None = None, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, out or dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))


class CrossAttention(nn.Module):
    """Softmax cross-attention (used by the INP extractor: queries gather from the tokens)."""

    def __init__(self, dim: int, head_dim: int) -> None:
        super().__init__()
        self.h = dim // head_dim
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        q = heads(self.q(x), self.h)
        k, v = self.kv(ctx).view(-1, int(ctx.shape[1]), 2, self.h, int(ctx.shape[2]) // self.h).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5)
        out = attn.softmax(-1) @ v
        return self.proj(merge_heads(out))


class InpAttention(nn.Module):
    """INP-guided attention: cos(q, k) -> ReLU -> x learnable per-head scale; values are the INPs."""

    def __init__(self, dim: int, head_dim: int) -> None:
        super().__init__()
        self.h = dim // head_dim
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.scale = nn.Parameter(torch.ones(self.h, 1, 1))
        self.proj = nn.Linear(dim, dim)

    def attention(self, x: torch.Tensor, inps: torch.Tensor) -> torch.Tensor:
        """Attention weights (N, heads, tokens, M); exposed for tests."""
        q = unit(heads(self.q(x), self.h))
        k = unit(heads(self.k(inps), self.h))
        return F.relu(q @ k.transpose(-2, -1)) * self.scale

    def forward(self, x: torch.Tensor, inps: torch.Tensor) -> torch.Tensor:
        out = self.attention(x, inps) @ heads(self.v(inps), self.h)
        return self.proj(merge_heads(out))


def heads(x: torch.Tensor, h: int) -> torch.Tensor:
    """(N, L, D) -> (N, h, L, D / h). Every size but the batch is read as a Python int, so an exported graph
    reshapes to a constant shape (-1 for the batch) instead of computing it from Shape / Gather / Concat nodes."""
    length, dim = int(x.shape[1]), int(x.shape[2])
    return x.view(-1, length, h, dim // h).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(N, h, L, d) -> (N, L, h * d), the inverse of :func:`heads` (a constant reshape, as there)."""
    h, length, d = int(x.shape[1]), int(x.shape[2]), int(x.shape[3])
    return x.transpose(1, 2).reshape(-1, length, h * d)


class _TokenBlock(nn.Module):
    """What both transformer blocks share: a norm for the attended tokens, an attention, a normed MLP.
    Each subclass adds its own query norm under its historical name (``nq`` / ``n1``): those names are
    keys of saved ``weights.pt`` files, so they stay."""

    def __init__(self, dim: int, mlp_ratio: float, attn: nn.Module) -> None:
        super().__init__()
        self.nk, self.n2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = attn
        self.mlp = Mlp(dim, int(dim * mlp_ratio))


class ExtractorBlock(_TokenBlock):
    """Prototype queries attend to the image's tokens (residual: the queries accumulate context)."""

    def __init__(self, dim: int, head_dim: int, mlp_ratio: float) -> None:
        super().__init__(dim, mlp_ratio, CrossAttention(dim, head_dim))
        self.nq = nn.LayerNorm(dim)

    def forward(self, q: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        q = q + self.attn(self.nq(q), self.nk(tokens))
        return q + self.mlp(self.n2(q))


class DecoderBlock(_TokenBlock):
    """Tokens are rebuilt from the INPs only (no residual: an anomalous token cannot pass through)."""

    def __init__(self, dim: int, head_dim: int, mlp_ratio: float) -> None:
        super().__init__(dim, mlp_ratio, InpAttention(dim, head_dim))
        self.n1 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, inps: torch.Tensor) -> torch.Tensor:
        x = self.attn(self.n1(x), self.nk(inps))
        return x + self.mlp(self.n2(x))


class MemoryQueries(NamedTuple):
    """A batch's memory features as the banks search them (:func:`memory_queries`)."""

    rows: torch.Tensor  # (N, L, C + 1): each patch's feature q with a 1 appended (it carries a bank's constant term)
    sq: torch.Tensor    # (N, L): |q|^2


def memory_queries(feats: torch.Tensor) -> MemoryQueries:
    """(N, C, h, w) memory features -> :class:`MemoryQueries`. The ones channel is appended before the
    transpose to rows, so the one copy the transpose makes carries it (no second pass over the queries to
    pad them), and |q|^2 is summed along the channels of the map as it is."""
    f = feats.flatten(2)                                                       # (N, C, L)
    rows = torch.cat([f, torch.ones_like(f[:, :1])], dim=1).transpose(1, 2)
    return MemoryQueries(rows, (f * f).sum(1))


class ExtrinsicMemory(nn.Module):
    """Fixed bank of normal patch features plus the statistics that put its distance map on the
    reconstruction map's scale. Nearest-neighbour search is one matmul and a min, so the bank is a
    constant inside the exported ONNX graph (no index, no custom op)."""

    center: torch.Tensor
    bank: torch.Tensor
    bank_sq: torch.Tensor
    proj: torch.Tensor  # only when dims > 0 (annotation only: hasattr tells)
    rec_stats: torch.Tensor
    mem_stats: torch.Tensor

    def __init__(self, size: int, channels: int, k: int = 1, metric: str = "l2", dims: int = 0) -> None:
        super().__init__()
        if not 1 <= k <= max(size, 1):
            raise ValueError(f"k must be in 1..{size}, got {k}")
        if metric not in BANK_METRICS:
            raise ValueError(f"metric must be one of {BANK_METRICS}, got {metric!r}")
        if not 0 <= dims <= channels:
            raise ValueError(f"dims must be in 0..{channels} (0 = all channels), got {dims}")
        self.k = k
        self.metric = metric
        self.channels = channels
        width = dims or channels
        if dims:
            # fixed projection on the training patches' top principal axes (fit_projection): the
            # query-by-bank product, most of the memory's cost, shrinks by dims / channels
            self.register_buffer("proj", torch.zeros(channels, dims))
        # the bank is stored centred on its own mean (the layout of every saved model). The principal-axes
        # search shifts its queries alike; the full-width search adds the centre back into its constant
        # search bank (search_bank), which saves a pass over the queries: on real stride-8 features the
        # uncentred distances' float32 error is ~1e-6 relative either way (|q| ~ 43, distances 13-64)
        self.register_buffer("center", torch.zeros(width))
        self.register_buffer("bank", torch.zeros(size, width))
        self.register_buffer("bank_sq", torch.zeros(size))
        # (mean, std) of the reconstruction map and of the memory map over held-out normal pixels
        self.register_buffer("rec_stats", torch.tensor([0.0, 1.0]))
        self.register_buffer("mem_stats", torch.tensor([0.0, 1.0]))

    @property
    def dims(self) -> int:
        return int(self.bank.shape[1]) if hasattr(self, "proj") else 0

    def banks(self) -> list[ExtrinsicMemory]:
        """The banks to fill (training picks one coreset per bank, in the space its distance is measured in)."""
        return [self]

    def fit_part_stats(self, feats: torch.Tensor) -> None:
        """No-op: a single bank's distance is standardised by :meth:`fit_stats` alone (see PairedMemory)."""

    def _prepare(self, rows: torch.Tensor) -> torch.Tensor:
        """(R, C) feature rows -> the space distances are measured in (unit vectors for "cos")."""
        return unit(rows) if self.metric == "cos" else rows

    @torch.no_grad()
    def fit_projection(self, rows: torch.Tensor) -> None:
        """Principal axes of the training patch rows (R, C) (after the metric's normalisation); no-op
        without ``dims``. Call before :meth:`fit`; refilling the bank later keeps the axes."""
        if not hasattr(self, "proj"):
            return
        x = self._prepare(rows.float())
        x = x - x.mean(0)
        cov = x.t() @ x / max(1, x.shape[0] - 1)
        vals, vecs = torch.linalg.eigh(cov.double())                         # ascending
        self.proj.copy_(vecs[:, -self.proj.shape[1]:].flip(1).to(self.proj.dtype))

    @torch.no_grad()
    def fit(self, bank: torch.Tensor) -> None:
        """Fill the bank from (size, C) feature rows (projected here when the memory has ``dims``)."""
        if bank.shape != (self.bank.shape[0], self.channels):
            raise ValueError(f"memory bank shape {tuple(bank.shape)} != configured {(self.bank.shape[0], self.channels)}")
        bank = self._prepare(bank)
        if hasattr(self, "proj"):
            bank = bank @ self.proj
        self.center.copy_(bank.mean(0))
        self.bank.copy_(bank - self.center)
        self.bank_sq.copy_((self.bank * self.bank).sum(1))

    @torch.no_grad()
    def fit_stats(self, rec: torch.Tensor, mem: torch.Tensor) -> None:
        for buf, m in ((self.rec_stats, rec), (self.mem_stats, mem)):
            buf.copy_(mean_std(m))

    def distance(self, feats: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) -> (N, h, w): mean distance (Euclidean, or of unit vectors for "cos") to the ``k``
        nearest bank entries (k = 1: the nearest, a plain min)."""
        h, w = int(feats.shape[-2]), int(feats.shape[-1])
        if hasattr(self, "proj"):
            return self._projected_distance(feats.flatten(2).transpose(1, 2)).view(-1, h, w)
        return self.query_distance(memory_queries(feats)).view(-1, h, w)

    def search_bank(self) -> torch.Tensor:
        """(M, C + 1): what the query rows [q, 1] are multiplied with. Cosine: the unit entries u and a 0
        (q.u; |q/|q| - u|^2 = 2 - 2 q.u / |q|, so the nearest entries are those of the largest raw dot and the
        division by |q| waits until after the max / top-k: per query, not per entry). Euclidean: -2 b and |b|^2
        (|b|^2 - 2 q.b, the query's |q|^2 added after the min / top-k). Constant: folded into one initializer at
        export. (The stored bank is centred; its centre is added back here.)"""
        entries = self.bank + self.center
        if self.metric == "cos":
            return torch.cat([entries, torch.zeros_like(entries[:, :1])], dim=1)
        return euclidean_search_rows(entries, (entries * entries).sum(1))

    def query_distance(self, q: MemoryQueries) -> torch.Tensor:
        """:meth:`distance` of the batch's :class:`MemoryQueries` -> (N, L) for a full-width bank: the paired
        memory builds them once for both banks."""
        if hasattr(self, "proj"):
            raise ValueError("a principal-axes memory searches projected rows: call distance()")
        return self._nearest(bank_dot(q.rows, self.search_bank()), q.sq, self.metric == "cos")

    def _nearest(self, prod: torch.Tensor, sq: torch.Tensor, cos: bool) -> torch.Tensor:
        """(N, L, M) search products and the queries' |q|^2 (N, L) -> (N, L): the mean distance to the ``k``
        nearest entries. Cosine: the largest raw dots q.u, 2 - 2 q.u / |q|; Euclidean: the smallest
        |b|^2 - 2 q.b, |q|^2 added after the min / top-k (per query, not per entry)."""
        if self.k == 1:
            top = prod.max(dim=-1).values if cos else prod.min(dim=-1).values  # (N, L)
        else:
            top = torch.topk(prod, self.k, dim=-1, largest=cos).values         # (N, L, k)
            sq = sq.unsqueeze(-1)
        d2 = 2.0 - 2.0 * top / sq.sqrt().clamp_min(1e-12) if cos else top + sq
        near = d2.clamp_min(0.0).sqrt()
        return near if self.k == 1 else near.mean(-1)

    def _projected_distance(self, q: torch.Tensor) -> torch.Tensor:
        """Query rows (N, L, C) -> (N, L) on the principal axes (``dims`` > 0): normalised first for "cos",
        projected, centred on the projected bank's mean, searched with |b|^2 - 2 q.b and |q|^2 added after."""
        if self.metric == "cos":
            q = unit(q)
        q = q @ self.proj - self.center                                         # (N, L, dims)
        return self._nearest(bank_product(q, self.bank, self.bank_sq), (q * q).sum(-1), cos=False)

    def fuse(self, rec: torch.Tensor, mem: torch.Tensor, weight: float) -> torch.Tensor:
        """Standardised reconstruction map + ``weight`` x standardised memory map (same size)."""
        return standardised_sum(rec, self.rec_stats, mem, self.mem_stats, weight)


class PairedMemory(nn.Module):
    """Two banks of normal patches, one searched by cosine and one by Euclidean distance
    (``memory_metric="cos+l2"``), each with its own greedy coreset: the cosine bank says whether a patch's
    *kind* of feature is normal (blind to its strength: image AUROC), the Euclidean one whether its strength
    is too (pixel AUROC and AUPRO on tire and magnetic tile, where the cosine memory alone loses to the kNN).
    Each bank's distance is standardised on held-out normals and the two are summed, so in :meth:`fuse` each
    weighs ``weight`` against the standardised reconstruction map. The cosine bank is searched 1-NN, the
    Euclidean one ``k``-NN (measured: cosine 1-NN beats 3-NN at 2048 entries, quality.json, and inside the pair
    on tire, the one category that comparison was run on; Euclidean 3-NN beats 1-NN, bench_memory_diag.py). Same contract as :class:`ExtrinsicMemory`; two products of the
    bank's size, so two banks of 1024 cost what one of 2048 does."""

    part_stats: torch.Tensor
    rec_stats: torch.Tensor
    mem_stats: torch.Tensor

    def __init__(self, size: int, channels: int, k: int = 1) -> None:
        super().__init__()
        self.cos = ExtrinsicMemory(size, channels, 1, "cos")
        self.l2 = ExtrinsicMemory(size, channels, k, "l2")
        self.channels = channels
        # (mean, std) of each bank's raw distance over held-out normal patches (rows: cos, l2)
        self.register_buffer("part_stats", torch.tensor([[0.0, 1.0], [0.0, 1.0]]))
        self.register_buffer("rec_stats", torch.tensor([0.0, 1.0]))
        # the summed distance is already standardised part by part: kept at (0, 1) so fuse() adds it as is
        self.register_buffer("mem_stats", torch.tensor([0.0, 1.0]))

    @property
    def dims(self) -> int:
        return 0

    def banks(self) -> list[ExtrinsicMemory]:
        return [self.cos, self.l2]

    def fit_projection(self, rows: torch.Tensor) -> None:
        """No-op (no principal-axes projection with two banks: ``memory_dims`` must be 0)."""

    @torch.no_grad()
    def fit(self, bank: torch.Tensor) -> None:
        """Fill both banks from the same (size, C) rows (training instead picks one coreset per bank, in the
        bank's own space: :meth:`banks`)."""
        for b in self.banks():
            b.fit(bank)

    @torch.no_grad()
    def fit_part_stats(self, feats: torch.Tensor, chunk: int = 16) -> None:
        """(mean, std) of each bank's distance over the memory features (N, C, h, w) of held-out normals;
        call after the banks are filled and before :meth:`fit_stats`."""
        for row, bank in enumerate(self.banks()):
            d = torch.cat([bank.distance(feats[i:i + chunk]) for i in range(0, feats.shape[0], chunk)])
            self.part_stats[row].copy_(mean_std(d))

    @torch.no_grad()
    def fit_stats(self, rec: torch.Tensor, mem: torch.Tensor) -> None:
        self.rec_stats.copy_(mean_std(rec))

    def distance(self, feats: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) -> (N, h, w): the sum of the two banks' standardised distances (the query rows and their
        lengths built once for both)."""
        h, w = int(feats.shape[-2]), int(feats.shape[-1])
        q = memory_queries(feats)
        return (standardise(self.cos.query_distance(q), self.part_stats[0])
                + standardise(self.l2.query_distance(q), self.part_stats[1])).view(-1, h, w)

    def fuse(self, rec: torch.Tensor, mem: torch.Tensor, weight: float) -> torch.Tensor:
        return standardised_sum(rec, self.rec_stats, mem, self.mem_stats, weight)


def make_memory(size: int, channels: int, k: int, metric: str, dims: int = 0) -> ExtrinsicMemory | PairedMemory:
    """The memory ``InpConfig.memory_metric`` names: one bank, or the cosine + Euclidean pair."""
    if metric == "cos+l2":
        if dims:
            raise ValueError("the paired memory has no principal-axes projection (dims must be 0)")
        return PairedMemory(size, channels, k)
    return ExtrinsicMemory(size, channels, k, metric, dims)


def unit(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``x`` / max(|x|, eps) along the last axis: ``F.normalize``'s values (bit for bit), but the norm is
    broadcast in the division instead of expanded to ``x``'s shape first (an ONNX Expand and a full-size copy
    per call: four decoder blocks and the cosine memory paid ~1.8 ms of a batch-8 pass for them)."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(eps)


def mean_std(x: torch.Tensor) -> torch.Tensor:
    """(mean, std) of all of ``x``, the std floored at 1e-6: the statistics a map is standardised with (taken
    on held-out normal pixels)."""
    return torch.stack([x.mean(), x.std().clamp_min(1e-6)])


def standardise(x: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
    """(x - mean) / std with ``stats`` = (mean, std) from :func:`mean_std`."""
    return (x - stats[0]) / stats[1]


def standardised_sum(a: torch.Tensor, a_stats: torch.Tensor, b: torch.Tensor, b_stats: torch.Tensor,
                     weight: float) -> torch.Tensor:
    """standardise(a) + ``weight`` x standardise(b): how two maps measured on different scales are put on one
    (each standardised on held-out normal pixels) and summed."""
    return standardise(a, a_stats) + weight * standardise(b, b_stats)


def bank_dot(q: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """q.b for every query row of ``q`` (..., L, C) and bank row (M, C): (..., L, M), as one 2-D product (the
    lead sizes read as ints: the batch, the only dynamic axis of an exported graph, is the reshape's -1)."""
    lead = [int(s) for s in q.shape[1:-1]]
    return (q.reshape(-1, int(q.shape[-1])) @ bank.t()).view(-1, *lead, int(bank.shape[0]))


def bank_product(q: torch.Tensor, bank: torch.Tensor, bank_sq: torch.Tensor) -> torch.Tensor:
    """|b|^2 - 2 q.b for every query row of ``q`` (..., L, C) and bank row (M, C): (..., L, M).

    One product of [q, 1] with [-2 b, |b|^2]: the bank side is constant (folded into one initializer at
    export), so the query-by-bank matrix, the memory's largest tensor, is written once instead of once by
    the product and again by the subtraction (ONNX Runtime, batch 8, memory 1024: about 6 % faster; a Gemm
    with |b|^2 as its bias measured ~0.9 ms slower per 8192 x 384 product than this). Used by the
    principal-axes search; the full-width search appends the ones once for all banks (:func:`memory_queries`)."""
    return F.pad(q, (0, 1), value=1.0) @ euclidean_search_rows(bank, bank_sq).t()


def euclidean_search_rows(bank: torch.Tensor, bank_sq: torch.Tensor) -> torch.Tensor:
    """(M, C) entries and their |b|^2 (M,) -> (M, C + 1) rows [-2 b, |b|^2]: multiplied with a query row [q, 1]
    they give |b|^2 - 2 q.b, the squared distance less |q|^2 (the same for every entry of a query)."""
    return torch.cat([-2.0 * bank, bank_sq.unsqueeze(1)], dim=1)


def residual_features(targets: list[torch.Tensor], dec: list[torch.Tensor]) -> torch.Tensor:
    """Per group and channel (1 - cos(E, D)) x |E - D| on the token grid, groups concatenated:
    (N, sum C_g, h, w). The cosine factor is the token's reconstruction failure (what the map
    measures), the absolute difference says in which channels it failed; a well-rebuilt token gives
    ~0 whatever its content. (Tried and measured worse on pixel AUROC / AUPRO, seed 0, 4 categories:
    D scaled to the target's length first, since the cosine loss leaves the reconstruction's length
    free - benchmarks/results/residual.json, ``variant_aligned_iters300``.)"""
    parts = []
    for e, d in zip(targets, dec):
        miss = 1.0 - F.cosine_similarity(e, d, dim=1, eps=1e-6).unsqueeze(1)
        parts.append(miss * (e - d).abs())
    return torch.cat(parts, dim=1)


class ResidualHead(nn.Module):
    """INP-Former++'s residual learning as read here: a small conv net that turns the residual
    features (:func:`residual_features`, computed under no_grad from the frozen main model) into an
    anomaly-mask logit per token, plus the held-out statistics that fuse its mask with the base map.
    Plain convolutions, ReLU and a sigmoid, so it exports into the model's one ONNX graph."""

    base_stats: torch.Tensor
    res_stats: torch.Tensor

    def __init__(self, in_channels: int, hidden: int) -> None:
        super().__init__()
        if hidden < 1:
            raise ValueError("a residual head needs >= 1 hidden channel")
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1), nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(),
            nn.Conv2d(hidden, 1, 1),
        )
        # (mean, std) over held-out normal pixels of the base map (reconstruction, or reconstruction +
        # memory) and of the head's mask, both at the map's working resolution
        self.register_buffer("base_stats", torch.tensor([0.0, 1.0]))
        self.register_buffer("res_stats", torch.tensor([0.0, 1.0]))

    def logits(self, feats: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) residual features -> (N, h, w) mask logits on the token grid."""
        return self.net(feats).flatten(0, 1)

    def mask(self, feats: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Anomaly probability, bilinearly brought to ``size``: (N, *size)."""
        return resize_maps(torch.sigmoid(self.net(feats)).flatten(0, 1), size)

    @torch.no_grad()
    def fit_stats(self, base: torch.Tensor, res: torch.Tensor) -> None:
        for buf, m in ((self.base_stats, base), (self.res_stats, res)):
            buf.copy_(mean_std(m))

    def fuse(self, base: torch.Tensor, res: torch.Tensor, weight: float) -> torch.Tensor:
        """Standardised base map + ``weight`` x standardised head mask (same size)."""
        return standardised_sum(base, self.base_stats, res, self.res_stats, weight)


@dataclass
class HeadOutput:
    dec: list[torch.Tensor]      # per group (N, C_g, h, w), aligned with the encoder groups
    targets: list[torch.Tensor]  # the (standardised) encoder groups the decoder must rebuild, same shapes
    tokens: torch.Tensor         # projected encoder tokens (N, L, D) (coherence-loss side)
    inps: torch.Tensor           # (N, M, D)


class InpHead(nn.Module):
    """Everything learnable: projection, INP extractor, bottleneck, decoder, output heads."""

    memory: ExtrinsicMemory | PairedMemory  # only when cfg.memory_size > 0
    residual: ResidualHead   # only when cfg.residual_head > 0

    def __init__(self, cfg: InpConfig, group_channels: list[int], memory_channels: int = 0) -> None:
        super().__init__()
        if cfg.memory_size and memory_channels < 1:
            raise ValueError("an extrinsic memory needs its feature width (memory_channels)")
        d = cfg.width
        self.cfg = cfg
        self.group_channels = list(group_channels)
        self.proj = nn.Linear(sum(group_channels), d)
        self.queries = nn.Parameter(torch.randn(cfg.n_inps, d) * 0.02)
        self.extractor = nn.ModuleList(ExtractorBlock(d, cfg.head_dim, cfg.mlp_ratio) for _ in range(cfg.extractor_blocks))
        self.bottleneck = nn.Sequential(nn.Dropout(cfg.dropout), Mlp(d, int(d * cfg.mlp_ratio), d, cfg.dropout))
        self.decoder = nn.ModuleList(DecoderBlock(d, cfg.head_dim, cfg.mlp_ratio) for _ in range(cfg.decoder_blocks))
        self.out = nn.ModuleList(nn.Linear(d, c) for c in group_channels)
        # Fixed (not learned) per-channel statistics of the training features. CNN feature maps carry
        # a large shared per-channel offset; without removing it every token looks alike under
        # cosine similarity and the decoder learns the mean instead of the token.
        for i, c in enumerate(group_channels if cfg.feature_norm != "none" else []):
            self.register_buffer(f"feat_mean{i}", torch.zeros(c))
            self.register_buffer(f"feat_std{i}", torch.ones(c))
        # Median length of the (normalised) training tokens per group, for the cos_len map.
        for i in range(len(group_channels) if cfg.map_metric == "cos_len" else 0):
            self.register_buffer(f"token_len{i}", torch.ones(()))
        if cfg.memory_size:
            self.memory = make_memory(cfg.memory_size, memory_channels, cfg.memory_k, cfg.memory_metric,
                                      cfg.memory_dims)
        self.apply(self._init)
        if cfg.residual_head:  # after apply(): the conv head keeps PyTorch's own init (_init is for Linear)
            self.residual = ResidualHead(sum(group_channels), cfg.residual_head)

    @torch.no_grad()
    def fit_stats(self, enc: list[torch.Tensor]) -> None:
        """Set the fixed statistics from training features (N, C_g, h, w) per group: the feature
        normalisation, then the median token length of the normalised features (cos_len)."""
        if self.cfg.feature_norm != "none":
            for i, e in enumerate(enc):
                mean, std = channel_stats(e, self.cfg.feature_norm)
                getattr(self, f"feat_mean{i}").copy_(mean)
                getattr(self, f"feat_std{i}").copy_(std)
        if self.cfg.map_metric == "cos_len":
            for i, t in enumerate(self.targets(enc)):
                getattr(self, f"token_len{i}").copy_(t.norm(dim=1).median().clamp_min(1e-6))

    def typical_lengths(self) -> list[torch.Tensor]:
        return [getattr(self, f"token_len{i}") for i in range(len(self.group_channels))]

    def targets(self, enc: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.cfg.feature_norm == "none":
            return list(enc)
        out = []
        for i, e in enumerate(enc):
            shape = (1, -1) + (1,) * (e.dim() - 2)
            out.append((e - getattr(self, f"feat_mean{i}").view(shape)) / getattr(self, f"feat_std{i}").view(shape))
        return out

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)

    def forward(self, enc: list[torch.Tensor], token_idx: torch.Tensor | None = None) -> HeadOutput:
        """Rebuild the encoder groups. With ``token_idx`` (training only) the decoder runs on that
        subset of token positions and ``dec`` holds (N, C_g, len(idx)) - valid because, given the
        INPs (extracted from *all* tokens), every token is decoded independently of the others."""
        n, h, w = enc[0].shape[0], int(enc[0].shape[2]), int(enc[0].shape[3])
        enc = self.targets(enc)
        tokens = self.proj(torch.cat(enc, dim=1).flatten(2).transpose(1, 2))   # (N, L, D)
        inps = self.queries.unsqueeze(0).expand(n, -1, -1)
        for blk in self.extractor:
            inps = blk(inps, tokens)
        x = self.bottleneck(tokens if token_idx is None else tokens[:, token_idx])
        per_block = []
        for blk in self.decoder:
            x = blk(x, inps)
            per_block.append(x)
        g = len(enc)
        size = len(self.decoder) // g
        fused = [mean_of(per_block[i * size:(i + 1) * size]) for i in range(g)][::-1]
        dec = [self.out[i](f).transpose(1, 2) for i, f in enumerate(fused)]
        if token_idx is None:
            dec = [d.reshape(-1, int(d.shape[1]), h, w) for d in dec]
        else:
            enc = [e.flatten(2)[:, :, token_idx] for e in enc]
        return HeadOutput(dec, enc, tokens, inps)


class InpFormer(nn.Module):
    """Frozen backbone + :class:`InpHead` + anomaly map; ``forward(x) -> (map (N,H,W), score (N,))``.

    ``x``: float RGB NCHW in [0, 1] at ``cfg.input_hw`` (see :mod:`inference.preprocess`).
    """

    blur_kernel: torch.Tensor  # registered buffer

    def __init__(self, cfg: InpConfig, backbone: FrozenBackbone | None = None, checkpoint: str | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        blocks = sorted({b for g in cfg.groups for b in g})
        self.backbone: FrozenBackbone = backbone or build_backbone(cfg.backbone, blocks, checkpoint)
        ch = self.backbone.channels()
        self.head = InpHead(cfg, [sum(ch[b] for b in g) for g in cfg.groups],
                            sum(ch[b] for b in memory_blocks(cfg)))
        self.register_buffer("blur_kernel", gaussian_kernel1d(cfg.sigma / cfg.map_stride), persistent=False)

    def train(self, mode: bool = True) -> InpFormer:
        super().train(mode)
        self.backbone.train(False)
        return self

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Frozen encoder groups on the token grid: list of (N, C_g, h, w) (the reconstruction targets)."""
        return encode_groups(self.backbone(x), self.backbone.blocks, self.cfg)

    @torch.no_grad()
    def encode_memory(self, x: torch.Tensor) -> torch.Tensor:
        """Frozen memory features (N, C_m, h_m, w_m) on the memory grid (needs ``memory_size`` > 0)."""
        return encode_memory(self.backbone(x), self.backbone.blocks, self.cfg)

    def features(self, x: torch.Tensor) -> tuple[list[torch.Tensor], HeadOutput]:
        """Encoder targets and the head's output for training from images."""
        enc = self.encode(x)
        return enc, self.head(enc)

    def score_features(self, enc: list[torch.Tensor], metric: str | None = None,
                       mem: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(map (N, H, W), score (N,)) from encoder groups (and memory features when the model has a
        memory); ``metric`` overrides ``cfg.map_metric``."""
        if self.cfg.residual_head:
            base, res = self.base_and_residual(enc, mem, metric)
            return self.finish(self.head.residual.fuse(base, res, self.cfg.residual_weight))
        if not self.cfg.memory_size:
            return self.map_from_output(enc, self.head(enc), metric)
        if mem is None:
            raise ValueError("this model has an extrinsic memory: score_features needs its features (mem=...)")
        rec, mdist = self.raw_maps(enc, mem, metric)
        return self.finish(self.head.memory.fuse(rec, mdist, self.cfg.memory_weight))

    def base_and_residual(self, enc: list[torch.Tensor], mem: torch.Tensor | None = None,
                          metric: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Unblurred (base map, residual-head mask), both (N, h, w) at ``cfg.map_hw``: the base is the
        reconstruction map, or with a memory its fusion with the memory map (as without the head). One
        decoder pass feeds both (needs ``residual_head`` > 0)."""
        if not self.cfg.residual_head:
            raise ValueError("this model has no residual head (residual_head = 0)")
        out = self.head(enc)
        if self.cfg.memory_size:
            if mem is None:
                raise ValueError("this model has an extrinsic memory: it needs its features (mem=...)")
            rec, mdist = self._raw(out, mem, metric)
            base = self.head.memory.fuse(rec, mdist, self.cfg.memory_weight)
        else:
            base = self.rec_map(out, metric)
        return base, self.residual_mask(out)

    def residual_mask(self, out: HeadOutput) -> torch.Tensor:
        """The residual head's anomaly probability (N, h, w) at ``cfg.map_hw``; the residual is cut from
        the graph of the main model (stop-gradient: training the head leaves the decoder alone)."""
        feats = residual_features([t.detach() for t in out.targets], [d.detach() for d in out.dec])
        return self.head.residual.mask(feats, self.cfg.map_hw)

    def rec_map(self, out: HeadOutput, metric: str | None = None) -> torch.Tensor:
        """Unblurred reconstruction map (N, h, w) at ``cfg.map_hw``."""
        metric = metric or self.cfg.map_metric
        lengths = self.head.typical_lengths() if metric == "cos_len" else None
        return fuse_maps(group_distance_maps(out.targets, out.dec, metric, lengths), self.cfg.map_hw)

    def raw_maps(self, enc: list[torch.Tensor], mem: torch.Tensor,
                 metric: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Unblurred (reconstruction map, memory distance map), both (N, h, w) at ``cfg.map_hw``."""
        return self._raw(self.head(enc), mem, metric)

    def _raw(self, out: HeadOutput, mem: torch.Tensor, metric: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        rec = self.rec_map(out, metric)
        return rec, resize_maps(self.head.memory.distance(mem), self.cfg.map_hw)

    def finish(self, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unblurred (N, h, w) map at ``cfg.map_hw`` -> blurred map at the input size, top-fraction score."""
        return finish_maps([raw], self.cfg.input_hw, self.blur_kernel, self.cfg.top_fraction, self.cfg.map_hw)

    def map_from_output(self, enc: list[torch.Tensor], out: HeadOutput,
                        metric: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        metric = metric or self.cfg.map_metric
        if metric == "cos_len" and self.cfg.map_metric != "cos_len":
            raise ValueError("cos_len needs the training-token lengths: build the model with map_metric='cos_len'")
        lengths = self.head.typical_lengths() if metric == "cos_len" else None
        return anomaly_map_and_score(out.targets, out.dec, self.cfg.input_hw, self.blur_kernel, self.cfg.top_fraction,
                                     metric, work_size=self.cfg.map_hw, typical_lengths=lengths)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.cfg.memory_size:
            return self.score_features(self.encode(x))
        maps = self.backbone(x)  # one backbone pass feeds both the groups and the memory features
        return self.score_features(encode_groups(maps, self.backbone.blocks, self.cfg), mem=encode_memory(
            maps, self.backbone.blocks, self.cfg))


def memory_blocks(cfg: InpConfig) -> list[int]:
    """The blocks the extrinsic memory reads: the last (deepest) block of each group."""
    return [g[-1] for g in cfg.groups] if cfg.memory_size else []


def encode_memory(maps: list[torch.Tensor], blocks: list[int], cfg: InpConfig) -> torch.Tensor:
    """Backbone maps -> (N, C_m, h_m, w_m): each memory block 3x3 pooled at its own stride, then
    brought to the memory grid (bilinear up from coarser strides) and concatenated - PatchCore's
    locally-aware patches at the finest useful grid."""
    by_block = dict(zip(blocks, maps))
    parts = []
    for b in memory_blocks(cfg):
        f = F.avg_pool2d(by_block[b], 3, stride=1, padding=1, count_include_pad=False)
        if tuple(f.shape[-2:]) != cfg.memory_grid:
            f = F.interpolate(f, size=cfg.memory_grid, mode="bilinear", align_corners=False)
        parts.append(f)
    if not parts:
        raise ValueError("this model has no extrinsic memory (memory_size = 0)")
    return torch.cat(parts, dim=1)


def encode_groups(maps: list[torch.Tensor], blocks: list[int], cfg: InpConfig) -> list[torch.Tensor]:
    """Backbone maps (one per block, in ``blocks`` order) -> locally-aware, grid-resized groups."""
    by_block = dict(zip(blocks, maps))
    out = []
    for g in cfg.groups:
        parts = []
        for b in g:
            f = by_block[b]
            if cfg.local_pool > 1:
                f = F.avg_pool2d(f, cfg.local_pool, stride=1, padding=cfg.local_pool // 2, count_include_pad=False)
            parts.append(_to_grid(f, cfg.grid))
        out.append(torch.cat(parts, dim=1))
    return out


def _to_grid(f: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``resize_to_grid`` with the shrink factor read as Python ints: the ONNX exporter traces
    ``shape // grid`` as a tensor, and a pooling kernel must be a constant in the graph."""
    h, w = int(f.shape[-2]), int(f.shape[-1])
    if (h, w) != tuple(grid) and h % grid[0] == 0 and w % grid[1] == 0 and h >= grid[0] and w >= grid[1]:
        return F.avg_pool2d(f, (h // grid[0], w // grid[1]))
    return resize_to_grid(f, grid)
