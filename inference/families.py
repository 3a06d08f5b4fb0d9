"""Defect families: an embedding per flagged region and an incremental, unsupervised grouping of them.

Quality engineers ask "which defects, how often, where". Each connected component of a flagged
frame's mask gets an embedding: the frozen encoder's features (every group L2-normalised, then
concatenated) averaged over the grid cells the component covers, minus the frame's own mean feature
(so the embedding says how the region differs from its surroundings, not which part or lighting
it sits on), L2-normalised. The grouping is leader clustering on cosine distance with running
centroids: a region joins the nearest family when it is closer than ``threshold``, else it founds a
new one. It needs no number of families up front and learns from every region in one pass, so it
runs per product as results arrive.

The threshold comes from the data: after ``warmup`` regions, the ``quantile`` of the distances from
each region to its nearest neighbour among them, times ``factor`` (regions of one kind are each
other's near neighbours; the factor widens that to a family's spread). The warm-up regions are then
clustered with it, in arrival order, and later regions one at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

if TYPE_CHECKING:  # types only
    from inference.model_dir import LoadedModel
    from ingest.envelope import FrameEnvelope
    from storage.families import FamilyStore
    from storage.records import ResultRow
    from storage.registry import ModelRegistry
    from storage.store import ResultStore

MIN_REGION_PX = 16  # components smaller than this (frame pixels) are noise, not a defect


@dataclass(frozen=True)
class Region:
    """One flagged region of a frame: where it is and what it looks like."""

    index: int
    area_px: int
    bbox: tuple[int, int, int, int]          # x, y, w, h in frame pixels
    centroid: tuple[float, float]            # x, y as fractions of the frame width / height
    embedding: np.ndarray = field(repr=False)  # float32, unit length


def encoder_grid(enc_groups: list[Any]) -> np.ndarray:
    """One frame's encoder groups [(C_g, h, w)] -> (h, w, C) with every group L2-normalised per cell."""
    parts = []
    for g in enc_groups:
        a = np.asarray(g.detach().cpu().numpy() if hasattr(g, "detach") else g, dtype=np.float32)
        a = np.moveaxis(a, 0, -1)
        parts.append(a / (np.linalg.norm(a, axis=-1, keepdims=True) + 1e-8))
    return np.concatenate(parts, axis=-1)


def regions(mask: np.ndarray, grid: np.ndarray, min_area_px: int = MIN_REGION_PX, max_regions: int = 16) -> list[Region]:
    """Connected components of ``mask`` (frame size, bool) with their pooled embeddings, largest first."""
    h, w = mask.shape
    gh, gw = grid.shape[:2]
    n, labels, stats, cents = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    background = grid.reshape(-1, grid.shape[-1]).mean(axis=0)
    order = sorted(range(1, n), key=lambda i: -int(stats[i, cv2.CC_STAT_AREA]))
    out: list[Region] = []
    for rank, i in enumerate(order[:max_regions]):
        area = int(stats[i, cv2.CC_STAT_AREA])
        if area < min_area_px:
            continue
        small = cv2.resize((labels == i).astype(np.float32), (gw, gh), interpolation=cv2.INTER_AREA)
        if small.max() <= 0:
            continue
        weights = small / small.sum()
        if (small > 0.25).any():  # cells mostly inside the region; a thin region keeps its best cells
            weights = np.where(small > 0.25, small, 0.0)
            weights = weights / weights.sum()
        vec = np.tensordot(weights, grid, axes=([0, 1], [0, 1])) - background
        vec = (vec / (np.linalg.norm(vec) + 1e-8)).astype(np.float32)
        x, y, bw, bh = (int(stats[i, k]) for k in (cv2.CC_STAT_LEFT, cv2.CC_STAT_TOP, cv2.CC_STAT_WIDTH,
                                                   cv2.CC_STAT_HEIGHT))
        out.append(Region(rank, area, (x, y, bw, bh), (float(cents[i][0]) / w, float(cents[i][1]) / h), vec))
    return out


def nn_distance_threshold(embs: np.ndarray, quantile: float = 0.5, factor: float = 2.0) -> float:
    """``factor`` x the ``quantile`` of each embedding's cosine distance to its nearest other embedding."""
    e = np.asarray(embs, dtype=np.float32)
    if len(e) < 2:
        raise ValueError("a threshold from data needs at least 2 embeddings")
    d = 1.0 - e @ e.T
    np.fill_diagonal(d, np.inf)
    return float(min(1.5, factor * np.quantile(d.min(axis=1), quantile)))


@dataclass
class Family:
    id: int
    centroid: np.ndarray          # unit length
    count: int
    name: str | None = None


