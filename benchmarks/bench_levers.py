"""Lever sweep for INP-Former on every real category, with PatchCore variants beside it.

    python benchmarks/bench_levers.py [--device cuda] [--only NAME ...] [--category C ...] [--seeds 0 1]

Every training variant is trained once per category and seed and then scored with every anomaly-map
measure (``InpConfig.map_metric``: cos, cos_len, l2) from the same reconstruction, so the measure is
compared on identical models. PatchCore rows use the same frozen features (raw, 3x3 pooled) at both
token grids and two bank sizes. Writes ``results/levers.json`` and the ``levers`` section of
RESULTS.md. Runs on the CPU (hours) or on a GPU (minutes); the decisions it supports are relative
(same run, same device), the final defaults are then measured on the CPU by ``bench_quality.py``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS_DIR, WORK, data_root, fmt, machine, masks_at, write_section
from inference.model.inp_former import MAP_METRICS, InpConfig, InpFormer
from inference.model_dir import load_model_dir
from training import metrics, patchcore
from training.data import discover, hold_out, load_split
from training.features import cached_features
from training.train import TrainConfig, train

KEYS = ("image_auroc", "pixel_auroc", "aupro")


# The sweep's fixed starting point (the defaults when it was run), so that a variant's name keeps its
# meaning when the defaults move: 8 decoder blocks with MLP ratio 4. Today's default is blocks4_mlp2.
BASE_MODEL = {"decoder_blocks": 8, "mlp_ratio": 4.0}


def _m(**kw: object) -> TrainConfig:
    """TrainConfig = the sweep's base with model fields (``m_*``) and train fields overridden."""
    base = TrainConfig()
    base = replace(base, model=replace(base.model, **BASE_MODEL))
    model_kw = {k[2:]: v for k, v in kw.items() if k.startswith("m_")}
    train_kw = {k: v for k, v in kw.items() if not k.startswith("m_")}
    return replace(base, model=replace(base.model, **model_kw), **train_kw)


def variants() -> dict[str, TrainConfig]:
    """Training variants; every one is scored with every map metric."""
    return {
        "base": _m(),
        "center": _m(m_feature_norm="center"),
        "none": _m(m_feature_norm="none"),
        "zscore_floor": _m(m_feature_norm="zscore_floor"),
        "grid32": _m(m_token_stride=8),
        "iters1000": _m(iters=1000),
        "center_iters1000": _m(m_feature_norm="center", iters=1000),
        "none_iters1000": _m(m_feature_norm="none", iters=1000),
        "width256": _m(m_width=256),
        "size320": _m(m_input_hw=(320, 320)),
        "pool1": _m(m_local_pool=1),
        "soft_coherence": _m(soft_coherence=True),
        "inps12": _m(m_n_inps=12),
        "all_tokens": _m(train_tokens=0),
        "blocks4": _m(m_decoder_blocks=4),
        "mlp2": _m(m_mlp_ratio=2.0),
        "blocks4_mlp2": _m(m_decoder_blocks=4, m_mlp_ratio=2.0),
    }


def _metrics(labels: np.ndarray, scores: np.ndarray, masks: list[np.ndarray], maps: np.ndarray) -> dict[str, float]:
    out = {"image_auroc": metrics.image_auroc(labels, scores)}
    out["pixel_auroc"] = metrics.pixel_metrics(masks, list(maps))["pixel_auroc"]
    out["aupro"] = metrics.aupro(masks, list(maps))
    return {k: float(v) for k, v in out.items()}


@torch.no_grad()
def _score_all_metrics(module: InpFormer, feats: list[torch.Tensor], device: torch.device,
                       bs: int = 16) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    res: dict[str, tuple[list, list]] = {m: ([], []) for m in MAP_METRICS}
    for i in range(0, feats[0].shape[0], bs):
        enc = [f[i:i + bs].to(device) for f in feats]
        out = module.head(enc)
        for m in MAP_METRICS:
            amap, s = module.map_from_output(enc, out, m)
            res[m][0].append(amap.cpu().numpy())
            res[m][1].append(s.cpu().numpy())
    return {m: (np.concatenate(a), np.concatenate(b)) for m, (a, b) in res.items()}


