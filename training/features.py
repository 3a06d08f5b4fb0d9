"""Cache the frozen encoder's features once, so training iterates only the light INP head.

The encoder is by far the most expensive part of a training step and its output never changes
(frozen, eval mode), so every image is encoded exactly once and the grouped token-grid features are
stored as one tensor file under the cache dir. The key hashes everything the features depend on:
backbone, input size, groups, token stride, pooling and the image list (path + size + mtime, or the
pixels for in-memory images, plus augmentation settings).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from inference.model.inp_former import InpFormer
from inference.preprocess import batch_to_input

ImageSource = str | Path | np.ndarray


def load_rgb(src: ImageSource) -> np.ndarray:
    if isinstance(src, np.ndarray):
        return src
    from training.data import read_image

    return read_image(src)


def source_key(src: ImageSource) -> str:
    if isinstance(src, np.ndarray):
        return hashlib.sha1(np.ascontiguousarray(src).tobytes()).hexdigest() + str(src.shape)
    st = Path(src).stat()
    return f"{Path(src).resolve()}:{st.st_size}:{st.st_mtime_ns}"


def cache_key(model: InpFormer, sources: Sequence[ImageSource], extra: str = "") -> str:
    c = model.cfg
    head = json.dumps([c.backbone, list(c.input_hw), c.groups, c.token_stride, c.local_pool, extra])
    h = hashlib.sha256(head.encode())
    for s in sources:
        h.update(source_key(s).encode())
    return f"{c.backbone}-{c.input_hw[0]}x{c.input_hw[1]}-{h.hexdigest()[:20]}"


def augment(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Few-shot augmentation: small rotation, translation and random flips (border reflected)."""
    h, w = image.shape[:2]
    angle = float(rng.uniform(-15, 15))
    tx, ty = rng.uniform(-0.05, 0.05, size=2) * (w, h)
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    m[:, 2] += (tx, ty)
    out = cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    if rng.random() < 0.5:
        out = out[::-1]
    return np.ascontiguousarray(out)


@torch.no_grad()
def encode_images(model: InpFormer, images: Sequence[np.ndarray], batch_size: int = 8,
                  memory: bool = False) -> list[torch.Tensor]:
    """Encode RGB uint8 frames -> per group (N, C_g, h, w) float32 on the CPU (on the model's device
    meanwhile); with ``memory`` the one-element list of extrinsic-memory features instead."""
    model.eval()
    device = model.blur_kernel.device
    chunks: list[list[torch.Tensor]] = []
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(batch_to_input(list(images[i:i + batch_size]), model.cfg.input_hw)).to(device)
        out = [model.encode_memory(x)] if memory else model.encode(x)
        chunks.append([g.cpu() for g in out])
    return [torch.cat([c[g] for c in chunks]) for g in range(len(chunks[0]))]


def cached_features(model: InpFormer, sources: Sequence[ImageSource], cache_dir: str | Path | None,
                    aug_copies: int = 0, seed: int = 0, batch_size: int = 8, memory: bool = False) -> list[torch.Tensor]:
    """Features of ``sources`` (plus ``aug_copies`` augmented copies of each), cached under ``cache_dir``;
    with ``memory`` the extrinsic-memory features ([one (N, C_m, h_m, w_m) tensor]) instead of the groups."""
    if not sources:
        raise ValueError("no images to encode")
    extra = f"aug{aug_copies}:seed{seed}"
    if memory:
        extra += f":memory{model.cfg.memory_stride}"
    key = cache_key(model, sources, extra=extra)
    path = Path(cache_dir) / f"{key}.pt" if cache_dir else None
    if path is not None and path.is_file():
        data = torch.load(path, map_location="cpu", weights_only=True)
        return [t.float() for t in data["groups"]]
    rng = np.random.default_rng(seed)
    feats: list[list[torch.Tensor]] = []
    batch: list[np.ndarray] = []

    def flush() -> None:
        if batch:
            feats.append(encode_images(model, batch, batch_size, memory))
            batch.clear()

    for src in sources:
        img = load_rgb(src)
        batch.append(img)
        batch.extend(augment(img, rng) for _ in range(aug_copies))
        if len(batch) >= batch_size:
            flush()
    flush()
    groups = [torch.cat([f[g] for f in feats]) for g in range(len(feats[0]))]
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"groups": [g.half() for g in groups]}, tmp)
        os.replace(tmp, path)
        groups = [g.half().float() for g in groups]  # identical values whether fresh or cached
    return groups
