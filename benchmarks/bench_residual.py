"""INP-Former++'s residual head on top of the quality run's trained models (issue 13's unbuilt lever).

    python benchmarks/bench_residual.py --category bsdata/ball_screw_drive --seeds 0 \\
        --models DIR/memory_models --cache-from DIR/cache_memory_s0
    python benchmarks/bench_residual.py --summary     # residual_runs/ -> benchmarks/results/residual.json
    python benchmarks/bench_residual.py --speed       # ORT batch 8 vs the encoder-only yardstick

Per category and seed, the model ``bench_memory.py`` trained (INP-Former + memory 1024, k = 3; its
reconstruction map alone is the pure INP-Former of that seed) is loaded, and ONLY the residual head
(``InpConfig.residual_head``) is trained on top, exactly as ``training.train`` does it
(``training.residual``: pseudo-anomalies from the 68 fit normals, seeded by the run's seed). Same split
and scoring as ``bench_memory.py`` (``category_split``, ``all_metrics``). Standardisation as in
``train``: the base map and the head's mask on the 12 held-out normals, the memory against a bank of
the fit normals only; the test set is then scored with the product bank (all 80 normals).

Rows: ``inp_former_res`` (pure + head), ``inp_former_mem1024k3_res`` / ``_w2_res`` (memory weight 1 / 2
+ head), ``residual_only`` (the head's mask alone: a reference), and, as a check against the quality
run, the three base rows recomputed here (``*_base``). Diagnostic rows (not candidates): ``*_reslogit``
fuse the head's logit instead of its probability.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_memory import (
    KEYS,
    category_split,
    default_config,
    fill_memory,
    finish,
    raw,
    split_features,
    time_against_encoder,
)
from benchmarks.bench_quality import all_metrics
from benchmarks.common import RESULTS_DIR, WORK, data_root, machine
from inference.model.inp_former import InpFormer, mean_std, residual_features, standardise
from inference.model_dir import load_model_dir
from training.residual import ResidualTrainConfig, train_residual_head

PER_CAT = "residual_runs"
HIDDEN = 32  # the head's hidden channels in these runs (``lineinspect train --residual-head 32``)
ROWS = ("inp_former_res", "inp_former_mem1024k3_res", "inp_former_mem1024k3_w2_res", "residual_only")


def link_cache(src: Path, dst: Path) -> None:
    """Symlink another run's feature-cache files into our own cache folder (read through, never written there)."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.glob("*.pt"):
        if not (dst / f.name).exists():
            (dst / f.name).symlink_to(f.resolve())


def copy_model(src: Path, dst: Path) -> Path:
    if not (dst / "checksums.json").is_file():
        dst.mkdir(parents=True, exist_ok=True)
        for name in ("weights.pt", "config.json", "calibration.json", "checksums.json"):
            shutil.copy2(src / name, dst / name)
    return dst