def run_category(args: tuple) -> list[dict]:
    root, cat, names, seeds, device_name, threads, with_pc, iters = args
    torch.set_num_threads(threads)
    device = torch.device(device_name)
    cache = WORK / "cache"
    train_split = load_split(root, cat, "train")
    test = load_split(root, cat, "test")
    labels = np.array([it.label for it in test.items])
    out_rows: list[dict] = []
    all_v = variants()
    for name in names:
        tcfg = replace(all_v[name], device=device_name, cache_dir=str(cache), categories=[cat])
        if iters:
            tcfg = replace(tcfg, iters=iters)
        hw = tcfg.model.input_hw
        masks = masks_at(test.items, hw)
        for seed in seeds:
            fit, held = hold_out(train_split.items, tcfg.holdout, seed)
            out_dir = WORK / "levers" / f"{name}-{seed}" / cat.replace("/", "__")
            shutil.rmtree(out_dir, ignore_errors=True)
            t0 = time.perf_counter()
            train([it.path for it in fit], tcfg, out_dir, seed=seed, resume=False,
                  calibration_images=[it.path for it in held], progress=False)
            train_s = time.perf_counter() - t0
            lm = load_model_dir(out_dir, device=device_name)
            feats = cached_features(lm.module, [it.path for it in test.items], cache)
            for metric, (maps, scores) in _score_all_metrics(lm.module, feats, device).items():
                row = {"category": cat, "variant": name, "metric": metric, "seed": seed,
                       "train_s": round(train_s, 1), **_metrics(labels, scores, masks, maps)}
                out_rows.append(row)
                print(json.dumps(row), flush=True)
    if with_pc:
        for stride in (16, 8):
            cfg = replace(TrainConfig().model, token_stride=stride)
            model = InpFormer(cfg).to(device)
            fit, _ = hold_out(train_split.items, TrainConfig().holdout, 0)
            fit_f = cached_features(model, [it.path for it in fit], cache)
            tf = cached_features(model, [it.path for it in test.items], cache)
            masks = masks_at(test.items, cfg.input_hw)
            for frac in (0.25, 1.0):
                bank = patchcore.fit_bank(patchcore.patch_features(fit_f, already_pooled=True).to(device), frac, 0)
                pm, ps = patchcore.score(bank, patchcore.patch_features(tf, already_pooled=True).to(device), cfg.input_hw)
                row = {"category": cat, "variant": f"patchcore grid{cfg.grid[0]} bank{int(frac * 100)}%",
                       "metric": "knn", "seed": 0, "train_s": 0.0,
                       **_metrics(labels, ps.cpu().numpy(), masks, pm.cpu().numpy())}
                out_rows.append(row)
                print(json.dumps(row), flush=True)
    return out_rows


def summarise(rows: list[dict], cats: list[str]) -> list[dict]:
    """Mean over seeds per (variant, metric, category), then over categories."""
    by: dict[tuple[str, str], dict[str, list[dict]]] = {}
    for r in rows:
        by.setdefault((r["variant"], r["metric"]), {}).setdefault(r["category"], []).append(r)
    out = []
    for (v, m), per_cat in by.items():
        if not all(c in per_cat for c in cats):
            continue
        cell = {c: {k: float(np.mean([r[k] for r in per_cat[c]])) for k in KEYS} for c in cats}
        mean = {k: float(np.mean([cell[c][k] for c in cats])) for k in KEYS}
        seeds = sorted({r["seed"] for c in cats for r in per_cat[c]})
        out.append({"variant": v, "metric": m, "cells": cell, "mean": mean, "seeds": seeds,
                    "train_s": float(np.mean([r["train_s"] for c in cats for r in per_cat[c]]))})
    return sorted(out, key=lambda x: -x["mean"]["image_auroc"])


def measure_speeds(names: list[str]) -> dict[str, float]:
    """Head + anomaly map images/s per variant architecture (torch eager, batch 8, round-robin median;
    see bench_quality.head_speeds); training-only variants share their architecture's figure."""
    from benchmarks.bench_quality import head_speeds

    archs: dict[str, InpConfig] = {}
    for n in names:
        archs.setdefault(json.dumps(variants()[n].model.to_dict(), sort_keys=True), variants()[n].model)
    speed_by_arch = head_speeds({k: v for k, v in archs.items()})
    return {n: round(speed_by_arch[json.dumps(variants()[n].model.to_dict(), sort_keys=True)], 1) for n in names}