class LeaderClustering:
    """Incremental leader clustering on cosine distance with running centroids (see the module docstring).

    ``families`` may be restored from storage (their ids, centroids, counts and names), so a family's
    operator-given name sticks to the regions that join it later."""

    def __init__(self, threshold: float | None = None, warmup: int = 30, quantile: float = 0.5,
                 factor: float = 2.0, families: list[Family] | None = None) -> None:
        self.threshold = threshold
        self.warmup = warmup
        self.quantile = quantile
        self.factor = factor
        self.families: list[Family] = list(families or [])
        self._pending: list[np.ndarray] = []
        self._next = max((f.id for f in self.families), default=0) + 1

    def add(self, emb: np.ndarray) -> list[int]:
        """Add one embedding; returns the family ids of every embedding decided by this call (in arrival
        order): nothing while warming up, then the whole warm-up at once, then one id per call."""
        e = np.asarray(emb, dtype=np.float32)
        if self.threshold is None:
            self._pending.append(e)
            if len(self._pending) < self.warmup:
                return []
            self.threshold = nn_distance_threshold(np.stack(self._pending), self.quantile, self.factor)
            pending, self._pending = self._pending, []
            return [self._assign(p) for p in pending]
        return [self._assign(e)]

    def flush(self) -> list[int]:
        """Decide the warm-up embeddings now (end of a batch run with fewer than ``warmup`` regions)."""
        if self.threshold is not None or not self._pending:
            return []
        if len(self._pending) < 2:
            self.threshold = 0.5
        else:
            self.threshold = nn_distance_threshold(np.stack(self._pending), self.quantile, self.factor)
        pending, self._pending = self._pending, []
        return [self._assign(p) for p in pending]

    def _assign(self, e: np.ndarray) -> int:
        assert self.threshold is not None
        if self.families:
            cents = np.stack([f.centroid for f in self.families])
            d = 1.0 - cents @ e
            j = int(np.argmin(d))
            if d[j] <= self.threshold:
                f = self.families[j]
                c = f.centroid * f.count + e
                f.centroid = (c / (np.linalg.norm(c) + 1e-8)).astype(np.float32)
                f.count += 1
                return f.id
        f = Family(self._next, e.copy(), 1)
        self._next += 1
        self.families.append(f)
        return f.id


def purity(labels_true: list[Any], labels_pred: list[Any]) -> float:
    """Share of items whose family's majority true label is their own."""
    from collections import Counter

    by: dict[Any, Counter] = {}
    for t, p in zip(labels_true, labels_pred):
        by.setdefault(p, Counter())[t] += 1
    return float(sum(c.most_common(1)[0][1] for c in by.values()) / max(1, len(labels_true)))


# --- the consumer's post-store step -------------------------------------------------------------------

class FamilyMonitor:
    """Post-store step: embeds each flagged frame's regions (a second encoder pass on flagged frames
    only, with the product's active model) and groups them per product; families persist in storage,
    so names and grouping survive restarts and are shared by consumers that load them."""

    def __init__(self, store: ResultStore, family_store: FamilyStore, registry: ModelRegistry, max_pixels: int = 40_000_000,
                 warmup: int = 30) -> None:
        self.store = store
        self.families = family_store
        self.registry = registry
        self.max_pixels = max_pixels
        self.warmup = warmup
        self._models: dict[tuple[str, str], LoadedModel | None] = {}
        self._clusters: dict[str, LeaderClustering] = {}
        self._pending: dict[str, list[tuple[int, float, Region]]] = {}  # (result id, captured at, region)

    def __call__(self, rows: list[ResultRow], envelopes: list[FrameEnvelope]) -> None:
        from ingest.envelope import decode_image
        from storage.families import RegionRow

        touched: dict[str, list[RegionRow]] = {}
        for row, env in zip(rows, envelopes):
            if row.verdict != "defect" or not row.mask_png:
                continue
            model = self._model(row.product, str(row.model_version))
            if model is None:
                continue
            mask = cv2.imdecode(np.frombuffer(row.mask_png, np.uint8), cv2.IMREAD_GRAYSCALE)
            got = self.store.get_result(row.camera, row.frame_id)
            if mask is None or got is None:
                continue
            grid = self._grid(model, decode_image(env, self.max_pixels))
            lc = self._clustering(row.product)
            pending = self._pending.setdefault(row.product, [])
            for reg in regions(mask > 0, grid):
                pending.append((int(got["id"]), float(row.captured_at), reg))
                ids = lc.add(reg.embedding)
                if ids:
                    decided, self._pending[row.product] = pending[-len(ids):], pending[:-len(ids)]
                    pending = self._pending[row.product]
                    touched.setdefault(row.product, []).extend(
                        RegionRow(rid, row.product, r.index, fam, r.area_px, r.bbox, r.centroid, ts, r.embedding)
                        for (rid, ts, r), fam in zip(decided, ids))
        for product, regs in touched.items():
            lc = self._clusters[product]
            self.families.save(product, float(lc.threshold or 0.0), lc.families, regs)

    def _clustering(self, product: str) -> LeaderClustering:
        lc = self._clusters.get(product)
        if lc is None:
            thr, fams = self.families.load(product)
            lc = LeaderClustering(threshold=thr, warmup=self.warmup,
                                  families=[Family(f["family"], f["centroid"], f["count"], f["name"]) for f in fams])
            self._clusters[product] = lc
        return lc

    def _model(self, product: str, version: str) -> LoadedModel | None:
        key = (product, version)
        if key not in self._models:
            self._models[key] = None
            try:
                info = next((v for v in self.registry.list(product) if v.version == version), None)
                if info is not None:
                    from inference.model_dir import load_model_dir

                    self._models[key] = load_model_dir(info.path)
            except Exception:
                self._models[key] = None
                raise
        return self._models[key]

    @staticmethod
    def _grid(loaded: LoadedModel, image: np.ndarray) -> np.ndarray:
        import torch

        from inference.preprocess import batch_to_input

        with torch.inference_mode():
            enc = loaded.module.encode(torch.from_numpy(batch_to_input([image], loaded.input_hw)))
        return encoder_grid([g[0] for g in enc])
