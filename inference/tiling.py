"""High-resolution frames through a fixed-size model: overlapping tiles, stitched anomaly maps.

Squashing a 4096 px frame into a 256 px model input shrinks a 30 px defect to 2 px, below what the
token grid (stride 8) can see - the VarAD problem. Tiling keeps the native resolution: the frame is
cut into overlapping tiles of the model's input size, the tiles go through the *same* engine in
chunks (a frame's tiles may spread over several engine calls and one call may mix frames, so
memory is bounded by the chunk and by one accumulator per frame in flight, whatever the frame
size), and the tile maps are blended back with a separable raised-cosine weight (tile centres count
more than tile borders, where the model sees less context). The frame score is the top-1% mean of
the stitched map, as for whole frames.

Thresholds: a model calibrated on whole frames is *not* calibrated for stitched tile maps; use a
model trained on tiles (``lineinspect train --tile``) and, if needed, pass ``threshold=`` measured
on stitched normal frames (:func:`calibrate_tiled`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

from inference.engines.base import Engine, EngineOutput
from inference.preprocess import as_rgb

if TYPE_CHECKING:  # types only
    from lineinspect.settings import Settings


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets along one axis: every ``stride``, the last tile flush with the end; covers [0, length)."""
    if tile <= 0 or stride <= 0:
        raise ValueError(f"tile and stride must be > 0 (got {tile}, {stride})")
    if length <= tile:
        return [0]
    n = math.ceil((length - tile) / stride) + 1
    starts = [min(i * stride, length - tile) for i in range(n)]
    return sorted(set(starts))


def tile_grid(frame_hw: tuple[int, int], tile_hw: tuple[int, int], overlap: float) -> list[tuple[int, int]]:
    """(y, x) top-left corners of overlapping tiles covering a frame (``overlap`` in [0, 1) of a tile)."""
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    th, tw = tile_hw
    sy, sx = max(1, int(round(th * (1 - overlap)))), max(1, int(round(tw * (1 - overlap))))
    return [(y, x) for y in tile_starts(frame_hw[0], th, sy) for x in tile_starts(frame_hw[1], tw, sx)]


def blend_window(tile_hw: tuple[int, int], floor: float = 0.05) -> np.ndarray:
    """Separable raised-cosine weight (th, tw), ``floor`` at the tile border and 1 in the middle.

    The floor keeps frame borders (covered by one tile only) well defined after normalisation.
    """
    def axis(n: int) -> np.ndarray:
        i = (np.arange(n, dtype=np.float64) + 0.5) / n
        return floor + (1.0 - floor) * np.sin(np.pi * i) ** 2

    return np.outer(axis(tile_hw[0]), axis(tile_hw[1])).astype(np.float32)


def crop_tile(image: np.ndarray, y: int, x: int, tile_hw: tuple[int, int]) -> np.ndarray:
    """The tile at (y, x); frames smaller than a tile are reflect-padded to the tile size."""
    th, tw = tile_hw
    t = image[y:y + th, x:x + tw]
    if t.shape[0] < th or t.shape[1] < tw:
        mode = cv2.BORDER_REFLECT_101 if min(t.shape[:2]) > 1 else cv2.BORDER_REPLICATE
        t = cv2.copyMakeBorder(t, 0, th - t.shape[0], 0, tw - t.shape[1], mode)
    return np.ascontiguousarray(t)


