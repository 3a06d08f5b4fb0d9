"""Why does the in-graph extrinsic memory alone (``memory1024_only``) score below the kNN greedy coreset
of about the same size (``knn_cs1`` / ``knn_cs1_k3``)? One difference at a time (issue 13).

    python benchmarks/bench_memory_diag.py --seed 0            # all 4 categories, one process
    python benchmarks/bench_memory_diag.py --seed 0 --only base_knn mem_path

No training: both sides are a bank of normal patch features (blocks 4 + 10 of EfficientNet-Lite0,
3x3 pooled at their own stride, on the stride-8 grid - the same features for both, read from
bench_knn.py's cache) and a nearest-neighbour search. Each variant changes ONE thing against
``base_knn`` (= ``knn_cs1``: greedy coreset of 1 % of the patches of all 80 normals, k = 1, Euclidean,
distance grid upsampled to 256x256 and blurred with sigma 4) towards what the model's memory does
(``mem_path`` = all of them at once: bank from the 68 fit normals, 1024 entries, the map blurred at
the 64x64 working grid with sigma 1 and then upsampled, as ``InpFormer.raw_maps`` + ``finish`` do).
Cells: I-AUROC (max and top-1 % score) / P-AUROC / AUPRO, mean of the 4 categories.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_knn import block_slices, image_part, pick, pixel_part, probe_model
from benchmarks.bench_memory import category_split
from benchmarks.common import RESULTS_DIR, WORK, data_root, machine
from inference.model.anomaly_map import gaussian_blur, gaussian_kernel1d, topk_mean_score
from training import patchcore
from training.features import cached_features
from training.train import TrainConfig

CATEGORIES = ("bsdata/ball_screw_drive", "kolektorsdd/commutator", "magnetic_tile/magnetic_tile", "mvtec_3d_ad/tire")


@dataclass(frozen=True)
class Variant:
    bank_from: str = "all"      # "all" 80 normals | "fit" the 68 the model trains on
    size: str = "1pct"          # "1pct" (819 of 80 images) | an int as text
    k: int = 1                  # mean distance to the k nearest
    path: str = "full"          # "full": up to 256, blur sigma 4 | "work": blur sigma 1 at 64x64, then up
    metric: str = "l2"          # "l2" | "cos" (1 - cosine) | "l2z" (L2 on per-channel z-scored features)
    note: str = ""


VARIANTS: dict[str, Variant] = {
    "base_knn": Variant(note="knn_cs1 recomputed"),
    "bank_fit68": Variant(bank_from="fit", note="bank from the 68 fit normals (coreset 1 % of them)"),
    "size1024": Variant(size="1024", note="1024 entries from all 80"),
    "work_path": Variant(path="work", note="map blurred at 64x64 (sigma 1) then upsampled"),
    "k3": Variant(k=3, note="mean of 3 nearest (= knn_cs1_k3)"),
    "cos": Variant(metric="cos", note="1 - cosine instead of L2"),
    "l2z": Variant(metric="l2z", note="L2 on per-channel z-scored features"),
    "mem_path": Variant(bank_from="fit", size="1024", path="work", note="the model's memory: 68 fit, 1024, work path"),
    "mem_path_k3": Variant(bank_from="fit", size="1024", path="work", k=3, note="mem_path + mean of 3 nearest"),
    "fit68_k3": Variant(bank_from="fit", k=3, note="68 fit, 1 %, k = 3"),
    "fit68_1024_k3": Variant(bank_from="fit", size="1024", k=3, note="68 fit, 1024, k = 3, full path"),
    "all_1024_k3_work": Variant(size="1024", k=3, path="work", note="80, 1024, k = 3, work path"),
    "all_1024_k3": Variant(size="1024", k=3, note="80, 1024, k = 3"),
    "all_512_k3": Variant(size="512", k=3, note="80, 512, k = 3"),
    "all_2048_k3": Variant(size="2048", k=3, note="80, 2048, k = 3"),
    "cos_k3": Variant(metric="cos", k=3, note="1 - cosine, k = 3"),
    "pca64_1024_k3": Variant(size="1024", k=3, metric="pca64", note="80, 1024, k = 3, L2 on the top 64 principal axes"),
    "pca96_1024_k3": Variant(size="1024", k=3, metric="pca96", note="80, 1024, k = 3, L2 on the top 96 principal axes"),
    "pca64_512_k3": Variant(size="512", k=3, metric="pca64", note="80, 512, k = 3, top 64 principal axes"),
}


@torch.no_grad()
def knn_dist(bank: torch.Tensor, test: torch.Tensor, k: int, chunk: int = 8) -> torch.Tensor:
    """(N, h, w) mean Euclidean distance to the k nearest bank rows (bank centred first)."""
    n, c, h, w = test.shape
    centre = bank.mean(0)
    b = bank - centre
    bsq = (b * b).sum(1)
    out = []
    for i in range(0, n, chunk):
        q = test[i:i + chunk].flatten(2).transpose(1, 2) - centre
        d2 = (q * q).sum(-1, keepdim=True) - 2.0 * (q @ b.t()) + bsq
        v = torch.topk(d2, k, dim=-1, largest=False).values
        out.append(v.clamp_min(0.0).sqrt().mean(-1))
    return torch.cat(out).view(n, h, w)


@torch.no_grad()
def to_map(grid: torch.Tensor, path: str, hw: tuple[int, int] = (256, 256)) -> torch.Tensor:
    if path == "full":
        up = F.interpolate(grid.unsqueeze(1), size=hw, mode="bilinear", align_corners=False).squeeze(1)
        return gaussian_blur(up, gaussian_kernel1d(4.0))
    work = (hw[0] // 4, hw[1] // 4)
    up = F.interpolate(grid.unsqueeze(1), size=work, mode="bilinear", align_corners=False).squeeze(1)
    m = gaussian_blur(up, gaussian_kernel1d(1.0))
    return F.interpolate(m.unsqueeze(1), size=hw, mode="bilinear", align_corners=False).squeeze(1)


def transform(tr: torch.Tensor, te: torch.Tensor, metric: str) -> tuple[torch.Tensor, torch.Tensor]:
    if metric == "cos":   # unit vectors: L2^2 = 2 (1 - cos), same order as 1 - cos
        return F.normalize(tr, dim=1), F.normalize(te, dim=1)
    if metric.startswith("pca"):  # L2 after a fixed projection on the top principal axes of the training patches
        rows = patchcore.memory_rows(tr)
        mu = rows.mean(0)
        _, _, v = torch.linalg.svd(rows - mu, full_matrices=False)
        p = v[: int(metric[3:])].t()
        proj = lambda f: torch.einsum("nchw,cd->ndhw", f - mu.view(1, -1, 1, 1), p)  # noqa: E731
        return proj(tr), proj(te)
    if metric == "l2z":
        rows = patchcore.memory_rows(tr)
        mu, sd = rows.mean(0).view(1, -1, 1, 1), rows.std(0).clamp_min(1e-6).view(1, -1, 1, 1)
        return (tr - mu) / sd, (te - mu) / sd
    return tr, te


def run_category(root: Path, cat: str, seed: int, names: list[str]) -> dict[str, Any]:
    cfg = TrainConfig()
    hw = cfg.model.input_hw
    fit, held, test, labels, masks = category_split(root, cat, cfg.holdout, hw)
    probe = probe_model()
    cache = str(WORK / "cache_knn")
    tr = cached_features(probe, [it.path for it in fit + held], cache, memory=True)[0]
    te = cached_features(probe, [it.path for it in test.items], cache, memory=True)[0]
    sl = block_slices(probe)
    tr, te = pick(tr, sl, (4, 10)), pick(te, sl, (4, 10))
    n_pix_img = tr.shape[2] * tr.shape[3]
    out: dict[str, Any] = {}
    coresets: dict[tuple, torch.Tensor] = {}
    for name in names:
        v = VARIANTS[name]
        t0 = time.perf_counter()
        a, b = transform(tr, te, v.metric)
        src = a if v.bank_from == "all" else a[:len(fit)]
        rows = patchcore.memory_rows(src)
        size = int(round(0.01 * 80 * n_pix_img)) if v.size == "1pct" and v.bank_from == "all" else (
            int(round(0.01 * rows.shape[0])) if v.size == "1pct" else int(v.size))
        key = (v.bank_from, size, v.metric)
        if key not in coresets:
            coresets[key] = patchcore.greedy_coreset(rows, size, seed)
        bank = rows[coresets[key]]
        grid = knn_dist(bank, b, v.k)
        maps = to_map(grid, v.path, hw)
        smax, stop = maps.flatten(1).max(1).values, topk_mean_score(maps, 0.01)
        pix = pixel_part(masks, maps)
        out[name] = {"bank": size, "image_auroc_max": image_part(labels, smax)["image_auroc"],
                     "image_auroc": image_part(labels, stop)["image_auroc"], **pix,
                     "s": round(time.perf_counter() - t0, 1)}
        print(f"{cat} {name}: I {out[name]['image_auroc_max']:.3f}/{out[name]['image_auroc']:.3f} "
              f"P {pix['pixel_auroc']:.3f} PRO {pix['aupro']:.3f} (bank {size})", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="+", choices=list(VARIANTS))
    ap.add_argument("--category", action="append")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "memory_diag.json")
    a = ap.parse_args(argv)
    torch.set_grad_enabled(False)
    names = a.only or list(VARIANTS)
    root = data_root()
    per_cat = {c: run_category(root, c, a.seed, names) for c in tqdm(a.category or CATEGORIES, desc="categories")}
    cats = list(per_cat)
    mean = {n: {k: float(np.mean([per_cat[c][n][k] for c in cats]))
                for k in ("image_auroc_max", "image_auroc", "pixel_auroc", "aupro")} for n in names}
    res = {"seed": a.seed, "categories": cats, "variants": {n: VARIANTS[n].__dict__ for n in names},
           "mean": mean, "per_category": per_cat, "machine": machine()}
    store = json.loads(a.out.read_text()) if a.out.exists() else {}
    by_seed = store.setdefault("by_seed", {})
    old = by_seed.get(str(a.seed), {})
    if old.get("categories") == cats:  # earlier variants of the same seed are kept
        for k in ("variants", "mean"):
            res[k] = old[k] | res[k]
        for c in cats:
            res["per_category"][c] = old["per_category"][c] | res["per_category"][c]
    by_seed[str(a.seed)] = res
    store["about"] = __doc__.strip().splitlines()[0] + " (benchmarks/bench_memory_diag.py)"
    a.out.write_text(json.dumps(store, indent=1))
    for n in names:
        m = mean[n]
        print(f"{n:18s} I(max) {m['image_auroc_max']:.4f} I(top1) {m['image_auroc']:.4f} "
              f"P {m['pixel_auroc']:.4f} PRO {m['aupro']:.4f}  {VARIANTS[n].note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
