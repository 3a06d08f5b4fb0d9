"""Defect families on real test sets with several defect types (magnetic tile: 5, tire: 4).

Each defective test image is scored by a small INP-Former (the drift benchmark's, few iterations);
its flagged regions are the connected components of the model's mask (map >= the image threshold,
as the consumer does; when nothing passes, the top 1 % of the map); each region gets the pooled
encoder embedding of :mod:`inference.families`, and the regions stream, in a shuffled order, through
:class:`inference.families.LeaderClustering` (threshold from the first 30 regions, no labels). An
image's family is its largest region's. Reported against the true defect types: adjusted Rand
index and purity, the number of families; and the same with the ground-truth masks as regions
(localisation taken out: how good the embedding and the grouping alone are). Labels are used only
to score.

    nice -n 10 python benchmarks/bench_families.py
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_drift import PRODUCTS, images_in, train_model
from benchmarks.common import WORK, Recorder, data_root, machine, section_head
from inference.families import LeaderClustering, encoder_grid, purity, regions
from inference.preprocess import batch_to_input
from training.data import read_image


def run_product(product: str, rel: str, args: argparse.Namespace) -> dict:
    import cv2
    from sklearn.metrics import adjusted_rand_score

    from inference.model_dir import load_model_dir

    root = data_root() / rel
    train_good = images_in(root / "train" / "good")
    model_dir = train_model(product, train_good[: int(len(train_good) * 0.6)], args.iters,
                            WORK / "drift" / f"{product}-{args.iters}")
    loaded = load_model_dir(model_dir)
    model, thr, hw = loaded.module, loaded.threshold, loaded.input_hw
    items = [(d.name, p) for d in sorted((root / "test").iterdir()) if d.is_dir() and d.name != "good"
             for p in images_in(d)]
    order = np.random.default_rng(args.seed).permutation(len(items))
    embs: dict[str, list] = {"model_mask": [], "gt_mask": []}
    labels: list[str] = []
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    for k in tqdm(order, desc=f"{product}: regions"):
        label, path = items[k]
        img = read_image(path)
        with torch.inference_mode():
            enc = model.encode(torch.from_numpy(batch_to_input([img], hw)))
            amap, _ = model.score_features(enc)
        grid = encoder_grid([g[0] for g in enc])
        m = amap[0].float().numpy()
        mask = m >= thr
        if not regions(mask, grid):
            mask = m >= np.quantile(m, 0.99)
        gt_path = root / "ground_truth" / label / f"{path.stem}_mask.png"
        gt = cv2.imread(str(gt_path), cv2.IMREAD_GRAYSCALE)
        gt_mask = cv2.resize((gt > 0).astype(np.uint8), (hw[1], hw[0]), interpolation=cv2.INTER_NEAREST) > 0 \
            if gt is not None else mask
        r_model, r_gt = regions(mask, grid, min_area_px=4), regions(gt_mask, grid, min_area_px=1)
        if not r_model or not r_gt:
            continue
        labels.append(label)
        embs["model_mask"].append(r_model[0].embedding)
        embs["gt_mask"].append(r_gt[0].embedding)
    out: dict = {"images": len(labels), "types": sorted(set(labels)),
                 "type_counts": {t: labels.count(t) for t in sorted(set(labels))}, "threshold_px": thr}
    for source, vecs in embs.items():
        res = {}
        for q, f in [(0.5, 2.0), (0.5, 1.5), (0.25, 2.0), (0.75, 2.0)]:
            lc = LeaderClustering(warmup=30, quantile=q, factor=f)
            pred: list[int] = []
            for v in vecs:
                pred += lc.add(v)
            pred += lc.flush()
            res[f"q{q}_x{f}"] = {"ari": float(adjusted_rand_score(labels, pred)), "purity": purity(labels, pred),
                                 "families": len(lc.families), "threshold": lc.threshold}
        out[source] = res
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    run = Recorder()
    res = {"iters": args.iters, "seed": args.seed, "machine": machine(), "default": "q0.5_x2.0", "products": {}}
    for product in ("magnetic_tile", "tire"):
        res["products"][product] = run_product(product, PRODUCTS[product], args)
    return run.finish("families", res, render)


def render(res: dict) -> str:
    about = (f"Every defective test image, shuffled (seed {res['seed']}), its largest flagged region embedded "
             "and clustered incrementally (leader clustering, cosine, threshold = factor x quantile of the first "
             "30 regions' nearest-neighbour distances; default quantile 0.5, factor 2). No labels used except to "
             f"score. Model: INP-Former, {res['iters']} iterations.")
    columns = ["product", "regions from", "rule", "ARI", "purity", "families", "types"]
    lines = section_head("Defect families", "bench_families.py", about, res, columns)
    for product, r in res["products"].items():
        for source in ("model_mask", "gt_mask"):
            for rule, v in r[source].items():
                lines.append(f"| {product} | {source.replace('_', ' ')} | {rule}{' (default)' if rule == res['default'] else ''} "
                             f"| {v['ari']:.3f} | {v['purity']:.3f} | {v['families']} | {len(r['types'])} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
