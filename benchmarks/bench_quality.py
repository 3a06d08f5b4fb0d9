"""INP-Former lever sweep (normalisation, then cost) and the scoring helpers the quality benchmarks share.

    python benchmarks/bench_quality.py --sweep    # lever sweep -> RESULTS.md sweep section + results/sweep.json
    python benchmarks/bench_quality.py --sweep --speed   # (re)measure every variant's head speed

The three-seed comparison against the strongest kNN banks (``results/quality.json``, RESULTS.md's
quality section, README's table) is ``bench_memory.py`` + ``bench_knn.py`` + ``bench_fewshot.py``
(``run_all.sh quality``); this script's old single-seed mode, which wrote an older quality.json schema
over that file, is gone. Features are cached once per backbone/size/category under benchmarks/_work;
pixel metrics and AUPRO are computed at the model input resolution (masks resized nearest).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS_DIR, WORK, data_root, fmt, machine, masks_at, write_section
from inference.model.inp_former import InpConfig, InpFormer
from inference.model_dir import load_model_dir
from training import (
    metrics,
)
from training.data import discover, hold_out, load_split
from training.features import cached_features
from training.train import TrainConfig, train


def all_metrics(labels: np.ndarray, scores: np.ndarray, masks: list[np.ndarray], maps: np.ndarray) -> dict[str, float]:
    out = {"image_auroc": metrics.image_auroc(labels, scores), "image_ap": metrics.image_ap(labels, scores),
           "image_f1_max": metrics.f1_max(labels, scores)}
    out.update(metrics.pixel_metrics(masks, list(maps)))
    out["aupro"] = metrics.aupro(masks, list(maps))
    return {k: float(v) for k, v in out.items()}


@torch.no_grad()
def score_cached(module: InpFormer, feats: list[torch.Tensor], bs: int = 16) -> tuple[np.ndarray, np.ndarray]:
    maps, scores = [], []
    for i in range(0, feats[0].shape[0], bs):
        m, s = module.score_features([f[i:i + bs] for f in feats])
        maps.append(m.cpu().numpy())
        scores.append(s.cpu().numpy())
    return np.concatenate(maps), np.concatenate(scores)


def run_category(root: Path, cat: str, tcfg: TrainConfig, iters: int, seed: int, cache: Path, out_root: Path) -> dict:
    train_split = load_split(root, cat, "train")
    fit, held = hold_out(train_split.items, tcfg.holdout, seed)
    test = load_split(root, cat, "test")
    hw = tcfg.model.input_hw
    labels = test.labels() if callable(getattr(test, "labels", None)) else np.array([it.label for it in test.items])
    masks = masks_at(test.items, hw)
    cfg = replace(tcfg, cache_dir=str(cache), categories=[cat])
    out_dir = out_root / cat.replace("/", "__")
    shutil.rmtree(out_dir, ignore_errors=True)
    t0 = time.perf_counter()
    train([it.path for it in fit], cfg, out_dir, iters=iters, seed=seed, resume=False,
          calibration_images=[it.path for it in held], progress=False)
    train_s = time.perf_counter() - t0
    lm = load_model_dir(out_dir)
    test_feats = cached_features(lm.module, [it.path for it in test.items], cache)
    maps, scores = score_cached(lm.module, test_feats)
    res = {"category": cat, "inp_former": all_metrics(labels, scores, masks, maps), "train_s": round(train_s, 1),
           "threshold": lm.threshold}
    return res


def mean_of(rows: list[dict], method: str, key: str) -> float:
    return float(np.mean([r[method][key] for r in rows]))


# ---------------------------------------------------------------------------------------------
# Lever sweep: normalisation first, then cost (width, decoder depth, grid) on the best normalisation.
SWEEP_KEYS = ("image_auroc", "pixel_auroc", "aupro")


def base_config(norm: str) -> TrainConfig:
    """The sweep's starting point: the 32x32 grid (stride 8) it was measured on, whatever today's default."""
    base = TrainConfig()
    return replace(base, model=replace(base.model, feature_norm=norm, token_stride=8))


def sweep_stage1() -> list[tuple[str, TrainConfig]]:
    return [("zscore", base_config("zscore")), ("center", base_config("center")),
            ("zscore_floor", base_config("zscore_floor"))]


def sweep_stage2(best: str) -> list[tuple[str, TrainConfig]]:
    b = base_config(best)
    m = b.model
    return [(f"{best}, width 64", replace(b, model=replace(m, width=64))),
            (f"{best}, 4 decoder blocks", replace(b, model=replace(m, decoder_blocks=4))),
            (f"{best}, grid 16x16", replace(b, model=replace(m, token_stride=16))),
            # the two cheapest levers that each stayed within noise, together
            (f"{best}, grid 16x16, 4 decoder blocks", replace(b, model=replace(m, token_stride=16, decoder_blocks=4)))]


def pick_best(done: dict, names: list[str], noise: float = 0.01) -> str:
    """Highest mean image AUROC; among those within ``noise`` of it, the highest mean pixel AUROC."""
    have = [n for n in names if n in done]
    if not have:
        raise ValueError("no stage-1 results yet")
    mi = {n: done[n]["mean"]["image_auroc"] for n in have}
    top = max(mi.values())
    near = [n for n in have if mi[n] >= top - noise]
    return max(near, key=lambda n: (done[n]["mean"]["pixel_auroc"], done[n]["mean"]["aupro"]))


@torch.no_grad()
def head_speeds(models: dict[str, InpConfig], rounds: int = 7, batch: int = 8) -> dict[str, float]:
    """Head + anomaly map images/s per architecture on encoder features of a random batch, timed
    round-robin (one batch per model per round, median over rounds) so that load from other work on
    the shared cores hits every variant alike. Weights do not change the cost, so none are loaded."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, 256, 256, generator=gen)
    built = {}
    for name, cfg in models.items():
        m = InpFormer(cfg).eval()
        feats = m.encode(torch.nn.functional.interpolate(x, size=cfg.input_hw, mode="bilinear"))
        m.score_features(feats)  # warm-up
        built[name] = (m, feats)
    ts: dict[str, list[float]] = {n: [] for n in built}
    for _ in range(rounds):
        for name, (m, feats) in built.items():
            t = time.perf_counter()
            m.score_features(feats)
            ts[name].append(time.perf_counter() - t)
    return {n: batch / float(np.median(v)) for n, v in ts.items()}


