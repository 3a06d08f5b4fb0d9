"""Defect-family embeddings: one small vector per flagged region, and the consumer's post-store step.

A *region* is a connected component (8-connectivity) of a defect frame's binary mask. Its embedding
is the frozen EfficientNet-Lite0 trunk (the INP-Former's default backbone, ImageNet-pretrained
weights from PyPI, no training) at two stages - block 4 (stride 8, 40 channels) and block 7
(stride 16, 80 channels) - pooled over the component: per stage, the mask-weighted mean of the
feature vectors inside the component *minus* the mean over the rest of the frame, L2-normalised;
the two parts are concatenated and normalised again (120 floats, stored as float16). Subtracting the
frame's context makes the vector say how the region differs from its own part (what an operator
calls the defect), not what the part looks like, so the same crack on two lots lands close.

Why a second (cheap) backbone pass instead of the engine's tokens: the engines are interchangeable
(ONNX Runtime, Triton, zero-shot) and return only scores and maps; a second pass on *flagged frames
only* (a few percent of the stream) at 256 px costs ~20 ms on one core and touches no engine.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from ingest.envelope import FrameEnvelope, decode_image
from lineinspect.logs import kv
from storage.records import ResultRow

log = logging.getLogger("lineinspect.families")

EMBED_SIZE = 256                 # square input of the embedding pass
EMBED_BLOCKS = (4, 7)            # lite0: stride 8 (40 ch), stride 16 (80 ch)
EMBED_DIM = 120
MAX_REGIONS = 8                  # largest components kept per frame: bounds the hot path on a shattered mask
MIN_AREA_FRACTION = 1e-4         # components smaller than this fraction of the frame (and < 4 px) are noise


@dataclass
class Region:
    """One connected component of a defect mask, in frame-relative units (0..1)."""

    index: int
    cx: float
    cy: float
    x0: float
    y0: float
    x1: float
    y1: float
    area_px: int
    embedding: np.ndarray        # (EMBED_DIM,) float32, unit length


Geometry = tuple[float, float, float, float, float, float]   # cx, cy, x0, y0, x1, y1 (relative)


def components(mask: np.ndarray, max_regions: int = MAX_REGIONS) -> list[tuple[np.ndarray, Geometry, int]]:
    """The mask's largest connected components: (boolean component mask, (cx, cy, x0, y0, x1, y1) relative, area)."""
    m = (np.asarray(mask) > 0).astype(np.uint8)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {m.shape}")
    h, w = m.shape
    n, labels, stats, cents = cv2.connectedComponentsWithStats(m, connectivity=8)
    min_area = max(4, int(MIN_AREA_FRACTION * h * w))
    found = [(int(stats[i, cv2.CC_STAT_AREA]), i) for i in range(1, n) if stats[i, cv2.CC_STAT_AREA] >= min_area]
    found.sort(reverse=True)
    out: list[tuple[np.ndarray, Geometry, int]] = []
    for area, i in found[:max_regions]:
        x, y, bw, bh = (int(stats[i, k]) for k in (cv2.CC_STAT_LEFT, cv2.CC_STAT_TOP, cv2.CC_STAT_WIDTH, cv2.CC_STAT_HEIGHT))
        geo: Geometry = (float(cents[i, 0]) / w, float(cents[i, 1]) / h, x / w, y / h, (x + bw) / w, (y + bh) / h)
        out.append((labels == i, geo, area))
    return out


