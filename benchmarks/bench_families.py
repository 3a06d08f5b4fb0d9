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

Two embeddings of the same regions: ``token`` (the consumer's default: the encoder groups on the
16x16 token grid, pooled together) and ``blocks`` (:func:`inference.families.block_grids`: every
backbone block at its own resolution, pooled and L2-normalised per block, concatenated). And a
reference row per embedding: k-means with the TRUE number of types (it is told what the leader
clustering must find by itself, so it is the ceiling of the embedding, not a method we could ship).

``--consumer-cost``: the families step's cost in the consumer, measured side by side in one run: the
same real frames through a synchronous :class:`inference.consumer.InferenceConsumer` (Torch engine,
SQLite) with and without the step, alternating ABAB.

    nice -n 10 python benchmarks/bench_families.py [--consumer-cost]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_drift import PRODUCTS, images_in, train_model
from benchmarks.common import RESULTS_DIR, WORK, Recorder, data_root, machine, section_head, write_section
from inference.families import LeaderClustering, block_grids, encoder_grid, purity, regions
from inference.preprocess import batch_to_input
from training.data import read_image


def run_product(product: str, rel: str, args: argparse.Namespace) -> dict:
    import cv2
    from sklearn.cluster import KMeans
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
    embs: dict[str, list] = {"model_mask": [], "gt_mask": [], "model_mask_blocks": [], "gt_mask_blocks": []}
    labels: list[str] = []
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    for k in tqdm(order, desc=f"{product}: regions"):
        label, path = items[k]
        img = read_image(path)
        with torch.inference_mode():
            enc = model.encode(torch.from_numpy(batch_to_input([img], hw)))
            amap, _ = model.score_features(enc)
        grid = encoder_grid([g[0] for g in enc])
        blocks = block_grids(loaded, [img])[0]
        m = amap[0].float().numpy()
        mask = m >= thr
        if not regions(mask, grid):
            mask = m >= np.quantile(m, 0.99)
        gt_path = root / "ground_truth" / label / f"{path.stem}_mask.png"
        gt = cv2.imread(str(gt_path), cv2.IMREAD_GRAYSCALE)
        gt_mask = cv2.resize((gt > 0).astype(np.uint8), (hw[1], hw[0]), interpolation=cv2.INTER_NEAREST) > 0 \
            if gt is not None else mask
        r_model, r_gt = regions(mask, grid, min_area_px=4), regions(gt_mask, grid, min_area_px=1)
        b_model, b_gt = regions(mask, blocks, min_area_px=4), regions(gt_mask, blocks, min_area_px=1)
        if not r_model or not r_gt or not b_model or not b_gt:
            continue
        labels.append(label)
        embs["model_mask"].append(r_model[0].embedding)
        embs["gt_mask"].append(r_gt[0].embedding)
        embs["model_mask_blocks"].append(b_model[0].embedding)
        embs["gt_mask_blocks"].append(b_gt[0].embedding)
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
        k = len(set(labels))
        km = KMeans(n_clusters=k, n_init=10, random_state=0).fit_predict(np.stack(vecs))
        res["kmeans_true_k"] = {"ari": float(adjusted_rand_score(labels, km)), "purity": purity(labels, km.tolist()),
                                "families": k, "threshold": None}
        out[source] = res
    return out


class _OneModelRegistry:
    """What :class:`inference.families.FamilyMonitor` asks of a registry, for one model dir."""

    def __init__(self, product: str, version: str, path: Path) -> None:
        from types import SimpleNamespace

        self._info = SimpleNamespace(product=product, version=version, path=str(path))

    def list(self, product: str) -> list:
        return [self._info] if product == self._info.product else []