class Stitcher:
    """Weighted accumulation of tile maps into one frame map (at ``scale`` x frame resolution)."""

    def __init__(self, frame_hw: tuple[int, int], tile_hw: tuple[int, int], scale: float = 1.0) -> None:
        if scale <= 0 or scale > 1:
            raise ValueError(f"scale must be in (0, 1], got {scale}")
        self.frame_hw = frame_hw
        self.scale = scale
        self.hw = (max(1, round(frame_hw[0] * scale)), max(1, round(frame_hw[1] * scale)))
        self.tile_hw = tile_hw
        self.acc = np.zeros(self.hw, np.float32)
        self.wsum = np.zeros(self.hw, np.float32)
        self._win_cache: dict[tuple[int, int], np.ndarray] = {}

    def add(self, y: int, x: int, tile_map: np.ndarray) -> None:
        """Add a tile's map (any resolution; resized to the tile's footprint at ``scale``)."""
        y0, x0 = round(y * self.scale), round(x * self.scale)
        y1 = min(self.hw[0], round((y + self.tile_hw[0]) * self.scale))
        x1 = min(self.hw[1], round((x + self.tile_hw[1]) * self.scale))
        full = (round(self.tile_hw[0] * self.scale), round(self.tile_hw[1] * self.scale))
        m = tile_map.astype(np.float32, copy=False)
        if m.shape != full:
            m = cv2.resize(m, (full[1], full[0]), interpolation=cv2.INTER_LINEAR)
        win = self._win_cache.get(full)
        if win is None:
            win = self._win_cache[full] = blend_window(full)
        h, w = min(y1 - y0, full[0]), min(x1 - x0, full[1])   # frames smaller than a tile: drop the padding
        y1, x1 = y0 + h, x0 + w
        self.acc[y0:y1, x0:x1] += (m * win)[:h, :w]
        self.wsum[y0:y1, x0:x1] += win[:h, :w]

    def result(self) -> np.ndarray:
        if not np.all(self.wsum > 0):
            raise RuntimeError("tiles do not cover the whole frame")
        return self.acc / self.wsum


def stitch(tile_maps: list[np.ndarray], corners: list[tuple[int, int]], frame_hw: tuple[int, int],
           tile_hw: tuple[int, int], scale: float = 1.0) -> np.ndarray:
    """Pure helper: blend tile maps placed at ``corners`` into one (H, W) map."""
    if len(tile_maps) != len(corners):
        raise ValueError(f"{len(tile_maps)} tile maps for {len(corners)} corners")
    st = Stitcher(frame_hw, tile_hw, scale)
    for (y, x), m in zip(corners, tile_maps):
        st.add(y, x, m)
    return st.result()


def top_fraction_score(amap: np.ndarray, fraction: float = 0.01, area: int | None = None) -> float:
    """Mean of the top ``fraction`` of ``area`` pixels (default: the whole map), the model's image-score rule."""
    flat = amap.ravel()
    k = min(flat.size, max(1, int(math.ceil((flat.size if area is None else area) * fraction))))
    return float(np.partition(flat, flat.size - k)[flat.size - k:].mean())


@dataclass
class TileStats:
    tiles: int = 0
    engine_calls: int = 0
    max_call: int = 0
    peak_live_frames: int = 0   # stitch accumulators alive at once (the memory bound)


