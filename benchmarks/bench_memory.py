"""Three-seed quality run: INP-Former, INP-Former + extrinsic memory, and the strongest kNN banks,
all on the same EfficientNet-Lite0 features (issue 13).

    python benchmarks/bench_memory.py --category bsdata/ball_screw_drive --seeds 0 1 2   # one process per category
    python benchmarks/bench_memory.py --aggregate      # per-category files -> results/quality.json + RESULTS.md

Per category and seed, ONE model is trained the way ``lineinspect train`` does (``memory_size`` 1024):
its own output is the ``inp_former_mem1024`` row; its reconstruction map alone is exactly what the pure
INP-Former with the same seed produces (the memory is filled after training, from its own generator),
so it is the ``inp_former`` row. Other rows re-fuse the same raw maps (memory weight 2, memory alone,
a 512-entry coreset). The fit / held-out split is fixed (seed 0) so every image is encoded once and its
features are reused across seeds; the seed varies the head's initialisation and batches, the coreset
start and projection, and the kNN sample.

kNN yardstick (the issue's configuration): memory features of ALL training images (fit + held-out),
a random 20,000 of their patches, k = 1, map upsampled to the input and blurred (sigma 4); image score
= max (``knn_r20k``) or mean of the top 1 % (``knn_r20k_top1``).

Decision rule (written before the run): a candidate wins if its mean over the 4 categories and 3 seeds
of I-AUROC, P-AUROC and AUPRO are each >= the best ``knn_*`` mean of that metric; among winners the
cheaper one (pure < mem512 < mem1024; weight changes cost nothing) unless a dearer one is better by more
than the seed spread on a metric; ``memory_only`` is reported, never a candidate (not an INP-Former).
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

from benchmarks.bench_quality import all_metrics
from benchmarks.common import RESULTS_DIR, WORK, data_root, fmt, machine, masks_at, write_section
from inference.model.anomaly_map import gaussian_blur, gaussian_kernel1d, topk_mean_score
from inference.model.inp_former import ExtrinsicMemory, InpFormer
from inference.model_dir import load_model_dir
from training import patchcore
from training.data import hold_out, load_split
from training.features import cached_features
from training.train import TrainConfig, train

KEYS = ("image_auroc", "pixel_auroc", "aupro")
CANDIDATES = ("inp_former", "inp_former_mem512", "inp_former_mem1024", "inp_former_mem1024_w2")
PER_CAT = "memory_runs"


def default_config(memory_size: int = 1024) -> TrainConfig:
    base = TrainConfig()
    return replace(base, model=replace(base.model, memory_size=memory_size))


@torch.no_grad()
def raw(module: InpFormer, enc: list[torch.Tensor], mem: torch.Tensor, bs: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    rs, ms = [], []
    for i in range(0, mem.shape[0], bs):
        r, m = module.raw_maps([f[i:i + bs] for f in enc], mem[i:i + bs])
        rs.append(r)
        ms.append(m)
    return torch.cat(rs), torch.cat(ms)


@torch.no_grad()
def finish(module: InpFormer, rawmap: torch.Tensor, bs: int = 64) -> tuple[np.ndarray, np.ndarray]:
    maps, scores = [], []
    for i in range(0, rawmap.shape[0], bs):
        m, s = module.finish(rawmap[i:i + bs])
        maps.append(m.cpu().numpy())
        scores.append(s.cpu().numpy())
    return np.concatenate(maps), np.concatenate(scores)


@torch.no_grad()
def knn_rows(train_mem: torch.Tensor, test_mem: torch.Tensor, hw: tuple[int, int], seed: int, n_bank: int = 20000,
             chunk: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(maps, max scores, top-1 % scores) of the random-20k, k=1 bank."""
    rows = patchcore.memory_rows(train_mem)
    g = torch.Generator().manual_seed(seed)
    bank = rows[torch.randperm(rows.shape[0], generator=g)[:n_bank].to(rows.device)]
    mem = ExtrinsicMemory(bank.shape[0], bank.shape[1]).to(rows.device)
    mem.fit(bank)
    kern = gaussian_kernel1d(4.0).to(rows.device)
    maps, smax, stop = [], [], []
    for i in range(0, test_mem.shape[0], chunk):
        d = mem.distance(test_mem[i:i + chunk]).unsqueeze(1)
        up = torch.nn.functional.interpolate(d, size=hw, mode="bilinear", align_corners=False).squeeze(1)
        a = gaussian_blur(up, kern)
        maps.append(a.cpu().numpy())
        smax.append(a.flatten(1).max(1).values.cpu().numpy())
        stop.append(topk_mean_score(a, 0.01).cpu().numpy())
    return np.concatenate(maps), np.concatenate(smax), np.concatenate(stop)


