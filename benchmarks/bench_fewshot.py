"""Few-shot and unified multi-class rows for the INP-Former in results/quality.json (issue 13).

    python benchmarks/bench_fewshot.py --few-shot 1 2 4 --category C --seeds 0   # per category
    python benchmarks/bench_fewshot.py --unified --seeds 0      # one model for all 4 categories
    python benchmarks/bench_fewshot.py --merge                  # -> quality.json rows + RESULTS.md

Same default INP-Former (``memory_size`` 0), same training entry point ``lineinspect train`` uses
(``training.train.train``), same fit / held-out split (seed 0: 68 fit, 12 held-out normals per
category) and the same scoring as quality.json's ``inp_former`` row (the model's own map at
256x256 and its top-1 % image score; I-AUROC, P-AUROC, AUPRO at 30 % FPR).

- ``inp_former_fewshot{K}``: trained on K of the 68 fit images (picked by the seed) plus 10
  augmented copies of each (``TrainConfig.few_shot``/``aug_copies``); the held-out 12 calibrate.
- ``inp_former_unified``: ONE model trained on the union of the 4 categories' fit images and
  calibrated on the union of their held-out images, scored on each category's test split.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_quality import all_metrics, score_cached
from benchmarks.common import RESULTS_DIR, WORK, data_root, machine, masks_at
from inference.model.inp_former import InpFormer
from inference.model_dir import load_model_dir
from training.data import hold_out, load_split
from training.features import cached_features
from training.train import TrainConfig, train

CATEGORIES = ("bsdata/ball_screw_drive", "kolektorsdd/commutator", "magnetic_tile/magnetic_tile", "mvtec_3d_ad/tire")
PER_CAT = "fewshot_runs"


def _cfg(**kw: Any) -> TrainConfig:
    return replace(TrainConfig(), cache_dir=str(WORK / "cache_fewshot"), threads=torch.get_num_threads(), **kw)


def _split(root: Path, cat: str) -> tuple[list[Path], list[Path]]:
    fit, held = hold_out(load_split(root, cat, "train").items, TrainConfig().holdout, 0)
    return [it.path for it in fit], [it.path for it in held]


def _score(model_dir: Path, root: Path, cat: str, device: str = "cpu") -> dict[str, float]:
    test = load_split(root, cat, "test")
    module: InpFormer = load_model_dir(model_dir, device=device).module
    feats = [f.to(device) for f in cached_features(module, [it.path for it in test.items], str(WORK / "cache_fewshot"))]
    maps, scores = score_cached(module, feats)
    return all_metrics(np.array([it.label for it in test.items]), scores, masks_at(test.items, module.cfg.input_hw), maps)


def run_few_shot(root: Path, cat: str, shots: list[int], seed: int, out_dir: Path, device: str = "cpu",
                 iters: int | None = None) -> None:
    fit, held = _split(root, cat)
    for k in shots:
        path = out_dir / f"fewshot{k}__{cat.replace('/', '__')}__s{seed}.json"
        if path.exists():
            continue
        mdir = WORK / "fewshot_models" / f"fs{k}_{cat.replace('/', '__')}_s{seed}"
        t0 = time.perf_counter()
        train(fit, _cfg(few_shot=k, categories=[cat], device=device, iters=iters or TrainConfig().iters), mdir, seed=seed, resume=False,
              calibration_images=held, progress=False)
        train_s = time.perf_counter() - t0
        res: dict[str, Any] = {"method": f"inp_former_fewshot{k}", "category": cat, "seed": seed, "train_s": round(train_s, 1),
               "metrics": _score(mdir, root, cat, device), "machine": machine(), "device": device}
        out_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(res, indent=1))
        print(json.dumps({k2: res[k2] for k2 in ("method", "category", "seed", "train_s")})
              + " " + " ".join(f"{m}={res['metrics'][m]:.3f}" for m in ("image_auroc", "pixel_auroc", "aupro")), flush=True)


def run_unified(root: Path, seed: int, out_dir: Path) -> None:
    fit: list[Path] = []
    held: list[Path] = []
    for cat in CATEGORIES:
        f, h = _split(root, cat)
        fit += f
        held += h
    mdir = WORK / "fewshot_models" / f"unified_s{seed}"
    t0 = time.perf_counter()
    train(fit, _cfg(categories=list(CATEGORIES)), mdir, seed=seed, resume=False, calibration_images=held, progress=False)
    train_s = time.perf_counter() - t0
    out_dir.mkdir(parents=True, exist_ok=True)
    for cat in CATEGORIES:
        res: dict[str, Any] = {"method": "inp_former_unified", "category": cat, "seed": seed, "train_s": round(train_s, 1),
               "metrics": _score(mdir, root, cat), "machine": machine()}
        (out_dir / f"unified__{cat.replace('/', '__')}__s{seed}.json").write_text(json.dumps(res, indent=1))
        print(f"unified {cat} " + " ".join(f"{m}={res['metrics'][m]:.3f}" for m in ("image_auroc", "pixel_auroc", "aupro")),
              flush=True)


def merge(in_dir: Path, quality: dict[str, Any]) -> dict[str, Any]:
    """Add the rows (mean over the 4 categories per seed, then mean and spread over the seeds that cover
    all 4) to quality.json; a row's seeds go into ``seeds_by_method`` when they are not quality.json's."""
    from benchmarks.bench_memory import KEYS

    runs = [json.loads(p.read_text()) for p in sorted(in_dir.glob("*.json"))]
    cats = quality["categories"]
    by = {(r["method"], r["category"], r["seed"]): r for r in runs}
    quality.setdefault("seeds_by_method", {})
    quality.setdefault("train_s_by_method", {})
    for m in sorted({r["method"] for r in runs}):
        seeds = sorted(s for s in {r["seed"] for r in runs if r["method"] == m} if all((m, c, s) in by for c in cats))
        if not seeds:
            continue
        per_seed = {k: [float(np.mean([by[(m, c, s)]["metrics"][k] for c in cats])) for s in seeds] for k in KEYS}
        quality["mean"][m] = {k: float(np.mean(per_seed[k])) for k in KEYS} | {"spread": {k: float(np.ptp(per_seed[k])) for k in KEYS}}
        quality["per_seed_mean"][m] = per_seed
        for c in cats:
            quality["per_category"][c][m] = {k: float(np.mean([by[(m, c, s)]["metrics"][k] for s in seeds])) for k in KEYS}
        if seeds != quality["seeds"]:
            quality["seeds_by_method"][m] = seeds
        quality["train_s_by_method"][m] = {"seconds": sorted({by[(m, c, s)]["train_s"] for c in cats for s in seeds}),
                                           "machine": by[(m, cats[0], seeds[0])]["machine"]}
    return quality


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--category", action="append")
    ap.add_argument("--few-shot", type=int, nargs="+", default=[])
    ap.add_argument("--unified", action="store_true")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--out", type=Path, default=WORK / PER_CAT)
    ap.add_argument("--merge", action="store_true")
    ap.add_argument("--device", default="cpu", help="torch device for the encoder and the head (e.g. cuda)")
    ap.add_argument("--iters", type=int, help="override the training iterations (smoke tests only)")
    a = ap.parse_args(argv)
    if a.merge:
        from benchmarks.bench_memory import write_md

        qpath = RESULTS_DIR / "quality.json"
        q = merge(a.out, json.loads(qpath.read_text()))
        qpath.write_text(json.dumps(q, indent=1))
        write_md(q)
        return 0
    root = data_root()
    for seed in a.seeds:
        for cat in a.category or []:
            run_few_shot(root, cat, a.few_shot, seed, a.out, a.device, a.iters)
        if a.unified:
            run_unified(root, seed, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