class TilingEngine:
    """Wraps any engine: tiles at ``tile`` (default: the inner engine's input size), ``overlap``,
    ``chunk`` tiles per inner call. Maps come back at the frames' own resolution x ``map_scale``
    (all frames of a batch are brought to the first frame's map size when sizes differ).

    Frame score: mean of the top ``top_fraction`` of the stitched map, where the fraction is taken
    of one *tile's* area (``score_area="tile"``, default) so a score means the same thing whatever
    the frame size - 1 % of a 4096 px frame would be ~170 000 px, far larger than a defect of a few
    dozen pixels, and would average it away. ``score_area="frame"`` uses the whole frame's area.
    """

    name = "tiled"

    def __init__(self, inner: Engine, tile: tuple[int, int] | int | None = None, overlap: float = 0.25,
                 chunk: int = 16, map_scale: float = 1.0, top_fraction: float = 0.01,
                 threshold: float | None = None, score_area: str = "tile") -> None:
        if tile is None:
            tile = getattr(inner, "input_hw", None)
            if tile is None:
                raise ValueError("tile size not given and the inner engine has no input_hw")
        self.tile_hw = (int(tile), int(tile)) if isinstance(tile, int) else (int(tile[0]), int(tile[1]))
        if min(self.tile_hw) < 16:
            raise ValueError(f"tile must be >= 16 px, got {self.tile_hw}")
        if chunk < 1:
            raise ValueError("chunk must be >= 1")
        tile_grid((1, 1), self.tile_hw, overlap)  # validates overlap
        self.inner = inner
        self.overlap = overlap
        self.chunk = int(chunk)
        self.map_scale = float(map_scale)
        self.top_fraction = top_fraction
        self.threshold = threshold
        if score_area not in ("tile", "frame"):
            raise ValueError(f"score_area must be 'tile' or 'frame', not {score_area!r}")
        self.score_area = score_area
        self.name = f"{getattr(inner, 'name', 'engine')}+tiled"
        self.stats = TileStats()

    @property
    def input_hw(self) -> tuple[int, int]:
        return self.tile_hw

    def decode_hw(self, product: str) -> tuple[int, int] | None:
        """None: tiling needs every pixel of the frame, so it is decoded at full resolution."""
        return None

    def _tiles(self, images: list[np.ndarray]) -> Iterator[tuple[int, int, int, bool]]:
        """(frame index, y, x, last tile of its frame) in frame order."""
        for i, img in enumerate(images):
            corners = tile_grid((img.shape[0], img.shape[1]), self.tile_hw, self.overlap)
            for j, (y, x) in enumerate(corners):
                yield i, y, x, j == len(corners) - 1

    def stitched(self, product: str, images: list[np.ndarray]) -> tuple[list[np.ndarray], list[float], EngineOutput | None]:
        """Full-resolution (x ``map_scale``) stitched maps and frame scores, plus the last inner output."""
        frames = [as_rgb(im) for im in images]
        stats = TileStats()
        live: dict[int, Stitcher] = {}
        maps: list[np.ndarray | None] = [None] * len(frames)
        last: EngineOutput | None = None
        pending: list[tuple[int, int, int, bool]] = []

        def flush() -> None:
            nonlocal last
            if not pending:
                return
            crops = [crop_tile(frames[i], y, x, self.tile_hw) for i, y, x, _ in pending]
            out = self.inner.infer(product, crops)
            last = out
            stats.engine_calls += 1
            stats.max_call = max(stats.max_call, len(crops))
            for (i, y, x, end), m in zip(pending, out.maps):
                st = live.get(i)
                if st is None:
                    st = live[i] = Stitcher((frames[i].shape[0], frames[i].shape[1]), self.tile_hw, self.map_scale)
                    stats.peak_live_frames = max(stats.peak_live_frames, len(live))
                st.add(y, x, np.asarray(m))
                if end:
                    maps[i] = live.pop(i).result()
            stats.tiles += len(pending)
            pending.clear()

        for t in self._tiles(frames):
            pending.append(t)
            if len(pending) >= self.chunk:
                flush()
        flush()
        self.stats = stats
        done = [m for m in maps if m is not None]
        if len(done) != len(frames):
            raise RuntimeError("some frames were not stitched")
        area = None
        if self.score_area == "tile":
            area = int(round(self.tile_hw[0] * self.map_scale) * round(self.tile_hw[1] * self.map_scale))
        return done, [top_fraction_score(m, self.top_fraction, area) for m in done], last

    def infer(self, product: str, images: list[np.ndarray]) -> EngineOutput:
        t0 = time.perf_counter()
        if not images:
            out = self.inner.infer(product, [])
            return EngineOutput(np.zeros((0,), np.float32), np.zeros((0, *self.tile_hw), np.float32),
                                out.model_version, self.threshold if self.threshold is not None else out.threshold, 0.0)
        maps, scores, last = self.stitched(product, images)
        hw = maps[0].shape
        same = [m if m.shape == hw else cv2.resize(m, (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR) for m in maps]
        assert last is not None
        thr = self.threshold if self.threshold is not None else float(last.threshold)
        return EngineOutput(np.asarray(scores, np.float32), np.stack(same).astype(np.float32), last.model_version,
                            thr, (time.perf_counter() - t0) * 1000.0)

    def close(self) -> None:
        self.inner.close()


def calibrate_tiled(engine: TilingEngine, product: str, normal_frames: list[np.ndarray], quantile: float = 0.99,
                    margin: float = 1.1) -> float:
    """Threshold for stitched frame scores: ``quantile`` of normal frames' scores x ``margin``."""
    if not normal_frames:
        raise ValueError("need normal frames to calibrate")
    scores = [engine.stitched(product, [f])[1][0] for f in normal_frames]
    return float(np.quantile(np.asarray(scores), quantile) * margin)


def maybe_tiled(engine: Engine, settings: Settings, **kw: object) -> Engine:
    """Wrap ``engine`` in a :class:`TilingEngine` when ``settings.tile`` is on (the pipeline's switch)."""
    if settings.tile and not isinstance(engine, TilingEngine):
        return TilingEngine(engine, **kw)  # type: ignore[arg-type]
    return engine