def measure_sweep_speeds(cats: list[str]) -> None:
    out_json = RESULTS_DIR / "sweep.json"
    done = json.loads(out_json.read_text())
    speeds = head_speeds({n: InpConfig.from_dict(v["model"]) for n, v in done.items()})
    for n, v in done.items():
        v["mean"]["head_images_per_s"] = round(speeds[n], 1)
        v["speed_machine"] = machine()
    out_json.write_text(json.dumps(done, indent=1))
    write_sweep_md(done, cats)


def sweep_variant(root: Path, cats: list[str], name: str, cfg: TrainConfig, seed: int) -> dict:
    cache = WORK / "cache"
    rows = []
    for cat in cats:
        r = run_category(root, cat, cfg, cfg.iters, seed, cache,
                         out_root=WORK / "sweep_models" / name.replace(" ", "_").replace(",", ""))
        rows.append(r)
        x = r["inp_former"]
        print(f"[{name}] {cat}: I {x['image_auroc']:.3f} P {x['pixel_auroc']:.3f} PRO {x['aupro']:.3f} "
              f"train {r['train_s']} s", flush=True)
    mean = {k: mean_of(rows, "inp_former", k) for k in SWEEP_KEYS}
    mean["train_s"] = float(np.mean([r["train_s"] for r in rows]))
    return {"model": cfg.model.to_dict(), "iters": cfg.iters, "rows": rows, "mean": mean}