def category_split(root: Path, cat: str, holdout: int, hw: tuple[int, int]) -> tuple[list, list, Any, np.ndarray, np.ndarray]:
    """The one split every quality row is scored on: fit / held-out normals (fixed draw 0), the test set,
    its labels and its ground-truth masks at model resolution."""
    fit, held = hold_out(load_split(root, cat, "train").items, holdout, 0)
    test = load_split(root, cat, "test")
    return fit, held, test, np.array([it.label for it in test.items]), masks_at(test.items, hw)


def run_category(root: Path, cat: str, seeds: list[int], device: str, out_dir: Path, iters: int | None = None) -> dict:
    cfg = replace(default_config(), cache_dir=str(WORK / "cache_memory"), categories=[cat], device=device)
    cfg = replace(cfg, iters=iters or cfg.iters)
    hw = cfg.model.input_hw
    fit, held, test, labels, masks = category_split(root, cat, cfg.holdout, hw)
    probe = InpFormer(cfg.model).to(device)
    t0 = time.perf_counter()
    test_paths = [it.path for it in test.items]
    test_enc = [f.to(device) for f in cached_features(probe, test_paths, cfg.cache_dir)]
    test_mem = cached_features(probe, test_paths, cfg.cache_dir, memory=True)[0].to(device)
    held_enc = [f.to(device) for f in cached_features(probe, [it.path for it in held], cfg.cache_dir)]
    held_mem = cached_features(probe, [it.path for it in held], cfg.cache_dir, memory=True)[0].to(device)
    fit_mem = cached_features(probe, [it.path for it in fit], cfg.cache_dir, memory=True)[0].to(device)
    encode_s = time.perf_counter() - t0
    del probe
    res: dict = {"category": cat, "n_fit": len(fit), "n_held": len(held), "n_test": len(test.items),
                 "encode_s": round(encode_s, 1), "seeds": {}}
    for seed in seeds:
        mdir = WORK / "memory_models" / f"{cat.replace('/', '__')}_s{seed}"
        t1 = time.perf_counter()
        train([it.path for it in fit], cfg, mdir, iters=cfg.iters, seed=seed, resume=False,
              calibration_images=[it.path for it in held], progress=False)
        train_s = time.perf_counter() - t1
        module = load_model_dir(mdir, device=device).module
        rec, mdist = raw(module, test_enc, test_mem)
        m1024 = module.head.memory
        out: dict[str, dict] = {}

        def add(name: str, rawmap: torch.Tensor, module: InpFormer = module, out: dict = out) -> None:
            maps, scores = finish(module, rawmap)
            out[name] = all_metrics(labels, scores, masks, maps)

        add("inp_former", rec)
        add("inp_former_mem1024", m1024.fuse(rec, mdist, 1.0))
        add("inp_former_mem1024_w2", m1024.fuse(rec, mdist, 2.0))
        add("memory1024_only", mdist)
        # a 512-entry coreset from the same patches, standardised the same way
        rows = patchcore.memory_rows(fit_mem)
        m512 = ExtrinsicMemory(512, rows.shape[1]).to(device)
        m512.fit(rows[patchcore.greedy_coreset(rows.cpu(), 512, seed).to(device)])
        module.head.memory = m512
        hr, hm = raw(module, held_enc, held_mem)
        m512.fit_stats(hr, hm)
        _, md512 = raw(module, test_enc, test_mem)
        add("inp_former_mem512", m512.fuse(rec, md512, 1.0))
        kmaps, kmax, ktop = knn_rows(torch.cat([fit_mem, held_mem]), test_mem, hw, seed)
        out["knn_r20k"] = all_metrics(labels, kmax, masks, kmaps)
        out["knn_r20k_top1"] = all_metrics(labels, ktop, masks, kmaps)
        res["seeds"][str(seed)] = {"train_s": round(train_s, 1), "methods": out}
        print(f"{cat} seed {seed} train {train_s:.0f}s " + " ".join(
            f"{k}={v['image_auroc']:.3f}/{v['pixel_auroc']:.3f}/{v['aupro']:.3f}" for k, v in out.items()), flush=True)
    res["machine"] = machine() + (f", {torch.cuda.get_device_name()}" if device.startswith("cuda") else "")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{cat.replace('/', '__')}.json").write_text(json.dumps(res, indent=1))
    return res