def consumer_cost(product: str, rel: str, args: argparse.Namespace) -> dict:
    """Frames/s of a synchronous consumer with and without the families step, ABAB in one run."""
    from inference.consumer import InferenceConsumer
    from inference.engines.torch_engine import TorchEngine
    from inference.families import FamilyMonitor
    from ingest.bus.memory import MemoryBus, MemoryConsumer, MemoryPublisher
    from ingest.publisher import FramePublisher
    from lineinspect.settings import Settings
    from storage.families import FamilyStore
    from storage.store import ResultStore

    root = data_root() / rel
    train_good = images_in(root / "train" / "good")
    model_dir = train_model(product, train_good[: int(len(train_good) * 0.6)], args.iters,
                            WORK / "drift" / f"{product}-{args.iters}")
    normals = images_in(root / "test" / "good")
    defects = [p for d in sorted((root / "test").iterdir()) if d.is_dir() and d.name != "good" for p in images_in(d)]
    rng = np.random.default_rng(args.seed)
    n = args.cost_frames
    pick = [defects[rng.integers(len(defects))] if rng.random() < args.cost_defect_rate
            else normals[rng.integers(len(normals))] for _ in range(n)]
    frames = [read_image(p) for p in pick]
    threads = int(os.environ.get("BENCH_THREADS", "2"))
    engine = TorchEngine(model_dir, threads=threads, batch_size=8)
    version = engine.loaded.version
    runs: list[dict] = []
    tmp = WORK / "families_cost"
    tmp.mkdir(parents=True, exist_ok=True)
    # run 0 warms up (imports, allocator, SQLite files) and is not counted
    for rep, with_families in enumerate([False] + [False, True] * args.cost_reps):
        db = tmp / f"run{rep}.sqlite"
        db.unlink(missing_ok=True)
        settings = Settings(home=tmp, engine_url="local://torch", batch_max_records=8, batch_max_wait_ms=10,
                            topic_frames="frames", topic_dlq="frames.dlq", threads=threads)
        store = ResultStore.open(f"sqlite:///{db.as_posix()}")
        steps = [FamilyMonitor(store, FamilyStore.of(store), _OneModelRegistry(product, version, model_dir),  # type: ignore[arg-type]
                               warmup=8)] if with_families else []  # 8: the save path runs too
        bus = MemoryBus(partitions=1)
        pub = FramePublisher(settings, product, "L1", "cam-1", MemoryPublisher(bus, settings.topic_frames),
                             first_frame_id=0, encoding="jpeg")
        for img in frames:
            pub.publish(img)
        consumer = InferenceConsumer(settings, MemoryConsumer(bus, settings.topic_frames, "g", settings.topic_dlq),
                                     engine, store, None, pipelined=False, post_store=steps, stat_interval_s=1e9)
        t0 = time.perf_counter()
        handled = consumer.run(max_frames=n, idle_timeout_s=2.0)
        seconds = time.perf_counter() - t0
        flagged = sum(1 for r in store.results_for_camera("cam-1") if r["verdict"] == "defect")
        consumer.close()
        store.close()
        runs.append({"families": with_families, "frames": handled, "seconds": round(seconds, 2),
                     "frames_per_s": round(handled / seconds, 3), "flagged": flagged, "warmup": rep == 0})
        print(runs[-1])
    engine.close()
    counted = [r for r in runs if not r["warmup"]]
    off = [r["frames_per_s"] for r in counted if not r["families"]]
    on = [r["frames_per_s"] for r in counted if r["families"]]
    flagged = float(np.mean([r["flagged"] for r in counted])) / n
    ratio = float(np.median(on) / np.median(off))
    # extra seconds per flagged frame = (1/on - 1/off) per frame / flagged share
    extra = (1.0 / float(np.median(on)) - 1.0 / float(np.median(off))) / max(flagged, 1e-9)
    return {"frames": n, "defect_rate_drawn": args.cost_defect_rate, "flagged_share": round(flagged, 3),
            "runs": runs, "throughput_ratio_on_over_off": round(ratio, 3),
            "extra_s_per_flagged_frame": round(extra, 3), "engine": "torch", "pipelined": False}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--consumer-cost", action="store_true", help="also measure the consumer with and without the step")
    p.add_argument("--cost-frames", type=int, default=48)
    p.add_argument("--cost-reps", type=int, default=2)
    p.add_argument("--cost-defect-rate", type=float, default=0.2)
    p.add_argument("--cost-only", action="store_true", help="only the consumer cost (keeps the clustering results)")
    args = p.parse_args(argv)
    run = Recorder()
    path = RESULTS_DIR / "families.json"
    if args.cost_only:
        res = json.loads(path.read_text())
    else:
        res = {"iters": args.iters, "seed": args.seed, "machine": machine(), "default": "q0.5_x2.0", "products": {}}
        for product in ("magnetic_tile", "tire"):
            res["products"][product] = run_product(product, PRODUCTS[product], args)
    if args.consumer_cost or args.cost_only:
        cost_load0 = os.getloadavg()[0]
        res["consumer_cost"] = consumer_cost("magnetic_tile", PRODUCTS["magnetic_tile"], args)
        res["consumer_cost"]["load_average_start_end"] = [round(cost_load0, 2), round(os.getloadavg()[0], 2)]
    if not args.cost_only:
        return run.finish("families", res, render)
    # the clustering numbers keep their own run's time and load average
    path.write_text(json.dumps(res, indent=2) + "\n")
    write_section("families", render(res))
    print(render(res))
    return 0


