"""Score a category's test split with any engine and report the standard anomaly metrics.

Engines return maps at the model's input resolution; they are resized back to each image's
ground-truth size with :func:`inference.preprocess.map_to_frame` (bilinear, the same helper the
live pipeline uses), so pixel metrics and AUPRO are measured at full image resolution.
``images_per_second`` counts only the time spent inside ``engine.infer`` (its own resize and
normalisation included; file decoding, map resizing and metric computation excluded).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from inference.engines.base import Engine
from lineinspect.errors import ConfigError
from lineinspect.logs import kv
from training import metrics
from training.data import CategorySplit, discover, load_split

log = logging.getLogger(__name__)

METRIC_KEYS = ("image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro", "images_per_second")

if TYPE_CHECKING:  # types only: these modules are imported where they are used
    from lineinspect.settings import Settings


def _map_to_frame(amap: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    try:
        from inference.preprocess import map_to_frame
    except ImportError:  # pragma: no cover - only while inference/ is incomplete
        import cv2

        return cv2.resize(amap.astype(np.float32), (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR)
    return map_to_frame(amap, hw)


def evaluate(engine: Engine, product: str, split: CategorySplit, batch_size: int = 8, progress: bool = True) -> dict[str, Any]:
    """Run ``engine`` over every test image and compute the metrics (see :data:`METRIC_KEYS`)."""
    if batch_size <= 0:
        raise ValueError("batch_size must be > 0")
    if len(split) == 0:
        raise ValueError(f"the {split.split} split of {split.category} is empty")
    from tqdm import tqdm

    scores: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    maps: list[np.ndarray] = []
    engine_s = 0.0
    bar = tqdm(total=len(split), desc=f"eval {split.category}", unit="img", disable=not progress, leave=False)
    try:
        for start in range(0, len(split), batch_size):
            batch = split.items[start:start + batch_size]
            loaded = [it.load() for it in batch]
            images = [img for img, _ in loaded]
            t0 = time.perf_counter()
            out = engine.infer(product, images)
            engine_s += time.perf_counter() - t0
            s = np.asarray(out.scores, dtype=np.float64).reshape(-1)
            if s.shape[0] != len(batch) or len(out.maps) != len(batch):
                raise RuntimeError(f"engine returned {s.shape[0]} scores / {len(out.maps)} maps for {len(batch)} images")
            scores.append(s)
            for (_, mask), amap in zip(loaded, out.maps):
                masks.append(mask)
                maps.append(_map_to_frame(np.asarray(amap, dtype=np.float32), (mask.shape[0], mask.shape[1])))
            bar.update(len(batch))
    finally:
        bar.close()

    labels = split.labels
    score = np.concatenate(scores)
    result: dict[str, Any] = {
        "category": split.category,
        "n_images": int(labels.size),
        "n_anomalous": int(labels.sum()),
        "image_auroc": metrics.image_auroc(labels, score),
        "image_ap": metrics.image_ap(labels, score),
        "image_f1_max": metrics.f1_max(labels, score),
    }
    t0 = time.perf_counter()
    result.update(metrics.pixel_metrics(masks, maps))
    result["aupro"] = metrics.aupro(masks, maps)
    result["images_per_second"] = labels.size / engine_s if engine_s > 0 else float("inf")
    log.info("evaluated", extra=kv(category=split.category, n=labels.size, engine_s=round(engine_s, 3),
                                   metrics_s=round(time.perf_counter() - t0, 3)))
    return result


def format_table(results: Sequence[dict[str, Any]]) -> str:
    """A fixed-width table, one row per category (metrics in %, throughput in images/s)."""
    cols = ["category", "n", "I-AUROC", "I-AP", "I-F1", "P-AUROC", "P-AP", "P-F1", "AUPRO", "img/s"]
    rows = []
    def pct(r: dict[str, Any], k: str) -> str:
        return "n/a" if r[k] is None or math.isnan(r[k]) else f"{100 * r[k]:.1f}"

    for r in results:
        rows.append([r["category"], str(r["n_images"]), *(pct(r, k) for k in METRIC_KEYS[:-1]), f"{r['images_per_second']:.1f}"])
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    fmt = lambda row: "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths)))  # noqa: E731
    return "\n".join([fmt(cols), fmt(["-" * w for w in widths]), *(fmt(r) for r in rows)])


def _json_safe(v: Any) -> Any:
    return None if isinstance(v, float) and (math.isnan(v) or math.isinf(v)) else v


def _load_engine(args: argparse.Namespace, settings: Settings) -> Engine:
    if getattr(args, "zero_shot", False):
        try:
            from inference.engines.zero_shot import ZeroShotEngine
        except ImportError:
            raise ConfigError("zero-shot engine not available in this build") from None
        # With --model the zero-shot engine uses that model's INP distance (a model trained on
        # other products); without it, the training-free GRNR method.
        method = "inp" if getattr(args, "model", None) else "grnr"
        return ZeroShotEngine(method=method, model_dir=getattr(args, "model", None),
                              threshold_quantile=settings.threshold_quantile, threads=settings.threads)
    from inference.engines.local import load_local_engine

    if args.model is None:
        raise ConfigError("eval needs --model DIR (or --zero-shot)")
    if not Path(args.model).is_dir():
        what = "is not a directory" if Path(args.model).exists() else "does not exist"
        raise ConfigError(f"model directory {args.model} {what}")
    return load_local_engine(args.model, kind=getattr(args, "engine", None) or "auto", threads=settings.threads)


def run_eval(args: argparse.Namespace, settings: Settings) -> int:
    """``lineinspect eval``: print a metrics table and optionally write it as JSON.

    ``--category`` may name one category, or be omitted when ``--data`` is itself a category;
    ``all`` evaluates every discovered category with the same engine (useful for zero-shot).
    """
    root = Path(getattr(args, "data", None) or settings.data)
    cat = getattr(args, "category", None)
    cats = discover(root) if cat == "all" else [cat]
    splits = [load_split(root, c, "test") for c in cats]  # fail on bad data before loading a model
    if getattr(args, "json", None) and Path(args.json).is_dir():  # ...and on a bad output before evaluating
        raise ConfigError(f"--json {args.json} is a directory; give a file path")
    engine = _load_engine(args, settings)
    try:
        results = [evaluate(engine, sp.category.split("/")[-1], sp, progress=True) for sp in splits]
    finally:
        engine.close()
    print(format_table(results))
    if getattr(args, "json", None):
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        payload: dict[str, Any] = {
            "model": str(args.model) if getattr(args, "model", None) else None,
            "engine": "zero-shot" if getattr(args, "zero_shot", False) else (getattr(args, "engine", None) or "auto"),
            "data": str(root),
            "results": [{k: _json_safe(v) for k, v in r.items()} for r in results],
        }
        if len(results) == 1:
            payload.update({k: _json_safe(v) for k, v in results[0].items()})
        out.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"metrics written to {out}")
    return 0