def aggregate(in_dir: Path, extra: dict) -> dict:
    runs = [json.loads(p.read_text()) for p in sorted(in_dir.glob("*.json"))]
    if not runs:
        raise SystemExit(f"no per-category results under {in_dir}")
    seeds = sorted(set.intersection(*(set(r["seeds"]) for r in runs)), key=int)
    methods = list(runs[0]["seeds"][seeds[0]]["methods"])
    # per seed: mean over categories; then mean and spread (max - min) over seeds
    per_seed = {m: {k: [float(np.mean([r["seeds"][s]["methods"][m][k] for r in runs])) for s in seeds] for k in KEYS}
                for m in methods}
    mean: dict[str, dict[str, Any]] = {m: {k: float(np.mean(per_seed[m][k])) for k in KEYS} | {"spread": {k: float(np.ptp(per_seed[m][k])) for k in KEYS}}
            for m in methods}
    per_cat = {r["category"]: {m: {k: float(np.mean([r["seeds"][s]["methods"][m][k] for s in seeds])) for k in KEYS}
                               for m in methods} for r in runs}
    bar = {k: max(mean[m][k] for m in methods if m.startswith("knn_")) for k in KEYS}
    verdict = {m: {k: round(mean[m][k] - bar[k], 4) for k in KEYS} for m in CANDIDATES if m in mean}
    winners = [m for m in CANDIDATES if m in verdict and all(v >= 0 for v in verdict[m].values())]
    return {"seeds": [int(s) for s in seeds], "categories": [r["category"] for r in runs], "mean": mean,
            "per_seed_mean": per_seed, "per_category": per_cat, "knn_bar": bar, "margin_vs_bar": verdict,
            "winners": winners, "train_s": {r["category"]: [r["seeds"][s]["train_s"] for s in seeds] for r in runs},
            "machine": runs[0]["machine"], **extra}


