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
CONTROL = "per_category_control"  # the unified row's control (run_control): never a quality.json row


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


def run_control(root: Path, seed: int, out_dir: Path) -> None:
    """The unified row's control: one default model per category, trained, calibrated and scored by this
    script's own path (``_cfg``, ``train``, ``_score``) on the same split and seed as the unified model. Its
    numbers must match quality.json's ``inp_former`` row of that seed; if they do, a gap between the unified
    model and them is the model's, not this script's scoring. Written as ``control__*`` files, which
    :func:`merge` leaves out of quality.json."""
    for cat in CATEGORIES:
        path = out_dir / f"control__{cat.replace('/', '__')}__s{seed}.json"
        if path.exists():
            continue
        fit, held = _split(root, cat)
        mdir = WORK / "fewshot_models" / f"control_{cat.replace('/', '__')}_s{seed}"
        t0 = time.perf_counter()
        train(fit, _cfg(categories=[cat]), mdir, seed=seed, resume=False, calibration_images=held, progress=False)
        res: dict[str, Any] = {"method": CONTROL, "category": cat, "seed": seed,
                               "train_s": round(time.perf_counter() - t0, 1), "metrics": _score(mdir, root, cat),
                               "machine": machine()}
        out_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(res, indent=1))
        print(f"control {cat} " + " ".join(f"{m}={res['metrics'][m]:.3f}" for m in ("image_auroc", "pixel_auroc", "aupro")),
              flush=True)


def control_summary(in_dir: Path, quality: dict[str, Any]) -> dict[str, Any]:
    """Per category and seed: the unified model, this script's per-category control, and quality.json's
    ``inp_former`` of that seed (``per_seed_per_category`` is not stored there, so the control is compared
    with the category's mean over quality.json's seeds and, for the mean of 4, with the seed's own mean)."""
    from benchmarks.bench_memory import KEYS

    runs = [json.loads(p.read_text()) for p in sorted(in_dir.glob("*.json"))]
    by = {(r["method"], r["category"], r["seed"]): r["metrics"] for r in runs}
    out: dict[str, Any] = {"seeds": {}}
    for seed in sorted({r["seed"] for r in runs if r["method"] == CONTROL}):
        if not all((m, c, seed) in by for m in (CONTROL, "inp_former_unified") for c in CATEGORIES):
            continue
        rows = {c: {"unified": {k: by[("inp_former_unified", c, seed)][k] for k in KEYS},
                    "control": {k: by[(CONTROL, c, seed)][k] for k in KEYS},
                    "quality_json_inp_former_mean_over_seeds": {k: quality["per_category"][c]["inp_former"][k]
                                                                for k in KEYS}} for c in CATEGORIES}
        mean = {w: {k: float(np.mean([rows[c][w][k] for c in CATEGORIES])) for k in KEYS} for w in ("unified", "control")}
        idx = quality["seeds"].index(seed) if seed in quality["seeds"] else None
        mean["quality_json_inp_former_this_seed"] = (
            {k: quality["per_seed_mean"]["inp_former"][k][idx] for k in KEYS} if idx is not None else None)
        out["seeds"][str(seed)] = {"per_category": rows, "mean_of_4": mean}
    return out


def merge(in_dir: Path, quality: dict[str, Any]) -> dict[str, Any]:
    """Add the rows (mean over the 4 categories per seed, then mean and spread over the seeds that cover
    all 4) to quality.json; a row's seeds go into ``seeds_by_method`` when they are not quality.json's."""
    from benchmarks.bench_memory import KEYS

    runs = [json.loads(p.read_text()) for p in sorted(in_dir.glob("*.json"))]
    cats = quality["categories"]
    by = {(r["method"], r["category"], r["seed"]): r for r in runs}
    quality.setdefault("seeds_by_method", {})
    quality.setdefault("train_s_by_method", {})
    for m in sorted({r["method"] for r in runs} - {CONTROL}):
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
    ap.add_argument("--control", action="store_true",
                    help="with --unified: also train this script's per-category control, and write "
                         "results/unified_control.json comparing the three")
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
            if a.control:
                run_control(root, seed, a.out)
    if a.unified and a.control:
        summary = control_summary(a.out, json.loads((RESULTS_DIR / "quality.json").read_text()))
        summary["machine"] = machine()
        (RESULTS_DIR / "unified_control.json").write_text(json.dumps(summary, indent=1))
        print(json.dumps({s: v["mean_of_4"] for s, v in summary["seeds"].items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
