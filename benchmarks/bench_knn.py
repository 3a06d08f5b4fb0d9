"""Stronger kNN yardsticks for issue 13, as extra ``knn_*`` rows of results/quality.json.

    python benchmarks/bench_knn.py --category bsdata/ball_screw_drive --seeds 0 1 2   # per category
    python benchmarks/bench_knn.py --merge      # per-category files -> quality.json rows + RESULTS.md

No training: every row is a memory bank of normal patch features and a nearest-neighbour search,
scored exactly like the other rows of quality.json (patch distances bilinearly upsampled to the
input, Gaussian blur sigma 4, image score = max of the map, or the mean of its top 1 % where
named ``_top1``; pixel AUROC and AUPRO at 256x256). Features: EfficientNet-Lite0 at 256x256, each
block 3x3 average-pooled at its own stride, brought to the stride-8 grid (32x32), concatenated.
The bank is built from all 80 training normals (the fit / held-out rows in the order
bench_memory.py used, so ``knn_r20k`` with the same seed draws the same 20,000 patches).

Rows (seed = random sample, coreset start and projection):
- ``knn_r20k_rw``: the issue's bank (random 20k, blocks 4 + 10), image score reweighted as in
  PatchCore: w = 1 - softmax(|p* - m|, m in the 9 bank neighbours of m*)[m*], where p* is the
  image's most anomalous patch and m* its nearest bank entry; score = w x max of the map.
- ``knn_r20k_k3``: same bank, patch score = mean distance to the 3 nearest bank entries.
- ``knn_cs10`` / ``knn_cs1`` (+ ``_top1``, ``_rw``, ``_k3``): PatchCore's greedy coreset of 10 % /
  1 % of all training patches (selection after a random projection to 128 dims).
- ``knn_b4_7_10_r20k`` (+ ``_top1``): another block choice, adding block 7 (the first stride-16
  stage end) to blocks 4 and 10 (232 channels).
``knn_r20k`` / ``knn_r20k_top1`` are recomputed here only as a check against the GPU run's rows
(kept as they were in quality.json); the differences go into quality.json's ``knn_cpu_check``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_memory import KEYS, category_split
from benchmarks.common import RESULTS_DIR, WORK, data_root, machine
from inference.model.anomaly_map import gaussian_blur, gaussian_kernel1d, topk_mean_score
from inference.model.inp_former import InpConfig, InpFormer
from training import metrics, patchcore
from training.features import cached_features
from training.train import TrainConfig

PER_CAT = "knn_runs"
BLOCKS_ALL = (4, 7, 10)        # memory blocks of the probe; the yardstick uses 4 and 10
REWEIGHT_NEIGHBOURS = 9        # PatchCore / anomalib's support set for the image-score reweighting
CPU_CHECK = ("knn_r20k", "knn_r20k_top1")


def probe_model() -> InpFormer:
    """A model whose memory features are blocks 4, 7 and 10 (only its encoder is used)."""
    return InpFormer(InpConfig(groups=[[3, 4], [7], [10]], decoder_blocks=3, memory_size=1, memory_k=1)).eval()


def block_slices(model: InpFormer) -> dict[int, slice]:
    ch = model.backbone.channels()
    out, start = {}, 0
    for b in BLOCKS_ALL:
        out[b] = slice(start, start + ch[b])
        start += ch[b]
    return out


def pick(feats: torch.Tensor, sl: dict[int, slice], blocks: tuple[int, ...]) -> torch.Tensor:
    return torch.cat([feats[:, sl[b]] for b in blocks], dim=1).contiguous()


@torch.no_grad()
def search(bank: torch.Tensor, test: torch.Tensor, k: int = 3, chunk: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Distances (N, h, w, k) to the k nearest bank rows (ascending) and the nearest's index (N, h, w).
    The bank is centred first (distances unchanged, less float32 cancellation), like ExtrinsicMemory."""
    n, c, h, w = test.shape
    centre = bank.mean(0)
    b = bank - centre
    bsq = (b * b).sum(1)
    ds, ids = [], []
    for i in range(0, n, chunk):
        q = test[i:i + chunk].flatten(2).transpose(1, 2) - centre      # (n_c, L, C)
        d2 = (q * q).sum(-1, keepdim=True) - 2.0 * (q @ b.t()) + bsq
        v, j = torch.topk(d2, k, dim=-1, largest=False)
        ds.append(v.clamp_min(0.0).sqrt())
        ids.append(j[..., 0])
    return torch.cat(ds).view(n, h, w, k), torch.cat(ids).view(n, h, w)


