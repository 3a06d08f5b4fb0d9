"""Defect families vs the true defect types, no labels used: adjusted Rand index and purity.

Per category with several defect types (magnetic tile: blowhole, break, crack, fray, uneven;
tire: combined, contamination, cut, hole), two sources of regions:

* ``gt``: the connected components of the ground-truth masks of every test defect image (each
  component labelled with its image's type);
* ``flagged``: the components of the masks the deployed path produces (a small INP-Former trained
  for ``--iters`` iterations on train/good, TorchEngine, the consumer's own ``binary_mask``) on every
  test defect image the model flags; a component is scored only if it overlaps that image's
  ground truth (labelled with its type); the others are counted as off-defect regions.

Each region is embedded with :class:`inference.families.RegionEmbedder` (frozen ImageNet
EfficientNet-Lite0, no training) and clustered with :func:`inference.family_clustering.cluster`
(threshold from the first 20 regions, as in production), over ``--orders`` shuffled arrival orders
(mean and std). References on the same embeddings: k-means with the TRUE k (it cheats: it is told
the number of types) and "one family" / "all singletons" floors. The threshold factor is fixed at
its default (2.0, set from the synthetic unit test before any real result was seen); the sweep over other factors is reported for context only.

    nice -n 10 python benchmarks/bench_families.py [--iters 100] [--orders 10]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS_DIR, WORK, data_root, fmt, machine, write_section
from inference.families import RegionEmbedder, components
from lineinspect.family_clustering import cluster, fit_threshold
from training.data import load_split

CATEGORIES = {"magnetic_tile": "magnetic_tile/magnetic_tile", "tire": "mvtec_3d_ad/tire"}
FACTORS = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0)


def purity(labels_true: np.ndarray, labels_pred: np.ndarray) -> float:
    total = 0
    for c in np.unique(labels_pred):
        _, counts = np.unique(labels_true[labels_pred == c], return_counts=True)
        total += counts.max()
    return float(total / len(labels_true))


def scores(y: np.ndarray, pred: np.ndarray) -> dict:
    from sklearn.metrics import adjusted_rand_score

    return {"ari": float(adjusted_rand_score(y, pred)), "purity": purity(y, pred), "families": len(np.unique(pred))}


def evaluate(x: np.ndarray, y: np.ndarray, orders: int) -> dict:
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(0)
    perms = [rng.permutation(len(x)) for _ in range(orders)]
    out: dict = {"regions": len(x), "types": {str(t): int((y == t).sum()) for t in np.unique(y)}}
    per_factor = {}
    for factor in FACTORS:
        runs = [scores(y[p], cluster(x[p], factor=factor)) for p in perms]
        per_factor[str(factor)] = {k: [float(np.mean([r[k] for r in runs])), float(np.std([r[k] for r in runs]))]
                                   for k in ("ari", "purity", "families")}
    out["families"] = per_factor["2.0"]
    out["threshold_default"] = [float(np.mean([fit_threshold(x[p][:20]) for p in perms])),
                                float(np.std([fit_threshold(x[p][:20]) for p in perms]))]
    out["factor_sweep"] = per_factor
    k = len(np.unique(y))
    km = [scores(y, KMeans(k, n_init=10, random_state=s).fit_predict(x)) for s in range(3)]
    out["kmeans_true_k"] = {kk: [float(np.mean([r[kk] for r in km])), float(np.std([r[kk] for r in km]))]
                            for kk in ("ari", "purity")}
    out["one_family"] = scores(y, np.zeros(len(y), int))
    out["singletons"] = {"ari": scores(y, np.arange(len(y)))["ari"], "purity": 1.0}
    return out


def gt_regions(items: list, emb: RegionEmbedder) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for it in tqdm(items, desc="gt regions", leave=False):
        image, mask = it.load()
        for r in emb.embed(image, mask):
            xs.append(r.embedding)
            ys.append(it.defect)
    return np.stack(xs), np.array(ys)


def flagged_regions(cat: str, rel: str, items: list, emb: RegionEmbedder, iters: int) -> tuple[np.ndarray, np.ndarray, dict]:
    from inference.engines.torch_engine import TorchEngine
    from inference.postprocess import binary_mask, pixel_threshold
    from training.train import TrainConfig, train

    root = data_root()
    out_dir = WORK / "families" / f"{cat}-{iters}"
    if not ((out_dir / "weights.pt").is_file() and (out_dir / "calibration.json").is_file()):
        train_paths = [it.path for it in load_split(root, rel, "train")]
        cfg = TrainConfig(iters=iters, threads=int(os.environ.get("BENCH_THREADS", "2")), categories=[cat],
                          cache_dir=str(WORK / "feature_cache"))
        train(train_paths, cfg, out_dir, iters=iters, seed=0, resume=False, progress=True)
    eng = TorchEngine(out_dir, batch_size=4)
    xs, ys = [], []
    flagged = off = 0
    for it in tqdm(items, desc="flagged regions", leave=False):
        image, gt = it.load()
        o = eng.infer(cat, [image])
        thr = float(o.threshold)
        if float(o.scores[0]) < thr:
            continue
        flagged += 1
        mask = binary_mask(np.asarray(o.maps[0], np.float32), pixel_threshold(thr, getattr(o, "pixel_threshold", None)),
                           image.shape[:2])
        for r, (comp, _, _) in zip(emb.embed(image, mask), components(mask)):
            if (comp & (gt > 0)).any():
                xs.append(r.embedding)
                ys.append(it.defect)
            else:
                off += 1
    eng.close()
    info = {"defect_images": len(items), "flagged_images": flagged, "off_defect_regions": off}
    return (np.stack(xs) if xs else np.zeros((0, 120), np.float32)), np.array(ys), info


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--orders", type=int, default=10)
    p.add_argument("--no-flagged", action="store_true", help="ground-truth regions only (no model training)")
    p.add_argument("--render-only", action="store_true", help="rewrite the RESULTS.md section from results/families.json")
    args = p.parse_args()
    if args.render_only:
        write_section("families", render(json.loads((RESULTS_DIR / "families.json").read_text())))
        return 0
    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    emb = RegionEmbedder(threads=int(os.environ.get("BENCH_THREADS", "2")))
    res: dict = {"machine": machine(), "load_avg_start": os.getloadavg()[0], "iters": args.iters, "orders": args.orders,
                 "embedding": "EfficientNet-Lite0 (ImageNet, frozen) blocks 4+7, context-relative pooled, 120-d",
                 "categories": {}}
    items_of = {}
    for cat, rel in CATEGORIES.items():  # ground-truth regions first: written before any model is trained
        t0 = time.perf_counter()
        test = load_split(data_root(), rel, "test")
        items = items_of[cat] = [it for it in test if it.defect != "good" and it.mask_path is not None]
        cache = WORK / "families" / f"{cat}-gt-regions.npz"
        if cache.is_file():
            z = np.load(cache)
            x, y = z["x"], z["y"]
        else:
            x, y = gt_regions(items, emb)
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez(cache, x=x, y=y)
            res.setdefault("embed_s_per_image", {})[cat] = (time.perf_counter() - t0) / max(1, len(items))
        res["categories"][cat] = {"gt": evaluate(x, y, args.orders)}
        print(cat, "gt", json.dumps(res["categories"][cat]["gt"]["families"]), flush=True)
    save(res)
    if not args.no_flagged:
        for cat, rel in CATEGORIES.items():
            xf, yf, info = flagged_regions(cat, rel, items_of[cat], emb, args.iters)
            res["categories"][cat]["flagged"] = {**info, "scored_regions": len(xf), **(evaluate(xf, yf, args.orders)
                                                             if len(xf) >= 4 and len(set(yf)) > 1 else {})}
            print(cat, "flagged", json.dumps(res["categories"][cat]["flagged"].get("families")), flush=True)
            save(res)
    return 0


def reading(res: dict) -> str:
    """The numbers' plain meaning, computed from them (so a rerun cannot leave stale prose)."""
    parts = []
    for cat, e in res["categories"].items():
        g = e["gt"]
        f, km = g["families"], g["kmeans_true_k"]
        gap = "below" if f["ari"][0] < km["ari"][0] else "at or above"
        parts.append(f"{cat} (gt): the online families reach ARI {f['ari'][0]:.2f}, {gap} k-means told the true k "
                     f"({km['ari'][0]:.2f}), with {f['families'][0]:.1f} families for {len(g['types'])} types; "
                     f"threshold {g['threshold_default'][0]:.3f}"
                     + (" (the 0.6 cap binds: the regions' nearest neighbours are far apart)"
                        if g["threshold_default"][0] >= 0.599 else ""))
    for cat, e in res["categories"].items():
        fl = e.get("flagged")
        if fl and fl.get("regions", 0) < 30:
            parts.append(f"{cat} (flagged): the {res['iters']}-iteration model flags only {fl['flagged_images']} of "
                         f"{fl['defect_images']} defect images at its calibrated threshold, leaving "
                         f"{fl.get('regions', 'fewer than 4')} scorable regions: too few to judge the families on the "
                         "model's own masks; a better-trained model is needed for that measurement")
    weak = [c for c, e in res["categories"].items() if e["gt"]["kmeans_true_k"]["ari"][0] < 0.2]
    if weak:
        parts.append(f"where even k-means with the true k stays below ARI 0.2 ({', '.join(weak)}), the frozen ImageNet "
                     "features pooled over a region do not separate the defect types: the embedding, not the "
                     "grouping, is the limit there")
    return "; ".join(parts) + "."