def write_md(summary: list[dict], cats: list[str], meta: str, speeds: dict[str, float] | None = None) -> None:
    speeds = speeds or {}
    short = [c.split("/")[-1] for c in cats]
    lines = [f"## Lever sweep, all map measures (`bench_levers.py`, {time.strftime('%Y-%m-%d')})", "", meta, "",
             "| variant | map | seeds | " + " | ".join(short) + " | mean I-AUROC | mean P-AUROC | mean AUPRO | head img/s |",
             "|---" * (len(cats) + 7) + "|"]
    for s in summary:
        cells = [" / ".join(fmt(s["cells"][c][k], 2) for k in KEYS) for c in cats]
        metric = s["metric"] if s["metric"] in MAP_METRICS or s["metric"] == "knn" else f"{s['metric']} (since removed)"
        lines.append(f"| {s['variant']} | {metric} | {len(s['seeds'])} | " + " | ".join(cells)
                     + f" | **{fmt(s['mean']['image_auroc'])}** | {fmt(s['mean']['pixel_auroc'])} | {fmt(s['mean']['aupro'])} | "
                     f"{fmt(speeds.get(s['variant']), 1)} |")
    if speeds:
        lines += ["", "head img/s (`--speed`): INP head + anomaly map on encoder features, torch eager, batch 8, all "
                  "architectures timed round-robin in one process (median of 7 rounds); variants that change only "
                  "training share their architecture's figure. The encoder (about the same cost for every row) is "
                  "not included; ONNX Runtime figures for the default are in the engines section."]
    write_section("levers", "\n".join(lines))
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--only", nargs="*", help="training variants to run (default: all)")
    ap.add_argument("--category", action="append")
    ap.add_argument("--seeds", nargs="*", type=int, default=[0])
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads per category process")
    ap.add_argument("--procs", type=int, default=1, help="categories run in parallel processes")
    ap.add_argument("--no-patchcore", action="store_true")
    ap.add_argument("--iters", type=int, default=0, help="override every variant's iterations (smoke runs)")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "levers.json")
    ap.add_argument("--report", action="store_true", help="only rewrite the RESULTS.md section from --out")
    ap.add_argument("--speed", action="store_true", help="(re)measure each variant's head img/s, then --report")
    a = ap.parse_args(argv)
    root = data_root()
    cats = a.category or discover(root)
    if a.report or a.speed:
        d = json.loads(a.out.read_text())
        if a.speed:
            d["speeds"] = measure_speeds(sorted({r["variant"] for r in d["rows"]} & set(variants())))
            a.out.write_text(json.dumps(d, indent=1))
        write_md(summarise(d["rows"], cats), cats, d["meta"], d.get("speeds"))
        return 0
    names = a.only or list(variants())
    unknown = set(names) - set(variants())
    if unknown:
        ap.error(f"unknown variants {sorted(unknown)}; known: {list(variants())}")
    jobs = [(root, c, names, a.seeds, a.device, a.threads, not a.no_patchcore, a.iters) for c in cats]
    t0 = time.perf_counter()
    if a.procs > 1:
        with mp.get_context("spawn").Pool(a.procs) as pool:
            rows = [r for rs in pool.map(run_category, jobs) for r in rs]
    else:
        rows = [r for j in jobs for r in run_category(j)]
    prev = json.loads(a.out.read_text()) if a.out.exists() else {}
    old, speeds = prev.get("rows", []), prev.get("speeds")
    keep = {(r["variant"], r["metric"], r["category"], r["seed"]): r for r in old}
    keep.update({(r["variant"], r["metric"], r["category"], r["seed"]): r for r in rows})
    rows = list(keep.values())
    dev = torch.cuda.get_device_name(0) if a.device.startswith("cuda") else "cpu"
    meta = (f"{machine()}, device {dev}; {len(cats)} categories, {a.procs} category process(es) x {a.threads} torch "
            f"thread(s); last invocation {time.perf_counter() - t0:.0f} s (rows of earlier invocations are kept). "
            "Each variant changes one thing against the defaults of the time of its run (`variants()`; the rows up to "
            "this section's date were trained with 8 decoder blocks, MLP ratio 4, 200 iterations), and every trained "
            "model is scored with each map measure; cells are I-AUROC / P-AUROC / AUPRO (mean over seeds), pixel "
            "metrics at the model input size. Seeds change the head's initialisation and the batches; on one "
            "configuration three seeds span 0.035 of mean I-AUROC, so single-seed differences below that are noise.")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    summary = summarise(rows, cats)
    a.out.write_text(json.dumps({"meta": meta, "rows": rows, "summary": summary, "speeds": speeds}, indent=1))
    write_md(summary, cats, meta, speeds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
