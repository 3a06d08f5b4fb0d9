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

from collections.abc import Iterator
from contextlib import contextmanager
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


def block_grids(loaded: Any, images: list[np.ndarray]) -> list[list[np.ndarray]]:
    """Per image, the backbone's maps of every block the model's groups use, each at its OWN
    resolution (not pooled to the token grid) and L2-normalised per cell: [(h_b, w_b, C_b)] per image.
    Finer blocks keep small defects (a crack, a blowhole) from being averaged into one 16x16 cell."""
    import torch

    from inference.preprocess import batch_to_input

    model = loaded.module
    wanted = [b for g in model.cfg.groups for b in g]
    with torch.inference_mode():
        maps = model.backbone(torch.from_numpy(batch_to_input(images, loaded.input_hw)))
    by_block = dict(zip(model.backbone.blocks, maps))
    return [[encoder_grid([by_block[b][j]]) for b in wanted] for j in range(len(images))]


def _pooled(component: np.ndarray, grid: np.ndarray) -> np.ndarray | None:
    """Mask-weighted mean of ``grid`` over a component (frame-size float mask) minus the frame mean."""
    gh, gw = grid.shape[:2]
    small = cv2.resize(component, (gw, gh), interpolation=cv2.INTER_AREA)
    if small.max() <= 0:
        return None
    weights = small / small.sum()
    if (small > 0.25).any():  # cells mostly inside the region; a thin region keeps its best cells
        weights = np.where(small > 0.25, small, 0.0)
        weights = weights / weights.sum()
    return np.tensordot(weights, grid, axes=([0, 1], [0, 1])) - grid.reshape(-1, grid.shape[-1]).mean(axis=0)


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / (np.linalg.norm(v) + 1e-8)).astype(np.float32)


def regions(mask: np.ndarray, grid: np.ndarray | list[np.ndarray], min_area_px: int = MIN_REGION_PX,
            max_regions: int = 16) -> list[Region]:
    """Connected components of ``mask`` (frame size, bool) with their pooled embeddings, largest first.

    ``grid``: one (h, w, C) grid (pooled over the region, minus the frame mean, unit length), or a list of
    per-block grids of any resolutions (:func:`block_grids`): each pooled and made unit length on its own,
    then concatenated and scaled to unit length, so every block weighs the same."""
    h, w = mask.shape
    n, labels, stats, cents = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    order = sorted(range(1, n), key=lambda i: -int(stats[i, cv2.CC_STAT_AREA]))
    grids = grid if isinstance(grid, list) else [grid]
    out: list[Region] = []
    for rank, i in enumerate(order[:max_regions]):
        area = int(stats[i, cv2.CC_STAT_AREA])
        if area < min_area_px:
            continue
        comp = (labels == i).astype(np.float32)
        parts = [_pooled(comp, g) for g in grids]
        if any(p is None for p in parts):
            continue
        vec = _unit(np.concatenate([_unit(p) for p in parts])) if isinstance(grid, list) else _unit(parts[0])  # type: ignore[arg-type]
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
    so names and grouping survive restarts and are shared by consumers that load them.

    Per stored batch: one query for the flagged rows' result ids and one encoder forward per
    (product, model version) over all of the batch's flagged frames (not one per frame). The engines
    return maps, not features (ONNX / Triton exports have no feature output), so the encoder does run
    a second time on flagged frames; ``benchmarks/bench_families.py --consumer-cost`` measures it."""

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

    takes_images = True  # the consumer hands over the pixels it scored (no second decode per flagged frame)

    def __call__(self, rows: list[ResultRow], envelopes: list[FrameEnvelope],
                 images: list[np.ndarray | None] | None = None) -> None:
        from ingest.envelope import decode_frame
        from storage.families import RegionRow

        touched: dict[str, list[RegionRow]] = {}
        # a drifted camera's flags are the drift, not defects: they would found families of their own
        pixels = list(images) if images is not None else [None] * len(rows)
        flagged = [(row, env, image) for row, env, image in zip(rows, envelopes, pixels)
                   if row.verdict == "defect" and row.mask_png and not getattr(row, "drifted", False)]
        if not flagged:
            return
        ids = self.store.result_ids([(row.camera, int(row.frame_id)) for row, _, _ in flagged])
        by_model: dict[tuple[str, str], list[tuple[Any, Any, np.ndarray, int, np.ndarray | None]]] = {}
        for row, env, image in flagged:
            mask = cv2.imdecode(np.frombuffer(row.mask_png or b"", np.uint8), cv2.IMREAD_GRAYSCALE)
            rid = ids.get((row.camera, int(row.frame_id)))
            if mask is None or rid is None or self._model(row.product, str(row.model_version)) is None:
                continue
            by_model.setdefault((row.product, str(row.model_version)), []).append((row, env, mask, rid, image))
        work: list[tuple[Any, np.ndarray, int, np.ndarray]] = []
        for (product, version), items in by_model.items():
            model = self._model(product, version)
            assert model is not None  # rows without a model were left out above
            # the consumer's pixels when it has them; else the bytes at the model's scale, not at 5 MP
            grids = self._grids(model, [image if image is not None else
                                        decode_frame(env, self.max_pixels, (int(model.input_hw[0]), int(model.input_hw[1]))).image
                                        for _, env, _, _, image in items])
            work.extend((row, mask, rid, grid) for (row, _, mask, rid, _), grid in zip(items, grids))
        for row, mask, rid, grid in work:
            lc = self._clustering(row.product)
            pending = self._pending.setdefault(row.product, [])
            for reg in regions(mask > 0, grid):
                pending.append((rid, float(row.captured_at), reg))
                fams = lc.add(reg.embedding)
                if fams:
                    decided, self._pending[row.product] = pending[-len(fams):], pending[:-len(fams)]
                    pending = self._pending[row.product]
                    touched.setdefault(row.product, []).extend(
                        RegionRow(r_id, row.product, r.index, fam, r.area_px, r.bbox, r.centroid, ts, r.embedding)
                        for (r_id, ts, r), fam in zip(decided, fams))
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
    def _grids(loaded: LoadedModel, images: list[np.ndarray], chunk: int = 16) -> list[np.ndarray]:
        """Encoder grids of ``images``: one forward per ``chunk`` frames (bounded memory)."""
        import torch

        from inference.preprocess import batch_to_input

        out: list[np.ndarray] = []
        for i in range(0, len(images), chunk):
            with torch.inference_mode(), one_torch_thread():
                enc = loaded.module.encode(torch.from_numpy(batch_to_input(images[i:i + chunk], loaded.input_hw)))
            out.extend(encoder_grid([g[j] for g in enc]) for j in range(len(images[i:i + chunk])))
        return out


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run torch ops on one intra-op thread, then restore the previous count.

    WHY: this encoder pass is a small background step beside the engine, which already keeps the
    cores busy. Measured on the shared 2-core machine (load ~9) inside a 5 MP consumer: the eager
    EfficientNet encoder with torch's 2 OpenMP threads cost 665-690 ms of CPU (2.3-2.8 s wall) per
    flagged frame, spinning at barriers; on one thread 35-39 ms CPU (119-157 ms wall). The count is
    process-wide, so a ``local://torch`` engine in the same process runs on one thread while a
    flagged frame is embedded (tens of milliseconds)."""
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(prev)
