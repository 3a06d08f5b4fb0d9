"""Drift detection on real data: how fast does a camera change raise an alarm, and how often does a
normal stream alarm by itself?

Per product (tire: 4 defect types, magnetic tile: 5): a small INP-Former is trained on part of
train/good (few iterations: this measures the drift statistic, not the model). The remaining
train/good images plus test/good form the normal pool; every test defect is in the defect pool.
A stream is ``pre + post`` frames drawn at random (defects at ``defect_rate``); from frame ``pre``
on, every frame goes through one simulated change:

* brightness: +35 grey levels;  gamma: gamma 0.6 (brighter mid-tones, the lamp aged / changed)
* shift: the part moves by 7 % of the frame (camera knocked), border replicated
* blur: Gaussian sigma 2.5 px at the check size (focus lost)
* rotation: 4 degrees about the centre

The drift statistic is :class:`inference.drift.CameraDrift` with the project defaults, fed with the
engine's scores and each frame's grey image exactly as the consumer's monitor feeds it. Reported per
product and change: detection rate, detection delay in frames (alarm frame - change frame), false
alarms before the change, and the model's recall on defect frames before and during the change
(and its flag rate on normal frames during the change: the flood a drift alarm explains).
Unshifted streams (``pre + post`` normal-with-defects frames) measure the false alarm rate.

Each pool image is scored once per variant (6 variants) and the streams reuse those scores, which
keeps the run to a few minutes on 2 cores.

    nice -n 10 python benchmarks/bench_drift.py [--streams 20] [--iters 100]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import WORK, Recorder, data_root, fmt, machine, section_head
from inference.drift import CameraDrift, DriftConfig, calibration_p99, to_grey
from lineinspect.settings import Settings
from training.data import read_image

PRODUCTS = {"tire": "mvtec_3d_ad/tire", "magnetic_tile": "magnetic_tile/magnetic_tile"}
KINDS = ("brightness", "gamma", "shift", "blur", "rotation")
EXTS = (".png", ".jpg", ".jpeg", ".bmp")


def shifted(img: np.ndarray, kind: str) -> np.ndarray:
    """The simulated change applied to one RGB frame."""
    h, w = img.shape[:2]
    if kind == "none":
        return img
    if kind == "brightness":
        return np.clip(img.astype(np.int16) + 35, 0, 255).astype(np.uint8)
    if kind == "gamma":
        lut = (255.0 * (np.arange(256) / 255.0) ** 0.6).astype(np.uint8)
        return lut[img]
    if kind == "shift":
        m = np.float32([[1, 0, 0.07 * w], [0, 1, 0.07 * h]])
        return cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_REPLICATE)
    if kind == "blur":
        sigma = 2.5 * max(h, w) / 256.0
        return cv2.GaussianBlur(img, (0, 0), sigma)
    if kind == "rotation":
        m = cv2.getRotationMatrix2D((w / 2, h / 2), 4.0, 1.0)
        return cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_REPLICATE)
    raise ValueError(kind)


def images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in EXTS)


def train_model(product: str, train_paths: list[Path], iters: int, out: Path) -> Path:
    from training.train import TrainConfig, train

    if (out / "weights.pt").is_file() and (out / "calibration.json").is_file():
        return out
    cfg = TrainConfig(iters=iters, threads=int(os.environ.get("BENCH_THREADS", "2")), categories=[product],
                      cache_dir=str(WORK / "feature_cache"))
    train(train_paths, cfg, out, iters=iters, seed=0, resume=False, progress=True)
    return out


def score_variants(product: str, model_dir: Path, pool: list[Path]
                   ) -> tuple[float, dict[str, np.ndarray], dict[str, list[np.ndarray]]]:
    """(threshold, scores, grey check images) of every pool image under every variant. Cached next to
    the model (``variants.npz``; the grey images are exact as uint8), so the drift statistic can be
    re-evaluated on the same scores without scoring 6 x the pool again."""
    from inference.engines.torch_engine import TorchEngine

    cache = model_dir.parent / f"{model_dir.name}-variants.npz"  # not inside: the model dir is checksummed
    names = np.array([str(p) for p in pool])
    if cache.is_file():
        z = np.load(cache)
        if z["names"].shape == names.shape and (z["names"] == names).all():
            return (float(z["threshold"]), {k: z[f"s_{k}"] for k in ("none", *KINDS)},
                    {k: list(z[f"g_{k}"].astype(np.float32)) for k in ("none", *KINDS)})
    engine = TorchEngine(model_dir, threads=int(os.environ.get("BENCH_THREADS", "2")), batch_size=8)
    thr = float(engine.loaded.threshold)
    images = [read_image(p) for p in pool]
    scores: dict[str, np.ndarray] = {}
    greys: dict[str, list[np.ndarray]] = {}
    for kind in tqdm(("none", *KINDS), desc=f"{product}: score variants"):
        var = [shifted(im, kind) for im in images]
        scores[kind] = np.concatenate([engine.infer(product, var[i:i + 8]).scores for i in range(0, len(var), 8)])
        greys[kind] = [to_grey(v) for v in var]
    engine.close()
    arrays = {f"s_{k}": v for k, v in scores.items()}
    arrays.update({f"g_{k}": np.stack(v).astype(np.uint8) for k, v in greys.items()})
    np.savez(cache, names=names, threshold=np.float64(thr), **arrays)
    return thr, scores, greys


def run_product(product: str, rel: str, args: argparse.Namespace, cfg: DriftConfig) -> dict:
    root = data_root() / rel
    train_good = images_in(root / "train" / "good")
    n_fit = int(len(train_good) * 0.6)
    fit, spare = train_good[:n_fit:1], train_good[n_fit:]
    normals = spare + images_in(root / "test" / "good")
    defects = [p for d in sorted((root / "test").iterdir()) if d.is_dir() and d.name != "good" for p in images_in(d)]
    model_dir = train_model(product, fit, args.iters, WORK / "drift" / f"{product}-{args.iters}")
    cal = json.loads((model_dir / "calibration.json").read_text())
    p99 = calibration_p99(cal)
    pool = normals + defects
    is_defect = np.array([0] * len(normals) + [1] * len(defects), bool)
    thr, scores, greys = score_variants(product, model_dir, pool)

    rng = np.random.default_rng(args.seed)
    n_frames = args.pre + args.post
    nidx, didx = np.flatnonzero(~is_defect), np.flatnonzero(is_defect)

    def stream_indices() -> np.ndarray:
        pick_def = rng.random(n_frames) < args.defect_rate
        return np.where(pick_def, rng.choice(didx, n_frames), rng.choice(nidx, n_frames))

    fired_by: dict[str, dict[str, int]] = {}

    def run_stream(idx: np.ndarray, kind: str) -> int | None:
        d = CameraDrift(cfg)
        for t, i in enumerate(idx):
            k = "none" if (kind == "none" or t < args.pre) else kind
            got = d.update(t, float(t), float(scores[k][i]), p99, greys[k][i], "v")
            if got:
                tally = fired_by.setdefault(kind if t >= args.pre else "none", {})
                for b in got:
                    tally[b.kind] = tally.get(b.kind, 0) + 1
                return t
        return None

    out: dict = {"n_normal_pool": len(normals), "n_defect_pool": len(defects), "calibration_p99": p99,
                 "threshold": thr, "kinds": {}}
    # unshifted streams: false alarms
    fa = [run_stream(stream_indices(), "none") for _ in range(args.streams)]
    out["unshifted"] = {"streams": args.streams, "frames_per_stream": n_frames,
                        "false_alarm_streams": int(sum(a is not None for a in fa)),
                        "alarm_frames": [a for a in fa if a is not None]}
    base_recall = float(np.mean(scores["none"][didx] > thr))
    base_fpr = float(np.mean(scores["none"][nidx] > thr))
    out["no_change"] = {"defect_recall": base_recall, "normal_flag_rate": base_fpr}
    for kind in KINDS:
        delays, early, missed = [], 0, 0
        for _ in range(args.streams):
            a = run_stream(stream_indices(), kind)
            if a is None:
                missed += 1
            elif a < args.pre:
                early += 1
            else:
                delays.append(a - args.pre)
        out["kinds"][kind] = {
            "streams": args.streams, "detected": len(delays), "false_alarm_before_change": early, "missed": missed,
            "delay_frames_median": float(np.median(delays)) if delays else None,
            "delay_frames_max": int(max(delays)) if delays else None,
            "defect_recall_during_change": float(np.mean(scores[kind][didx] > thr)),
            "normal_flag_rate_during_change": float(np.mean(scores[kind][nidx] > thr)),
        }
    out["alarm_checks"] = fired_by  # which checks fired (per change; "none": alarms on unchanged frames)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", type=int, default=20)
    p.add_argument("--pre", type=int, default=90,
                   help="frames before the change (the image checks need reference + window = 60 of them)")
    p.add_argument("--post", type=int, default=60, help="frames after the change")
    p.add_argument("--defect-rate", type=float, default=0.2)
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--products", nargs="*", default=list(PRODUCTS))
    args = p.parse_args(argv)
    cfg = DriftConfig.from_settings(Settings())
    run = Recorder()
    res = {"config": cfg.__dict__, "streams": args.streams, "pre": args.pre, "post": args.post,
           "defect_rate": args.defect_rate, "iters": args.iters, "machine": machine(), "products": {}}
    for product in args.products:
        res["products"][product] = run_product(product, PRODUCTS[product], args, cfg)
    return run.finish("drift", res, render)


def render(res: dict) -> str:
    about = (f"{res['streams']} streams per change of {res['pre']} normal frames then {res['post']} changed ones, "
             f"defects mixed in at {res['defect_rate']:.0%}; model: INP-Former, {res['iters']} iterations on 60 % "
             "of train/good; defaults of `drift_*` settings; six engineers share 2 cores.")
    lines = section_head("Drift alarms", "bench_drift.py", about, res, [
        "product", "change", "detected", "false alarm before change", "median / max delay (frames)",
        "defect recall before -> during", "normal frames flagged during"])
    for product, r in res["products"].items():
        base = r["no_change"]
        for kind, k in r["kinds"].items():
            lines.append(f"| {product} | {kind} | {k['detected']}/{k['streams']} | {k['false_alarm_before_change']} | "
                         f"{fmt(k['delay_frames_median'], 0) if k['delay_frames_median'] is not None else 'n/a'} / "
                         f"{k['delay_frames_max'] if k['delay_frames_max'] is not None else 'n/a'} | "
                         f"{base['defect_recall']:.2f} -> {k['defect_recall_during_change']:.2f} | "
                         f"{k['normal_flag_rate_during_change']:.2f} (was {base['normal_flag_rate']:.2f}) |")
    if all("alarm_checks" in r for r in res["products"].values()):
        lines += ["", "Checks that fired: " + "; ".join(f"{p}: {json.dumps(r['alarm_checks'], sort_keys=True)}"
                                                      for p, r in res["products"].items()) + "."]
    lines += ["", "False alarms on unshifted streams: " + ", ".join(
        f"{p}: {r['unshifted']['false_alarm_streams']}/{r['unshifted']['streams']} streams of "
        f"{r['unshifted']['frames_per_stream']} frames" for p, r in res["products"].items()) + "."]
    lines += ["", (f"Reading it: the image checks start once a camera has a reference ({res['config']['reference_frames']} "
              f"frames) and a full window ({res['config']['window']}), i.e. at frame "
              f"{res['config']['reference_frames'] + res['config']['window']}. With {res['pre']} frames before the change, "
              "'false alarm before change' tests the score check alone there, and the unshifted streams are what "
              "measures the image checks' false alarms. Limits widen to the camera's own variation (bootstrap standard "
              "errors of both medians): magnetic tile frames differ in brightness by ~30 grey levels from tile to tile, "
              "so its brightness limit is wide and +35 grey / gamma 0.6 (which barely move the model's scores either) "
              "are caught late or not at all: misses, reported as such. The previous run's one false alarm (tire, "
              "position check at frame 111 of a steady stream) had a code cause, not a limit: `cv2.phaseCorrelate` "
              "applies its window to its inputs in place, so every frame multiplied the stored reference by the Hann "
              "window; over a stream the reference decayed, the correlation peaks fell and the measured shifts became "
              "noise. The reference is now passed as a copy (regression test), the position check also requires the "
              "window's frames to align with the reference (median peak >= 0.6, as the reference must with itself), "
              "and identical frames count once in a reference.")]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