def save(res: dict) -> None:
    res["load_avg_end"] = os.getloadavg()[0]
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "families.json").write_text(json.dumps(res, indent=1))
    write_section("families", render(res))


def render(res: dict) -> str:
    lines = ["## Defect families (issue 17)", "",
             ("Families found without labels vs the true defect types (`benchmarks/bench_families.py`, "
             "`results/families.json`). Regions: `gt` = connected components of the ground-truth masks of every test "
             f"defect image; `flagged` = components of the deployed mask (INP-Former, {res['iters']} iterations on "
             "train/good) on the defect images the model flags, scored when they overlap the ground truth. Embedding: "
             f"{res['embedding']}. Online leader clustering, threshold = 2.0 x median nearest-neighbour cosine distance of "
             f"the first 20 regions, mean ± std over {res['orders']} shuffled arrival orders. k-means is told the true "
             "number of types (it cheats: an upper reference, not a competitor)."), "",
             "| category | regions | source | types | families | ARI | purity | k-means true k: ARI | purity |",
             "|---|---|---|---|---|---|---|---|---|"]
    for cat, e in res["categories"].items():
        for src in ("gt", "flagged"):
            r = e.get(src)
            if not r or "families" not in r:
                if r:
                    n = r.get("scored_regions", "< 4")
                    lines.append(f"| {cat} | {n} | {src} | - | - | too few regions to score | - | - | - |")
                continue
            f, km = r["families"], r["kmeans_true_k"]
            lines.append(f"| {cat} | {r['regions']} | {src} | {len(r['types'])} | {f['families'][0]:.1f} | "
                         f"{f['ari'][0]:.3f} ± {f['ari'][1]:.3f} | {f['purity'][0]:.3f} ± {f['purity'][1]:.3f} | "
                         f"{km['ari'][0]:.3f} | {km['purity'][0]:.3f} |")
    lines += ["", "Threshold-factor sweep (context only; the default was fixed before measuring), ARI / purity / families:", ""]
    for cat, e in res["categories"].items():
        for src in ("gt", "flagged"):
            r = e.get(src)
            if r and "factor_sweep" in r:
                cells = ", ".join(f"{k}: {v['ari'][0]:.2f} / {v['purity'][0]:.2f} / {v['families'][0]:.0f}"
                                  for k, v in r["factor_sweep"].items())
                lines.append(f"* {cat} {src}: {cells}")
        fl = e.get("flagged")
        if fl:
            lines.append(f"* {cat} flagged: {fl['flagged_images']} of {fl['defect_images']} defect images flagged, "
                         f"{fl['off_defect_regions']} regions off the ground truth (not scored)")
    lines += ["", "Reading: " + reading(res)]
    lines += ["", (f"Machine: {res['machine']}; load average {fmt(res['load_avg_start'], 1)} at start, "
                   f"{fmt(res['load_avg_end'], 1)} at end (other engineers' jobs share the 2 cores).")]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