def speed(rounds: int = 3, batch: int = 8) -> dict:
    """ORT fp32 images/s at ``batch`` of the encoder alone (bench_engines' yardstick), the pure model and
    the memory models, timed round-robin in one process (median of ``rounds``) so that load from other
    work hits all alike. Weights do not change the cost, so the banks hold random rows."""
    from benchmarks.bench_engines import THREADS, _rate
    from inference.engines.onnx_engine import make_session
    from inference.model.backbones import FrozenBackbone
    from inference.onnx_export import export_module

    out_dir = WORK / "memory_speed"
    hw = default_config().model.input_hw
    models: dict[str, InpFormer] = {}
    for name, size in (("inp_former", 0), ("inp_former_mem512", 512), ("inp_former_mem1024", 1024)):
        m = InpFormer(default_config(size).model).eval()
        if size:
            m.head.memory.fit(torch.randn(size, int(m.head.memory.bank.shape[1])))
        models[name] = m
    pure = models["inp_former"]

    class _Enc(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone: FrozenBackbone = pure.backbone

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return tuple(self.backbone(x))

    paths = {"encoder only (yardstick)": export_module(_Enc(), out_dir / "encoder.onnx", hw,
                                                       tuple(f"f{i}" for i in range(len(pure.backbone.blocks))))}
    for name, m in models.items():
        paths[name] = export_module(m, out_dir / f"{name}.onnx", hw, ("map", "score"))
    sessions = {n: make_session(p, THREADS) for n, p in paths.items()}
    x = np.random.default_rng(0).random((batch, 3, *hw), dtype=np.float32)
    rates: dict[str, list[float]] = {n: [] for n in sessions}
    for _ in range(rounds):
        for n, sess in sessions.items():
            rates[n].append(_rate(lambda a, s=sess: s.run(None, {"images": a}), x))
    med = {n: float(np.median(v)) for n, v in rates.items()}
    yard = med["encoder only (yardstick)"]
    return {"batch": batch, "threads": THREADS, "images_per_s": med, "ratio_to_yardstick": {n: v / yard for n, v in med.items()},
            "machine": machine()}


LABELS = {
    "inp_former": "INP-Former (default, pure)",
    "inp_former_mem512": "INP-Former + extrinsic memory 512",
    "inp_former_mem1024": "INP-Former + extrinsic memory 1024 (weight 1)",
    "inp_former_mem1024_w2": "INP-Former + extrinsic memory 1024, memory weight 2",
    "memory1024_only": "memory 1024 alone (reference, not an INP-Former)",
    "knn_r20k": "kNN, random 20k bank, k=1, max score (issue's yardstick)",
    "knn_r20k_top1": "kNN, random 20k bank, k=1, top-1 % score",
    "knn_r20k_rw": "kNN, random 20k bank, k=1, PatchCore-reweighted max score (9 neighbours)",
    "knn_r20k_k3": "kNN, random 20k bank, mean of 3 nearest, max score",
    "knn_b4_7_10_r20k": "kNN, blocks 4+7+10, random 20k bank, k=1, max score",
    "knn_b4_7_10_r20k_top1": "kNN, blocks 4+7+10, random 20k bank, k=1, top-1 % score",
    "knn_cs1": "kNN, greedy coreset 1 % (819), k=1, max score",
    "knn_cs1_top1": "kNN, greedy coreset 1 %, k=1, top-1 % score",
    "knn_cs1_rw": "kNN, greedy coreset 1 %, k=1, PatchCore-reweighted max score",
    "knn_cs1_k3": "kNN, greedy coreset 1 %, mean of 3 nearest, max score",
    "knn_cs10": "kNN, greedy coreset 10 % (8192), k=1, max score (PatchCore's default bank)",
    "knn_cs10_top1": "kNN, greedy coreset 10 %, k=1, top-1 % score",
    "knn_cs10_rw": "kNN, greedy coreset 10 %, k=1, PatchCore-reweighted max score",
    "knn_cs10_k3": "kNN, greedy coreset 10 %, mean of 3 nearest, max score",
    "inp_former_fewshot1": "INP-Former default, few-shot 1 (+10 augmented copies)",
    "inp_former_fewshot2": "INP-Former default, few-shot 2 (+10 augmented copies each)",
    "inp_former_fewshot4": "INP-Former default, few-shot 4 (+10 augmented copies each)",
    "inp_former_unified": "INP-Former default, ONE unified model for all 4 categories",
}


def write_md(q: dict) -> None:
    cats = q["categories"]
    short = [c.split("/")[-1] for c in cats]
    lines = [f"## Quality: INP-Former (+ extrinsic memory) vs the strongest kNN bank ({time.strftime('%Y-%m-%d')})", "",
             (f"`python benchmarks/bench_memory.py --category C --seeds 0 1 2` (one process per category), then "
             f"`--speed` and `--aggregate`. Accuracy run on {q['machine']} (a lent GPU: the 3-seed run did not fit the "
             "2 shared cores; the numbers do not depend on the device beyond float round-off). Seeds "
             f"{q['seeds']}; every row is the mean over the 4 categories, then the mean over seeds; spread = max - min "
             "of the per-seed means. Same EfficientNet-Lite0 features at 256x256 for all; the fit / held-out split "
             "(68 / 12 normals) is fixed, the seed varies initialisation, batches, coreset start and kNN sample. "
             "The kNN bank uses all 80 training normals; the INP-Former rows train on the 68 and standardise on the 12. "
             "Pixel metrics and AUPRO (30 % FPR) at 256x256."), "",
             ("Decision rule (written in bench_memory.py before the run): a candidate wins if its mean I-AUROC, P-AUROC "
             "and AUPRO are each >= the best kNN row's mean of that metric; among winners the cheaper."), "",
             "| method | I-AUROC | P-AUROC | AUPRO | " + " | ".join(f"{c} I / P / PRO" for c in short) + " |",
             "|---" * (4 + len(cats)) + "|"]
    by_m = q.get("seeds_by_method", {})
    for m, v in q["mean"].items():
        if m in by_m:
            v = v | {"_seeds": by_m[m]}
        cells = [" / ".join(fmt(q["per_category"][c][m][k], 3) for k in KEYS) for c in cats]
        note = f", seeds {v['_seeds']}" if "_seeds" in v else ""
        lines.append(f"| {LABELS.get(m, m)} (`{m}`{note}) | " + " | ".join(f"{fmt(v[k])} ± {v['spread'][k]:.3f}" for k in KEYS)
                     + " | " + " | ".join(cells) + " |")
    bar = q["knn_bar"]
    bm = q.get("knn_bar_method", {})
    lines += ["", (f"Bar (best kNN per metric): I-AUROC {bar['image_auroc']:.4f}, P-AUROC {bar['pixel_auroc']:.4f}, "
              f"AUPRO {bar['aupro']:.4f}" + (f" (from {', '.join(f'`{bm[k]}`' for k in KEYS)})" if bm else "")
              + ". Margins (candidate - bar):"), ""]
    for m, d in q["margin_vs_bar"].items():
        lines.append(f"- `{m}`: " + ", ".join(f"{k} {d[k]:+.4f}" for k in KEYS))
    lines += ["", "Winners under the rule: " + (", ".join(q["winners"]) if q["winners"] else
                                                "**none** - the default stays the pure INP-Former (`memory_size` 0).")]
    sp = q.get("speed")
    if sp:
        lines += ["", f"Speed (ONNX Runtime fp32, batch {sp['batch']}, {sp['threads']} threads, {sp['machine']}, "
                  "round-robin in one process): " + ", ".join(
                      f"{n} {v:.1f} img/s ({sp['ratio_to_yardstick'][n]:.2f}x)" for n, v in sp["images_per_s"].items()) + "."]
    if by_m:
        lines += ["", ("Rows marked with seeds were added later on the shared 2-core CPU (no GPU that session; "
                       "`benchmarks/bench_knn.py` for the extra `knn_*` rows, `benchmarks/bench_fewshot.py` for few-shot "
                       "and unified), with only the seeds shown: their spread is over those seeds (0 for one seed). "
                       "The CPU recomputation of `knn_r20k` / `knn_r20k_top1` against the GPU rows (new - old): "
                       + json.dumps(q.get("knn_cpu_check", {}).get("new_minus_old", {})) + ".")]
    tw = q.get("train_wall")
    if tw:
        lines += ["", f"`lineinspect train` wall time on 2 cores ({tw['conditions']}): " + ", ".join(
            f"{n} {v:.0f} s" for n, v in tw["seconds"].items()) + "."]
    ts = [t for v in q["train_s"].values() for t in v]
    lines += ["", (f"Train s per category and seed on the GPU run (memory 1024 included, features cached): "
              f"{min(ts):.0f}-{max(ts):.0f} s; CPU training time is reported in README.")]
    write_section("quality", "\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--category", action="append")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--iters", type=int, help="override the training iterations (smoke tests only)")
    ap.add_argument("--out", type=Path, default=WORK / PER_CAT)
    ap.add_argument("--aggregate", action="store_true")
    ap.add_argument("--speed", action="store_true", help="ORT batch-8 speed vs the encoder-only yardstick")
    a = ap.parse_args(argv)
    if a.speed:
        res = speed()
        (RESULTS_DIR / "quality_speed.json").write_text(json.dumps(res, indent=1))
        print(json.dumps(res, indent=1))
        return 0
    if a.aggregate:
        sp = RESULTS_DIR / "quality_speed.json"
        payload = aggregate(a.out, {"speed": json.loads(sp.read_text())} if sp.exists() else {})
        (RESULTS_DIR / "quality.json").write_text(json.dumps(payload, indent=1))
        write_md(payload)
        print(json.dumps({k: payload[k] for k in ("knn_bar", "margin_vs_bar", "winners")}, indent=1))
        return 0
    root = data_root()
    for cat in a.category or []:
        run_category(root, cat, a.seeds, a.device, a.out, a.iters)
    return 0


if __name__ == "__main__":
    sys.exit(main())