@torch.no_grad()
def head_maps(model: InpFormer, enc: list[torch.Tensor], bs: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """(probability mask, logit map) of the residual head, both (N, h, w) at ``map_hw``."""
    probs, logits = [], []
    for i in range(0, enc[0].shape[0], bs):
        out = model.head([f[i:i + bs] for f in enc])
        probs.append(model.residual_mask(out))
        lg = model.head.residual.logits(residual_features(out.targets, out.dec)).unsqueeze(1)
        logits.append(torch.nn.functional.interpolate(lg, size=model.cfg.map_hw, mode="bilinear",
                                                      align_corners=False).squeeze(1))
    return torch.cat(probs), torch.cat(logits)


def z(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Standardise ``x`` with the mean and std of ``ref`` (held-out normal pixels), as the model does."""
    return standardise(x, mean_std(ref))


def run_category(root: Path, cat: str, seeds: list[int], models: Path, cache_from: Path | None, out_dir: Path,
                 rcfg: ResidualTrainConfig, device: str = "cpu") -> None:
    cache = WORK / f"cache_residual_{cat.replace('/', '__')}"
    if cache_from is not None:
        link_cache(cache_from, cache)
    cfg = replace(default_config(), cache_dir=str(cache), categories=[cat])
    fit, held, test, labels, masks = category_split(root, cat, cfg.holdout, cfg.model.input_hw)
    probe = InpFormer(cfg.model)
    paths = {"test": [it.path for it in test.items], "held": [it.path for it in held], "fit": [it.path for it in fit]}
    test_enc, test_mem, held_enc, held_mem, fit_mem = split_features(probe, fit, held, test.items, cfg.cache_dir, "cpu")
    del probe
    for seed in seeds:
        name = f"{cat.replace('/', '__')}_s{seed}"
        mdir = copy_model(models / name, WORK / "residual_models" / name)
        module = load_model_dir(mdir, device=device).module
        rmodel = InpFormer(replace(module.cfg, residual_head=HIDDEN), backbone=module.backbone).eval()
        missing = rmodel.head.load_state_dict(module.head.state_dict(), strict=False).missing_keys
        assert all(k.startswith("residual.") for k in missing), missing
        t0 = time.perf_counter()
        summary = train_residual_head(rmodel, paths["fit"], seed, rcfg, progress=True)
        train_s = time.perf_counter() - t0
        # test: product memory (bank of all 80); held-out: a bank of the fit normals, as train() standardises
        rec, mdist = raw(module, test_enc, test_mem)
        prod = module.head.memory
        fit_only = fill_memory(module, 1024, 3, fit_mem, held_enc, held_mem, seed, False)
        h_rec, h_md = raw(module, held_enc, held_mem)
        p_test, l_test = head_maps(rmodel, test_enc)
        p_held, l_held = head_maps(rmodel, held_enc)
        out: dict[str, dict[str, float]] = {}

        def add(row: str, rawmap: torch.Tensor, rmodel: InpFormer = rmodel, out: dict = out) -> None:
            maps, scores = finish(rmodel, rawmap)
            out[row] = all_metrics(labels, scores, masks, maps)

        bases = {"inp_former": (rec, h_rec),
                 "inp_former_mem1024k3": (prod.fuse(rec, mdist, 1.0), fit_only.fuse(h_rec, h_md, 1.0)),
                 "inp_former_mem1024k3_w2": (prod.fuse(rec, mdist, 2.0), fit_only.fuse(h_rec, h_md, 2.0))}
        for b, (bt, bh) in bases.items():
            add(f"{b}_base", bt)
            add(f"{b}_res", z(bt, bh) + z(p_test, p_held))
            add(f"{b}_reslogit", z(bt, bh) + z(l_test, l_held))
        add("residual_only", p_test)
        res = {"category": cat, "seed": seed, "hidden": HIDDEN, "train_s": round(train_s, 1), **summary,
               "residual_config": rcfg.__dict__, "load_avg": list(os.getloadavg()), "machine": machine(),
               "methods": out}
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"{name}.json").write_text(json.dumps(res, indent=1))
        print(f"{cat} seed {seed} head {train_s:.0f}s " + " ".join(
            f"{k}={v['image_auroc']:.3f}/{v['pixel_auroc']:.3f}/{v['aupro']:.3f}" for k, v in out.items()), flush=True)


def add_row(q: dict[str, Any], m: str, by: dict[tuple[str, int], dict], cats: list[str], seeds: list[int]) -> None:
    """Row ``m`` into ``q``'s tables: per seed the mean over the categories, then mean and spread (max - min)
    over the seeds, and per category the mean over the seeds."""
    per_seed = {k: [float(np.mean([by[(c, s)]["methods"][m][k] for c in cats])) for s in seeds] for k in KEYS}
    q["mean"][m] = {k: float(np.mean(per_seed[k])) for k in KEYS} | {"spread": {k: float(np.ptp(per_seed[k])) for k in KEYS}}
    q["per_seed_mean"][m] = per_seed
    for c in cats:
        q["per_category"][c][m] = {k: float(np.mean([by[(c, s)]["methods"][m][k] for s in seeds])) for k in KEYS}


def merge(in_dir: Path, quality: dict[str, Any]) -> dict[str, Any]:
    """Add the residual rows (mean over the categories per seed, then mean and spread over the seeds that
    cover all of them) to a quality.json dict; a row's seeds go into ``seeds_by_method`` when they are not
    quality.json's. Only the candidate rows and ``residual_only`` are merged (the ``*_base`` / ``*_reslogit``
    rows are checks and diagnostics, kept in residual.json)."""
    runs = [json.loads(p.read_text()) for p in sorted(in_dir.glob("*.json"))]
    cats = quality["categories"]
    by = {(r["category"], int(r["seed"])): r for r in runs}
    seeds = sorted(s for s in {int(r["seed"]) for r in runs} if all((c, s) in by for c in cats))
    if not seeds:
        return quality
    quality.setdefault("seeds_by_method", {})
    quality.setdefault("train_s_by_method", {})
    for m in ROWS:
        add_row(quality, m, by, cats, seeds)
        if seeds != quality.get("seeds"):
            quality["seeds_by_method"][m] = seeds
        quality["train_s_by_method"][m] = {"seconds": sorted({by[(c, s)]["train_s"] for c in cats for s in seeds}),
                                           "machine": by[(cats[0], seeds[0])]["machine"],
                                           "note": "the residual head alone, on top of the trained model"}
    return quality


def summary(in_dir: Path) -> dict[str, Any]:
    """residual.json: every row of the runs (candidates, checks, diagnostics): mean, spread, per category."""
    runs = [json.loads(p.read_text()) for p in sorted(in_dir.glob("*.json"))]
    cats = sorted({r["category"] for r in runs})
    by = {(r["category"], int(r["seed"])): r for r in runs}
    seeds = sorted(s for s in {int(r["seed"]) for r in runs} if all((c, s) in by for c in cats))
    methods = list(by[(cats[0], seeds[0])]["methods"])
    q: dict[str, Any] = {"seeds": seeds, "categories": cats, "hidden": HIDDEN, "mean": {}, "per_seed_mean": {},
                         "per_category": {c: {} for c in cats}, "spread_note": "spread = max - min of the per-seed means",
                         "runs": {f"{c}_s{s}": {k: by[(c, s)][k] for k in ("train_s", "residual_seconds", "residual_images",
                                                                              "residual_anomalous", "residual_loss",
                                                                              "load_avg")}
                                  for c in cats for s in seeds},
                         "per_run": {f"{c}_s{s}": {m: {k: by[(c, s)]["methods"][m][k] for k in KEYS} for m in methods}
                                     for c in cats for s in seeds},
                         "machine": runs[0]["machine"], "residual_config": runs[0]["residual_config"]}
    for m in methods:
        add_row(q, m, by, cats, seeds)
    return q


def speed(rounds: int = 3, batch: int = 8) -> dict:
    """ORT fp32 images/s at ``batch``: the encoder alone (yardstick), the pure model, the pure model + head,
    memory 1024 k3, memory 1024 k3 + head (``bench_memory.time_against_encoder``: paired ratios, median
    over rounds). Random weights: the cost does not depend on them."""
    models: dict[str, InpFormer] = {}
    for name, size, hidden in (("inp_former", 0, 0), ("inp_former_res", 0, HIDDEN),
                               ("inp_former_mem1024k3", 1024, 0), ("inp_former_mem1024k3_res", 1024, HIDDEN)):
        m = InpFormer(replace(default_config(size).model, residual_head=hidden)).eval()
        if size:
            m.head.memory.fit(torch.randn(size, m.head.memory.channels))
        models[name] = m
    return time_against_encoder(models, WORK / "residual_speed", rounds, batch)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--category", action="append")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--models", type=Path, default=WORK / "memory_models",
                    help="bench_memory.py's memory_models/ (read only: each model dir is copied before use)")
    ap.add_argument("--cache-from", type=Path, help="bench_memory.py's feature cache of these seeds (linked, read only)")
    ap.add_argument("--out", type=Path, default=WORK / PER_CAT)
    ap.add_argument("--iters", type=int, default=ResidualTrainConfig.iters)
    ap.add_argument("--summary", action="store_true", help="residual_runs/ -> benchmarks/results/residual.json")
    ap.add_argument("--speed", action="store_true")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args(argv)
    if a.speed:
        res = speed(rounds=a.rounds)
        print(json.dumps(res, indent=1))
        (WORK / "residual_speed.json").write_text(json.dumps(res, indent=1))
        return 0
    if a.summary:
        q = summary(a.out)
        # earlier runs of this bench, kept as measured (each dropped for the reason given)
        variants = {"variant_iters300": ("_it300", "the same head trained 300 iterations instead of 1500 (dropped: "
                                         "still learning; on fresh pseudo-anomalies near chance)"),
                    "variant_aligned_iters300": ("_v2_aligned", "300 iterations AND the reconstruction scaled to the "
                                                 "target's length before |E - D| (dropped: worse pixel AUROC and AUPRO "
                                                 "than the plain residual at 300 iterations, seed 0)")}
        for key, (suffix, what) in variants.items():
            d = a.out.parent / f"{PER_CAT}{suffix}"
            if d.is_dir():
                v = summary(d)
                q[key] = {"what": what, "seeds": v["seeds"], "mean": v["mean"], "per_category": v["per_category"]}
        sp = WORK / "residual_speed.json"
        if sp.exists():
            q["speed"] = json.loads(sp.read_text())
        tw = WORK / "residual_train_wall.json"  # a timed `lineinspect train ... --residual-head 32` (written by hand)
        if tw.exists():
            q["train_wall"] = json.loads(tw.read_text())
        (RESULTS_DIR / "residual.json").write_text(json.dumps(q, indent=1))
        print(json.dumps({m: {k: round(v[k], 4) for k in KEYS} for m, v in q["mean"].items()}, indent=1))
        return 0
    root = data_root()
    for cat in a.category or []:
        run_category(root, cat, a.seeds, a.models, a.cache_from, a.out, replace(ResidualTrainConfig(), iters=a.iters))
    return 0


if __name__ == "__main__":
    sys.exit(main())