class RegionEmbedder:
    """The frozen Lite0 trunk, built on first use (import and weights load lazily: no I/O at import)."""

    def __init__(self, threads: int = 1) -> None:
        self.threads = threads
        self._net: Any = None

    def _backbone(self) -> Any:
        if self._net is None:
            from inference.model.backbones import build_backbone

            self._net = build_backbone("efficientnet_lite0", list(EMBED_BLOCKS))
        return self._net

    def features(self, image: np.ndarray) -> list[np.ndarray]:
        """Per stage (C, h, w) float32 maps of an RGB/BGR/grey uint8 frame (channel order barely matters
        for a context-relative descriptor, and every caller passes decode_image's order)."""
        import torch

        img = np.asarray(image)
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        if img.ndim != 3 or img.shape[2] not in (3, 4):
            raise ValueError(f"image must be HxW or HxWx3, got shape {img.shape}")
        img = cv2.resize(np.ascontiguousarray(img[:, :, :3]), (EMBED_SIZE, EMBED_SIZE), interpolation=cv2.INTER_AREA)
        x = torch.from_numpy(img.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
        prev = torch.get_num_threads()
        torch.set_num_threads(max(1, self.threads))
        try:
            with torch.inference_mode():
                feats = self._backbone()(x)
        finally:
            torch.set_num_threads(prev)
        return [f[0].numpy().astype(np.float32) for f in feats]

    def embed(self, image: np.ndarray, mask: np.ndarray, max_regions: int = MAX_REGIONS) -> list[Region]:
        """Regions of ``mask`` (frame resolution or any size: it is resized to the image) with embeddings."""
        comps = components(mask if mask.shape[:2] == image.shape[:2] else
                           cv2.resize((mask > 0).astype(np.uint8), (image.shape[1], image.shape[0]),
                                      interpolation=cv2.INTER_NEAREST), max_regions)
        if not comps:
            return []
        feats = self.features(image)
        return [Region(i, *geo, area, pooled(feats, comp)) for i, (comp, geo, area) in enumerate(comps)]


def pooled(feats: list[np.ndarray], comp: np.ndarray) -> np.ndarray:
    """Context-relative pooled descriptor of one component (module docstring)."""
    parts = []
    for f in feats:
        c, h, w = f.shape
        wgt = cv2.resize(comp.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
        if wgt.sum() <= 1e-6:  # smaller than a cell: the cell under its centre
            ys, xs = np.nonzero(comp)
            wgt = np.zeros((h, w), np.float32)
            wgt[min(h - 1, int(ys.mean() * h / comp.shape[0])), min(w - 1, int(xs.mean() * w / comp.shape[1]))] = 1.0
        flat = f.reshape(c, -1)
        wi = wgt.ravel()
        wo = 1.0 - np.clip(wi, 0.0, 1.0)
        inside = flat @ wi / wi.sum()
        outside = flat @ wo / max(wo.sum(), 1e-6)
        d = inside - outside
        n = float(np.linalg.norm(d))
        parts.append(d / n if n > 0 else d)
    v = np.concatenate(parts)
    n = float(np.linalg.norm(v))
    if n == 0.0 or not np.isfinite(n):
        v = np.full_like(v, 1.0 / np.sqrt(v.size))  # a region identical to its context: one shared direction
    else:
        v = v / n
    return v.astype(np.float32)


class FamilyStep:
    """Post-store step (``InferenceConsumer(post_store=[...])``): embed the regions of the stored
    *defect* rows and hand them to the families store, which assigns them to families.

    Only flagged frames cost anything; a failure is the consumer's to log (the rows are stored)."""

    def __init__(self, families: Any, embedder: RegionEmbedder | None = None, max_frame_pixels: int = 50_000_000) -> None:
        self.families = families                 # storage.families.FamilyStore
        self.embedder = embedder or RegionEmbedder()
        self.max_frame_pixels = max_frame_pixels
        self.embedded_frames = 0

    def __call__(self, rows: list[ResultRow], envelopes: list[FrameEnvelope]) -> None:
        flagged = [r for r in rows if r.verdict == "defect" and r.mask_png]
        if not flagged:
            return
        by_key = {(e.camera, e.frame_id): e for e in envelopes}
        t0 = time.perf_counter()
        batch = []
        for r in flagged:
            env = by_key.get((r.camera, r.frame_id))
            if env is None:
                continue
            mask = cv2.imdecode(np.frombuffer(r.mask_png or b"", np.uint8), cv2.IMREAD_GRAYSCALE)
            if mask is None:
                log.warning("defect mask not decodable; no families for this frame", extra=kv(camera=r.camera, frame_id=r.frame_id))
                continue
            image = decode_image(env, self.max_frame_pixels)
            regions = self.embedder.embed(image, mask)
            if regions:
                batch.append((r, regions))
        if batch:
            self.families.add_regions(batch)
            self.embedded_frames += len(batch)
            log.debug("families updated", extra=kv(frames=len(batch), regions=sum(len(g) for _, g in batch),
                                                   ms=round((time.perf_counter() - t0) * 1000, 1)))


def build_step(settings: Any, store: Any) -> FamilyStep | None:
    """The families post-store step for a SQL result store, or ``None`` when disabled / not SQL."""
    if not getattr(settings, "families_enabled", False) or not hasattr(store, "engine"):
        return None
    from storage.families import FamilyStore

    threads = max(1, int(getattr(settings, "threads", 0) or 1))
    return FamilyStep(FamilyStore(store.engine, getattr(store, "url", ""), warmup=settings.families_warmup),
                      RegionEmbedder(threads=min(threads, 2)), settings.max_frame_pixels)