def run_sweep(root: Path, cats: list[str], seed: int, only: list[str] | None) -> None:
    out_json = RESULTS_DIR / "sweep.json"
    done = json.loads(out_json.read_text()) if out_json.exists() else {}
    variants = sweep_stage1()
    s1 = [n for n, _ in variants]
    if any(n in done for n in s1):
        variants += sweep_stage2(pick_best(done, s1))
    for name, cfg in variants:
        if only is not None and name not in only:
            continue
        res = sweep_variant(root, cats, name, cfg, seed)
        res["machine"] = machine()
        # re-read before writing: several sweep processes may share the file (one variant each)
        done = json.loads(out_json.read_text()) if out_json.exists() else {}
        if name in done:  # a run limited by --category adds its rows to the variant's earlier ones
            rows = {r["category"]: r for r in done[name]["rows"]}
            rows.update({r["category"]: r for r in res["rows"]})
            res["rows"] = list(rows.values())
            res["mean"] = {k: mean_of(res["rows"], "inp_former", k) for k in SWEEP_KEYS}
            res["mean"]["train_s"] = float(np.mean([r["train_s"] for r in res["rows"]]))
        done[name] = res
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(done, indent=1))
        write_sweep_md(done, cats)


def write_sweep_md(done: dict, cats: list[str]) -> None:
    short = [c.split("/")[-1] for c in cats]
    lines = [f"## INP-Former lever sweep ({time.strftime('%Y-%m-%d')})", "",
             "`python benchmarks/bench_quality.py --sweep [--only NAME ...] [--category C ...]`, then `--sweep --speed`; "
             "x86_64, 2 shared cores (other engineers' benchmarks ran at the same time, load 4-7), torch 1 thread per "
             "process, up to 4 sweep processes at once, so train s is indicative only. Seed 0, all 4 real categories, "
             "200 iters x batch 8, trained on the cached 32x32 (or 16x16) encoder features. Base = the defaults before this "
             "sweep (lite0, 256x256, grid 32x32, 3x3 pooled, width 128, 8 decoder blocks, z-score). Stage 1 compares the "
             "feature normalisation (`InpConfig.feature_norm`); stage 2 cheapens the best one. Decision: highest mean "
             "I-AUROC, then P-AUROC/AUPRO, and the cheaper model when within ~0.01. Cells: I-AUROC / P-AUROC / AUPRO. "
             "head img/s (`--speed`): head + anomaly map only, torch eager, 1 thread, batch 8, all variants in one "
             "process, timed round-robin (median of 7 rounds).", "",
             "| variant | " + " | ".join(short) + " | mean I-AUROC | mean P-AUROC | mean AUPRO | train s | head img/s |",
             "|---" * (len(cats) + 6) + "|"]
    notes = []
    for name, v in done.items():
        rows = {r["category"]: r for r in v["rows"]}
        if not all(c in rows for c in cats):
            continue
        cells = [" / ".join(fmt(rows[c]["inp_former"][k], 2) for k in SWEEP_KEYS) for c in cats]
        m = v["mean"]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | **{fmt(m['image_auroc'])}** | {fmt(m['pixel_auroc'])} | "
                     f"{fmt(m['aupro'])} | {m['train_s']:.0f} | {fmt(m.get('head_images_per_s'), 1)} |")
        notes += [f"{name}: {v[k]}." for k in ("source", "note") if k in v]
    if notes:
        lines += [""] + notes
    write_section("sweep", "\n".join(lines))
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sweep", action="store_true", help="run the lever sweep (this script's one job)")
    ap.add_argument("--only", nargs="*", help="sweep variant names to (re)run (default: all)")
    ap.add_argument("--category", action="append", help="limit to these categories")
    ap.add_argument("--speed", action="store_true", help="sweep: (re)measure every variant's head img/s")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args(argv)
    if not a.sweep:
        ap.error("this script runs the lever sweep (--sweep); the three-seed quality comparison is "
                 "benchmarks/bench_memory.py + bench_knn.py (bash benchmarks/run_all.sh quality)")
    if a.threads:
        torch.set_num_threads(a.threads)
    cats = a.category or discover(data_root())
    if a.speed:
        measure_sweep_speeds(cats)
    else:
        run_sweep(data_root(), cats, a.seed, a.only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