def render(res: dict) -> str:
    about = (f"Every defective test image, shuffled (seed {res['seed']}), its largest flagged region embedded and "
             f"clustered incrementally (leader clustering, cosine, threshold = factor x quantile of the first 30 "
             f"regions' nearest-neighbour distances; default quantile 0.5, factor 2). No labels used except to score. "
             f"Model: INP-Former, {res['iters']} iterations. Embedding `token`: the consumer's (encoder groups on the "
             f"16x16 token grid); `blocks`: every backbone block at its own resolution, mask-weighted, L2-normalised "
             f"per block, concatenated. 'k-means, TRUE k' is told the number of types the leader clustering must find "
             f"by itself: the ceiling of the embedding, a reference, not a method to ship.")
    columns = ["product", "regions from", "embedding", "rule", "ARI", "purity", "families", "types"]
    lines = section_head("Defect families", "bench_families.py", about, res, columns)
    for product, r in res["products"].items():
        for source in ("model_mask", "gt_mask", "model_mask_blocks", "gt_mask_blocks"):
            if source not in r:
                continue
            mask, emb = source.replace("_blocks", "").replace("_", " "), "blocks" if source.endswith("blocks") else "token"
            for rule, v in r[source].items():
                name = "k-means, TRUE k (ceiling)" if rule == "kmeans_true_k" else \
                    rule + (" (default)" if rule == res["default"] else "")
                lines.append(f"| {product} | {mask} | {emb} | {name} | {v['ari']:.3f} | {v['purity']:.3f} | "
                             f"{v['families']} | {len(r['types'])} |")
    c = res.get("consumer_cost")
    if c:
        on = [x["frames_per_s"] for x in c["runs"] if x["families"] and not x.get("warmup")]
        off = [x["frames_per_s"] for x in c["runs"] if not x["families"] and not x.get("warmup")]
        lines += ["", (f"Consumer cost of the families step (magnetic tile, {c['frames']} real frames, {c['defect_rate_drawn']:.0%} "
                       f"drawn from the defect set, {c['flagged_share']:.0%} flagged by the model; synchronous consumer, "
                       f"Torch engine, SQLite; runs alternated off/on in one process; load average "
                       f"{c['load_average_start_end']}; a first warm-up run not counted): frames/s off {off}, on {on}; "
                       "throughput with/without (medians) "
                       f"**{c['throughput_ratio_on_over_off']:.2f}x**, i.e. about {c['extra_s_per_flagged_frame']:.2f} s "
                       "more per flagged frame (one batched encoder pass per stored batch).")]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
