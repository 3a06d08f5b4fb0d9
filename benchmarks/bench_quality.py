"""Quality benchmark: INP-Former (project defaults) vs a PatchCore baseline on every real category.

    python benchmarks/bench_quality.py            # defaults, all categories -> RESULTS.md + results/quality.json
    python benchmarks/bench_quality.py --sweep    # the lever table (short runs) -> results/quality_sweep.{md,json}

Both methods use the same frozen features (cached once per backbone/size/category under
benchmarks/_work) and the same map/score helpers. Pixel metrics and AUPRO are computed at the model
input resolution (masks resized nearest), identically for both methods.
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

from benchmarks.common import RESULTS_DIR, WORK, data_root, fmt, machine, masks_at, write_section  # noqa: E402
from inference.model.inp_former import InpConfig, InpFormer  # noqa: E402
from inference.model_dir import load_model_dir  # noqa: E402
from training import metrics  # noqa: E402
from training import patchcore  # noqa: E402
from training.data import discover, hold_out, load_split  # noqa: E402
from training.features import cached_features  # noqa: E402
from training.train import TrainConfig, train  # noqa: E402


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
        maps.append(m.numpy())
        scores.append(s.numpy())
    return np.concatenate(maps), np.concatenate(scores)


def images_per_s(model_dir: Path, paths: list[Path], n: int = 32) -> float:
    from inference.engines.torch_engine import TorchEngine
    from training.data import read_image

    eng = TorchEngine(model_dir, batch_size=8)
    ims = [read_image(p) for p in paths[:n]]
    eng.infer("bench", ims[:8])  # warm-up
    t = time.perf_counter()
    eng.infer("bench", ims)
    return len(ims) / (time.perf_counter() - t)


def run_category(root: Path, cat: str, tcfg: TrainConfig, iters: int, seed: int, cache: Path,
                 with_patchcore: bool, with_speed: bool, out_root: Path) -> dict:
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
    if with_speed:
        res["images_per_s"] = round(images_per_s(out_dir, [it.path for it in test.items]), 1)
    if with_patchcore:
        pc_model = InpFormer(replace(tcfg.model, local_pool=3))
        t1 = time.perf_counter()
        fit_f = cached_features(pc_model, [it.path for it in fit], cache)
        bank = patchcore.fit_bank(patchcore.patch_features(fit_f, already_pooled=True), 0.25, seed)
        pc_fit_s = time.perf_counter() - t1
        tf = cached_features(pc_model, [it.path for it in test.items], cache)
        t2 = time.perf_counter()
        pmaps, pscores = patchcore.score(bank, patchcore.patch_features(tf, already_pooled=True), hw)
        pc_s = time.perf_counter() - t2
        res["patchcore"] = all_metrics(labels, pscores.numpy(), masks, pmaps.numpy())
        res["patchcore"].update(fit_s=round(pc_fit_s, 1), bank=int(bank.bank.shape[0]),
                                score_images_per_s=round(len(test.items) / pc_s, 1))
    return res


def mean_of(rows: list[dict], method: str, key: str) -> float:
    return float(np.mean([r[method][key] for r in rows]))


# ---------------------------------------------------------------------------------------------
SWEEP_ITERS = 150


def sweep_variants() -> list[tuple[str, TrainConfig]]:
    base = TrainConfig()
    m = base.model
    return [
        ("prototype: 16x16 grid, no pooling", replace(base, model=replace(m, token_stride=16, local_pool=1))),
        ("32x32 grid, no pooling", replace(base, model=replace(m, local_pool=1))),
        ("32x32 grid, 3x3 pooled (default)", base),
        ("default, 100 iters", base),
        ("default, dropout 0", replace(base, model=replace(m, dropout=0.0))),
        ("default, groups s8 (1-2,3-4) / s16 (5-10)", replace(base, model=replace(m, groups=[[2, 4], [7, 10]]))),
        ("default, 320 px", replace(base, model=replace(m, input_hw=(320, 320)))),
        ("default, lite1", replace(base, model=replace(m, backbone="efficientnet_lite1", groups=[]))),
    ]


def run_sweep(root: Path, cats: list[str], seed: int, only: list[int] | None) -> None:
    cache = WORK / "cache"
    out_json = RESULTS_DIR / "quality_sweep.json"
    done = json.loads(out_json.read_text()) if out_json.exists() else {}
    for i, (name, cfg) in enumerate(sweep_variants()):
        if only and i not in only:
            continue
        iters = 100 if "100 iters" in name else SWEEP_ITERS
        rows = []
        for cat in cats:
            r = run_category(root, cat, cfg, iters, seed, cache, with_patchcore=(i == 2), with_speed=False,
                             out_root=WORK / "sweep_models")
            rows.append(r)
            print(f"[{name}] {cat}: I-AUROC {r['inp_former']['image_auroc']:.3f} P-AUROC "
                  f"{r['inp_former']['pixel_auroc']:.3f} ({r['train_s']} s)", flush=True)
        done[name] = {"iters": iters, "rows": rows}
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(done, indent=1))
    write_sweep_md(done, cats)


def write_sweep_md(done: dict, cats: list[str]) -> None:
    head = "| variant | iters | " + " | ".join(cats) + " | mean I-AUROC | mean P-AUROC | mean train s |\n"
    head += "|---" * (len(cats) + 5) + "|\n"
    lines = []
    pc = None
    for name, v in done.items():
        rows = {r["category"]: r for r in v["rows"]}
        if not all(c in rows for c in cats):
            continue
        rr = [rows[c] for c in cats]
        lines.append(f"| {name} | {v['iters']} | " + " | ".join(fmt(r["inp_former"]["image_auroc"]) for r in rr)
                     + f" | **{fmt(mean_of(rr, 'inp_former', 'image_auroc'))}** | {fmt(mean_of(rr, 'inp_former', 'pixel_auroc'))}"
                     + f" | {np.mean([r['train_s'] for r in rr]):.0f} |")
        if "patchcore" in rr[0]:
            pc = rr
    if pc:
        lines.append("| PatchCore (32x32, 3x3 pooled, 25% bank) | - | " + " | ".join(fmt(r["patchcore"]["image_auroc"]) for r in pc)
                     + f" | **{fmt(mean_of(pc, 'patchcore', 'image_auroc'))}** | {fmt(mean_of(pc, 'patchcore', 'pixel_auroc'))} | - |")
    (RESULTS_DIR / "quality_sweep.md").write_text("Cells: image AUROC per category.\n\n" + head + "\n".join(lines) + "\n")
    print(head + "\n".join(lines))


# ---------------------------------------------------------------------------------------------
KEYS = ("image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro")


def run_main(root: Path, cats: list[str], seed: int) -> None:
    cfg = TrainConfig()
    cache = WORK / "cache_final"
    shutil.rmtree(cache, ignore_errors=True)  # train seconds include the one-off feature pass
    rows = []
    for cat in cats:
        r = run_category(root, cat, cfg, cfg.iters, seed, cache, with_patchcore=True, with_speed=True,
                         out_root=WORK / "models")
        rows.append(r)
        print(json.dumps(r), flush=True)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    payload = {"machine": machine(), "seed": seed, "train_config": cfg.to_dict(), "rows": rows,
               "mean": {m: {k: mean_of(rows, m, k) for k in KEYS} for m in ("inp_former", "patchcore")}}
    (RESULTS_DIR / "quality.json").write_text(json.dumps(payload, indent=1))
    mc = cfg.model
    body = [f"## Quality: INP-Former vs PatchCore ({time.strftime('%Y-%m-%d')})", "",
            f"`python benchmarks/bench_quality.py` on {machine()}; data `$LINEINSPECT_DATA`, seed {seed}. "
            f"INP-Former defaults: {mc.backbone}, input {mc.input_hw[0]}x{mc.input_hw[1]} (square), token grid "
            f"{mc.grid[0]}x{mc.grid[1]}, groups {mc.groups}, {mc.local_pool}x{mc.local_pool} pooled tokens, width {mc.width}, "
            f"{mc.n_inps} INPs, {mc.decoder_blocks} decoder blocks, dropout {mc.dropout}, {cfg.iters} iters x batch "
            f"{cfg.batch_size} ({cfg.train_tokens} decoded tokens/step). PatchCore: same features, 25% random bank, k=1. "
            "Pixel metrics/AUPRO at model input resolution. Train s includes the encoder feature pass and calibration; "
            "img/s = TorchEngine end to end (preprocess + encoder + head + map), batch 8, eager.", "",
            "| category | method | I-AUROC | I-AP | I-F1max | P-AUROC | P-AP | P-F1max | AUPRO | train s | img/s |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for m in ("inp_former", "patchcore"):
            x = r[m]
            ts = r["train_s"] if m == "inp_former" else x["fit_s"]
            ips = r.get("images_per_s") if m == "inp_former" else x["score_images_per_s"]
            body.append(f"| {r['category']} | {m} | " + " | ".join(fmt(x[k]) for k in KEYS) + f" | {ts} | {ips} |")
    for m in ("inp_former", "patchcore"):
        body.append(f"| **mean** | {m} | " + " | ".join(fmt(payload['mean'][m][k]) for k in KEYS) + " | | |")
    wins = [r["category"] for r in rows if r["patchcore"]["image_auroc"] > r["inp_former"]["image_auroc"]]
    body += ["", "PatchCore wins image AUROC on: " + (", ".join(wins) if wins else "none") + ". "
             "PatchCore img/s counts only the kNN scoring on cached features (no encoder)."]
    sweep = RESULTS_DIR / "quality_sweep.md"
    if sweep.exists():
        body += ["", f"### Lever sweep (short runs, same seed; `--sweep`)", "", sweep.read_text()]
    write_section("quality", "\n".join(body))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--only", type=int, nargs="*", help="sweep variant indices to (re)run")
    ap.add_argument("--category", action="append", help="limit to these categories")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    root = data_root()
    cats = a.category or discover(root)
    if a.sweep:
        run_sweep(root, cats, a.seed, a.only)
    else:
        run_main(root, cats, a.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