@torch.no_grad()
def finish(grid: torch.Tensor, hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N, h, w) patch scores -> (maps (N, H, W), max scores, top-1 % scores), the quality.json way."""
    up = F.interpolate(grid.unsqueeze(1), size=hw, mode="bilinear", align_corners=False).squeeze(1)
    maps = gaussian_blur(up, gaussian_kernel1d(4.0))
    return maps, maps.flatten(1).max(1).values, topk_mean_score(maps, 0.01)


@torch.no_grad()
def reweight(bank: torch.Tensor, test: torch.Tensor, d1: torch.Tensor, nn_idx: torch.Tensor,
             b: int = REWEIGHT_NEIGHBOURS) -> torch.Tensor:
    """PatchCore's image-score weight per test image (N,): 1 - softmax over the distances from the most
    anomalous patch p* to m* (its nearest bank entry) and m*'s b-1 nearest bank neighbours, at m*.
    Near 1 when m* is itself a rare, isolated normal pattern; lower inside a dense normal cluster."""
    n, c, h, w = test.shape
    rows = torch.arange(n, device=test.device)
    flat = d1.flatten(1).argmax(1)                                  # p* per image
    p_star = test.flatten(2)[rows, :, flat]                         # (N, C)
    m_star = bank[nn_idx.flatten(1)[rows, flat]]                    # (N, C)
    support = torch.topk(torch.cdist(m_star, bank), min(b, bank.shape[0]), largest=False).indices  # (N, b), m* first
    dist = torch.linalg.vector_norm(p_star.unsqueeze(1) - bank[support], dim=-1)                  # (N, b)
    return 1.0 - torch.softmax(dist, dim=1)[:, 0]


def pixel_part(masks: list[np.ndarray], maps: torch.Tensor) -> dict[str, float]:
    m = list(maps.cpu().numpy())
    out = metrics.pixel_metrics(masks, m)
    out["aupro"] = metrics.aupro(masks, m)
    return {k: float(v) for k, v in out.items()}


def image_part(labels: np.ndarray, scores: torch.Tensor) -> dict[str, float]:
    s = scores.cpu().numpy()
    return {"image_auroc": float(metrics.image_auroc(labels, s)), "image_ap": float(metrics.image_ap(labels, s)),
            "image_f1_max": float(metrics.f1_max(labels, s))}


def bank_rows(bank: torch.Tensor, test: torch.Tensor, labels: np.ndarray, masks: list[np.ndarray],
              hw: tuple[int, int], prefix: str, variants: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """All requested scorings of one bank: '' (max), '_top1', '_rw' (reweighted max), '_k3' (3-NN mean, max)."""
    d, idx = search(bank, test, k=3 if "_k3" in variants else 1)
    maps, smax, stop = finish(d[..., 0], hw)
    pix = pixel_part(masks, maps)
    out = {}
    if "" in variants:
        out[prefix] = image_part(labels, smax) | pix
    if "_top1" in variants:
        out[prefix + "_top1"] = image_part(labels, stop) | pix
    if "_rw" in variants:
        out[prefix + "_rw"] = image_part(labels, reweight(bank, test, d[..., 0], idx) * smax) | pix
    if "_k3" in variants:
        maps3, s3, _ = finish(d.mean(-1), hw)
        out[prefix + "_k3"] = image_part(labels, s3) | pixel_part(masks, maps3)
    return out


CORESETS = {0.01: "knn_cs1", 0.10: "knn_cs10"}


def run_category(root: Path, cat: str, seeds: list[int], out_dir: Path, device: str = "cpu",
                 coresets: tuple[float, ...] = tuple(CORESETS)) -> None:
    cfg = TrainConfig()
    hw = cfg.model.input_hw
    fit, held, test, labels, masks = category_split(root, cat, cfg.holdout, hw)
    probe = probe_model().to(device)
    cache = str(WORK / "cache_knn")
    t0 = time.perf_counter()
    tr = cached_features(probe, [it.path for it in fit + held], cache, memory=True)[0]
    te = cached_features(probe, [it.path for it in test.items], cache, memory=True)[0]
    encode_s = time.perf_counter() - t0
    tr, te = tr.to(device), te.to(device)
    sl = block_slices(probe)
    main = (4, 10)
    tr_m, te_m = pick(tr, sl, main), pick(te, sl, main)
    tr_a, te_a = pick(tr, sl, BLOCKS_ALL), pick(te, sl, BLOCKS_ALL)
    rows_m, rows_a = patchcore.memory_rows(tr_m), patchcore.memory_rows(tr_a)
    out_dir.mkdir(parents=True, exist_ok=True)
    for seed in tqdm(seeds, desc=cat, unit="seed"):
        path = out_dir / f"{cat.replace('/', '__')}__s{seed}.json"
        if path.exists():
            continue
        res: dict[str, Any] = {"category": cat, "seed": seed, "n_train": len(fit) + len(held), "n_test": len(test.items),
                               "encode_s": round(encode_s, 1), "patches": int(rows_m.shape[0]), "methods": {}, "select_s": {}}
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(rows_m.shape[0], generator=g)[:20000].to(device)
        res["methods"] |= bank_rows(rows_m[perm], te_m, labels, masks, hw, "knn_r20k", ("", "_top1", "_rw", "_k3"))
        res["methods"] |= bank_rows(rows_a[perm], te_a, labels, masks, hw, "knn_b4_7_10_r20k", ("", "_top1"))
        for frac in coresets:
            name = CORESETS[frac]
            k = int(round(frac * rows_m.shape[0]))
            t1 = time.perf_counter()
            sel = patchcore.greedy_coreset(rows_m, k, seed)
            res["select_s"][name] = round(time.perf_counter() - t1, 1)
            res["methods"] |= bank_rows(rows_m[sel], te_m, labels, masks, hw, name, ("", "_top1", "_rw", "_k3"))
        res["machine"] = machine() + (f", {torch.cuda.get_device_name()}" if device.startswith("cuda") else "")
        res["device"] = device
        path.write_text(json.dumps(res, indent=1))
        print(f"{cat} seed {seed} " + " ".join(f"{k}={v['image_auroc']:.3f}/{v['pixel_auroc']:.3f}/{v['aupro']:.3f}"
                                              for k, v in res["methods"].items()), flush=True)


def merge(in_dir: Path, quality: dict[str, Any]) -> dict[str, Any]:
    """Add the per-category, per-seed kNN rows to quality.json's tables (mean over categories per seed,
    then mean and spread = max - min over seeds) and recompute the bar, the margins and the winners.
    A row enters only for seeds that cover every category of quality.json."""
    from benchmarks.bench_memory import decide

    runs = [json.loads(p.read_text()) for p in sorted(in_dir.glob("*__s*.json"))]
    cats = quality["categories"]
    by = {(r["category"], r["seed"]): r for r in runs}
    all_seeds = sorted({r["seed"] for r in runs})
    methods = list(dict.fromkeys(m for r in sorted(runs, key=lambda r: -len(r["methods"])) for m in r["methods"]))

    def seeds_of(m: str) -> list[int]:  # a row's seeds: those whose runs cover every category with it
        return [s for s in all_seeds if all((c, s) in by and m in by[(c, s)]["methods"] for c in cats)]

    if not any(seeds_of(m) for m in methods):
        raise SystemExit(f"no seed covers all of {cats} under {in_dir}")
    check: dict[str, Any] = {}
    quality.setdefault("seeds_by_method", {})
    for m in methods:
        seeds = seeds_of(m)
        if not seeds:
            continue
        per_seed = {k: [float(np.mean([by[(c, s)]["methods"][m][k] for c in cats])) for s in seeds] for k in KEYS}
        per_cat = {c: {k: float(np.mean([by[(c, s)]["methods"][m][k] for s in seeds])) for k in KEYS} for c in cats}
        mean = {k: float(np.mean(per_seed[k])) for k in KEYS} | {"spread": {k: float(np.ptp(per_seed[k])) for k in KEYS}}
        if m in CPU_CHECK and m in quality["mean"]:
            # same seeds, same patches drawn: only the device (features, float round-off) differs
            old_seeds = quality["seeds"]
            check[m] = {k: round(float(np.mean([per_seed[k][i] - quality["per_seed_mean"][m][k][old_seeds.index(s)]
                                                for i, s in enumerate(seeds) if s in old_seeds])), 5) for k in KEYS}
            continue
        quality["mean"][m] = mean
        quality["per_seed_mean"][m] = per_seed
        for c in cats:
            quality["per_category"][c][m] = per_cat[c]
        if seeds != quality["seeds"]:
            quality["seeds_by_method"][m] = seeds
        else:
            quality["seeds_by_method"].pop(m, None)
    quality["knn_cpu_check"] = {"seeds": all_seeds, "new_minus_old": check, "machine": runs[0]["machine"],
                                "note": (f"knn_r20k rows recomputed by bench_knn.py (device {runs[0].get('device', 'cpu')}, "
                                         "its own fp16 feature cache) vs bench_memory.py's rows")}
    quality["knn_select_s"] = {c: {s: by[(c, s)]["select_s"] for s in all_seeds if (c, s) in by} for c in cats}
    return decide(quality)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--category", action="append")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=WORK / PER_CAT)
    ap.add_argument("--merge", action="store_true")
    ap.add_argument("--device", default="cpu", help="torch device for the encoder, the coresets and the search")
    ap.add_argument("--coresets", type=float, nargs="+", default=list(CORESETS), choices=list(CORESETS),
                    help="greedy-coreset fractions to run (0.10 costs ~10x 0.01 on a CPU)")
    a = ap.parse_args(argv)
    torch.set_grad_enabled(False)
    if a.merge:
        from benchmarks.bench_memory import write_md

        qpath = RESULTS_DIR / "quality.json"
        q = merge(a.out, json.loads(qpath.read_text()))
        qpath.write_text(json.dumps(q, indent=1))
        write_md(q)
        print(json.dumps({k: q[k] for k in ("knn_bar", "knn_bar_method", "margin_vs_bar", "winners", "knn_cpu_check")},
                         indent=1))
        return 0
    root = data_root()
    for cat in a.category or []:
        run_category(root, cat, a.seeds, a.out, a.device, tuple(a.coresets))
    return 0


if __name__ == "__main__":
    sys.exit(main())
