"""Camera-scale section of ``bench_pipeline.py`` (issue 14): 5 MP colour, 5 MP mono and 12 MP colour
JPEG frames made from the real test images, through the real Kafka -> consumer -> PostgreSQL + Redis.

Frames: real test images of every category (good and defective), upscaled with bicubic
interpolation to the sensor size (5 MP = 2048x2448, 12 MP = 3000x4096, H x W), converted to gray
for the mono camera, JPEG quality 92 (what ``lineinspect publish`` sends by default).

Measured in one run on the same frames, per configuration:
  * ``bare``: the engine alone on frames already at model size (decoded once beforehand);
  * ``decode_and_model``: decode at model scale (``decode_frame``) + the engine, no bus/storage;
  * ``full_decode``: the path before this change - full-resolution decode, then the engine's resize;
  * ``fps``: one consumer process draining a backlog through Kafka -> PostgreSQL + Redis;
  * latency p50/p99 capture -> stored while frames are published at 70 % of that ``fps``;
  * consumer RSS (peak).
The AUROC part scores the real test sets upscaled to 5 MP, decoded reduced vs decoded full and
resized, with a default-config model trained per category (``--auroc-iters`` iterations).
"""

from __future__ import annotations

import os
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

CONFIGS = (("5 MP colour", (2048, 2448), False), ("5 MP mono", (2048, 2448), True),
           ("12 MP colour", (3000, 4096), False))
QUALITY = 92
LATENCY_WINDOW_S = 40.0
WARMUP_FRAMES = 24  # rows not counted in the backlog fps (3 batches of 8: see warm_fps)


def camera_frames(per_category: int, hw: tuple[int, int], mono: bool) -> list[tuple[str, bytes, tuple[int, ...]]]:
    """[(category, JPEG bytes, shape)]: real test images upscaled (bicubic) to ``hw``, gray if ``mono``."""
    import cv2

    from benchmarks.common import sampled_test_rgb
    from ingest.envelope import encode_image

    out = []
    for cat, rgb in sampled_test_rgb(per_category):
        big = cv2.resize(rgb, (hw[1], hw[0]), interpolation=cv2.INTER_CUBIC)
        img = cv2.cvtColor(big, cv2.COLOR_RGB2GRAY) if mono else big
        out.append((cat, encode_image(img, "jpeg", QUALITY), img.shape))
    return out


def _envs(frames: list) -> list:
    from ingest.envelope import FrameEnvelope

    return [FrameEnvelope("p", "l", "c", i, data, "jpeg", tuple(shape)) for i, (_c, data, shape) in enumerate(frames)]


def profile_setup(config: str) -> tuple[str, tuple[int, int], bool, list, Path, float, float]:
    """The camera profiles' common start: the named config's frames, the default model, a threshold at
    the 90th percentile of their scores and their highest score (the drift check's p99 stand-in, see
    ``KafkaRun``); imports are late so that a profile's ``--src`` tree is used."""
    from benchmarks.bench_pipeline import build_model
    from inference.engines.onnx_engine import OnnxEngine
    from ingest.envelope import decode_frame

    name, hw, mono = next(c for c in CONFIGS if c[0] == config)
    frames = camera_frames(2, hw, mono)
    model_dir = build_model("default")
    eng = OnnxEngine(model_dir)
    try:
        scores = eng.infer("p", [decode_frame(e, target_hw=eng.input_hw).image for e in _envs(frames)]).scores
    finally:
        eng.close()
    return name, hw, mono, frames, model_dir, float(np.percentile(scores, 90.0)), float(np.max(scores))


def _rate(step: Any, n: int, batch: int) -> float:
    """Frames/s of ``step(i0, batch)`` over ``n`` frames after one warm-up batch."""
    step(0, batch)
    t0, done = time.perf_counter(), 0
    while done < n:
        step(done, batch)
        done += batch
    return done / (time.perf_counter() - t0)


def inprocess_rates(model_dir: Path, frames: list, n: int, batch: int) -> dict[str, float]:
    """bare / decode-at-model-scale + model / full decode + model, one engine, interleaved twice."""
    from inference.engines.onnx_engine import OnnxEngine
    from ingest.envelope import decode_frame, decode_image

    envs = _envs(frames)
    eng = OnnxEngine(model_dir)
    hw = eng.input_hw
    small = [decode_frame(e, target_hw=hw).image for e in envs]
    k = len(envs)

    def bare(i0: int, b: int) -> None:
        eng.infer("p", [small[(i0 + i) % k] for i in range(b)])

    def reduced(i0: int, b: int) -> None:
        eng.infer("p", [decode_frame(envs[(i0 + i) % k], target_hw=hw).image for i in range(b)])

    def full(i0: int, b: int) -> None:
        eng.infer("p", [decode_image(envs[(i0 + i) % k]) for i in range(b)])

    runs: dict[str, list[float]] = {"bare": [], "decode_and_model": [], "full_decode": []}
    try:
        for _ in range(2):  # interleaved: the shared machine's load drifts
            runs["bare"].append(_rate(bare, n, batch))
            runs["decode_and_model"].append(_rate(reduced, n, batch))
            runs["full_decode"].append(_rate(full, max(batch, n // 4), batch))
        t0 = time.perf_counter()
        for e in envs:
            decode_frame(e, target_hw=hw)
        red_ms = (time.perf_counter() - t0) * 1e3 / k
        t0 = time.perf_counter()
        for e in envs:
            decode_image(e)
        full_ms = (time.perf_counter() - t0) * 1e3 / k
    finally:
        eng.close()
    out = {name: float(np.mean(v)) for name, v in runs.items()}
    out.update(decode_reduced_ms=red_ms, decode_full_ms=full_ms,
               scale=int(decode_frame(envs[0], target_hw=hw).scale))
    return out


def storage_cost(frames: list, model_dir: Path) -> dict[str, float]:
    """Bytes one flagged frame stores: the original JPEG + mask and heatmap PNGs at map resolution."""
    from inference.engines.onnx_engine import OnnxEngine
    from inference.postprocess import build_row
    from ingest.envelope import decode_frame

    envs = _envs(frames[:4])
    eng = OnnxEngine(model_dir)
    try:
        out = eng.infer("p", [decode_frame(e, target_hw=eng.input_hw).image for e in envs])
        out.threshold = float(np.min(out.scores)) * 0.999  # every frame flagged
        t0 = time.perf_counter()
        rows = [build_row(e, e.shape[:2], out, i, time.time(), len(envs), "onnx") for i, e in enumerate(envs)]
        enc_ms = (time.perf_counter() - t0) * 1e3 / len(rows)
    finally:
        eng.close()
    return {"frame_bytes": float(np.mean([len(r.frame_bytes or b"") for r in rows])),
            "mask_png_bytes": float(np.mean([len(r.mask_png or b"") for r in rows])),
            "heat_png_bytes": float(np.mean([len(r.heat_png or b"") for r in rows])),
            "row_build_ms": enc_ms}


def warm_fps(stored: list[tuple[float, float]], skip: int) -> float:
    """Frames/s stored after the first ``skip`` rows: the consumer's steady state. The first batches carry
    one-off costs (ONNX Runtime's first run, the families step loading its model at the first flagged frame:
    1-2 s), which at 10-16 frames/s would otherwise be a large share of a backlog of a few hundred frames."""
    ts = sorted(t for t, _ in stored)
    if len(ts) <= skip + 1 or ts[-1] <= ts[skip]:
        return float("nan")
    return (len(ts) - 1 - skip) / (ts[-1] - ts[skip])


def pipeline_run(urls: dict, model_dir: Path, threshold: float, frames: list, n: int, tmp: Path, tag: str,
                 capture_fps: float | None = None, p99: float | None = None, decode_threads: int = 1,
                 decode_ahead: bool = False) -> dict:
    """One consumer through Kafka: backlog fps, then latency while paced at 70 % of it, peak RSS.

    The backlog's capture times are those of 4 cameras recording at ``capture_fps`` in all (a line as
    fast as one consumer could serve at best), so the consumer keeps the share of clearly normal frames
    as training samples that such a line would make it keep (``keep_normal_every_s``), not the few a
    backlog stamped within seconds would leave."""
    from benchmarks.kafka_run import KafkaRun, RssSampler, steady_fps

    run = KafkaRun(urls, model_dir, threshold, tmp, tag, p99=p99)
    try:
        load = os.getloadavg()[0]
        pub_fps = run.publish(frames, 0, n, capture_fps=capture_fps)
        t_ready = run.start_consumers(1, 0, True, decode_threads=decode_threads, decode_ahead=decode_ahead)
        sampler = RssSampler([p.pid for p in run.procs])
        sampler.start()
        stored = run.wait_rows(0, n, timeout_s=max(180, n * 2))
        kept_backlog = run.samples_kept()
        fps_from_ready, counted = steady_fps(stored, t_ready)
        fps = warm_fps(stored, WARMUP_FRAMES)
        paced = max(0.5, 0.7 * fps)
        n_lat = int(min(max(60, paced * LATENCY_WINDOW_S), 1200))  # a window long enough for a p99
        t0 = time.perf_counter()
        held = run.publish(frames, n, n_lat, fps=paced)
        lat = np.array([ms for _t, ms in run.wait_rows(n, n + n_lat, timeout_s=max(120, n_lat / paced * 3))])
        rss = sampler.stop()
        return {"fps": fps, "fps_from_ready": fps_from_ready, "warmup_frames": WARMUP_FRAMES, "frames": n,
                "frames_timed": counted, "publish_fps_backlog": pub_fps, "capture_fps_backlog": capture_fps,
                "normal_samples_kept_backlog": kept_backlog,
                "paced_fps": paced, "held_fps": held, "latency_frames": n_lat,
                "latency_wall_s": time.perf_counter() - t0,
                "latency_p50_ms": float(np.percentile(lat, 50)), "latency_p99_ms": float(np.percentile(lat, 99)),
                "consumer_rss_mb": rss, "load_avg": load, "decode_ahead": decode_ahead}
    finally:
        run.close()


def run_camera(urls: dict, model_dir: Path, threshold_frames_pct: float, n: int, batch: int, per_category: int,
               tmp: Path, decode_threads: int = 1, decode_ahead: bool = False, ahead_ab: bool = False) -> dict:
    """Every configuration of :data:`CONFIGS`; returns the ``camera`` JSON section (rows).

    ``ahead_ab``: each configuration's consumer also runs with the other ``decode_ahead`` (the order
    alternating between configurations), both against the same in-process yardsticks; the row's own
    figures stay those of ``decode_ahead``."""
    from tqdm import tqdm

    from inference.engines.onnx_engine import OnnxEngine
    from ingest.envelope import decode_frame

    rows = []
    for name, hw, mono in tqdm(CONFIGS, desc="camera configs"):
        frames = camera_frames(per_category, hw, mono)
        eng = OnnxEngine(model_dir)
        try:
            scores = eng.infer("p", [decode_frame(e, target_hw=eng.input_hw).image for e in _envs(frames)]).scores
        finally:
            eng.close()
        threshold = float(np.percentile(scores, threshold_frames_pct))
        rates = inprocess_rates(model_dir, frames, n, batch)
        run = partial(pipeline_run, urls, model_dir, threshold, frames, n, tmp, capture_fps=rates["decode_and_model"],
                      p99=float(np.max(scores)), decode_threads=decode_threads)
        other = None
        other_first = bool(len(rows) % 2)
        if ahead_ab and other_first:
            other = run(f"cam{len(rows)}x", decode_ahead=not decode_ahead)
        pipe = run(f"cam{len(rows)}", decode_ahead=decode_ahead)
        if ahead_ab and other is None:
            other = run(f"cam{len(rows)}x", decode_ahead=not decode_ahead)
        rates_after = inprocess_rates(model_dir, frames, n, batch)
        bare = (rates["bare"] + rates_after["bare"]) / 2
        dm = (rates["decode_and_model"] + rates_after["decode_and_model"]) / 2
        full = (rates["full_decode"] + rates_after["full_decode"]) / 2
        rows.append({"config": name, "megapixels": hw[0] * hw[1] / 1e6, "hw": list(hw), "mono": mono,
                     "consumers": 1, "decode_threads": decode_threads, "jpeg_quality": QUALITY, "jpeg_kb": float(np.mean([len(d) for _c, d, _s in frames])) / 1e3,
                     "distinct_frames": len(frames), "fps": pipe["fps"], "bare_fps": bare,
                     "decode_and_model_fps": dm, "ratio": pipe["fps"] / bare,
                     "ratio_to_decode_and_model": pipe["fps"] / dm,
                     "full_decode": {"decode_and_model_fps": full, "ratio_to_bare": full / bare,
                                     "decode_ms": (rates["decode_full_ms"] + rates_after["decode_full_ms"]) / 2},
                     "decode_reduced_ms": (rates["decode_reduced_ms"] + rates_after["decode_reduced_ms"]) / 2,
                     "dct_scale": rates["scale"], "latency_p50_ms": pipe["latency_p50_ms"],
                     "latency_p99_ms": pipe["latency_p99_ms"], "paced_fps": pipe["paced_fps"],
                     "held_fps": pipe["held_fps"], "consumer_rss_mb": pipe["consumer_rss_mb"],
                     "storage_per_flagged_frame": storage_cost(frames, model_dir),
                     "pipeline": pipe, "inprocess_before": rates, "inprocess_after": rates_after})
        if other is not None:
            by = {decode_ahead: pipe, not decode_ahead: other}
            rows[-1]["decode_ahead_ab"] = {
                "first": "ahead" if (other_first != decode_ahead) else "serial",
                **{("ahead" if k else "serial"): {"fps": v["fps"], "ratio_to_decode_and_model": v["fps"] / dm,
                                                  "latency_p50_ms": v["latency_p50_ms"], "latency_p99_ms": v["latency_p99_ms"],
                                                  "consumer_rss_mb": v["consumer_rss_mb"]} for k, v in by.items()}}
            ab = rows[-1]["decode_ahead_ab"]
            print(f"{name}: decode ahead {ab['ahead']['ratio_to_decode_and_model']:.2f} vs serial "
                  f"{ab['serial']['ratio_to_decode_and_model']:.2f} of decode+model ({ab['first']} first)", flush=True)
        print(f"{name}: fps {pipe['fps']:.1f}, bare {bare:.1f}, decode+model {dm:.1f}, full-decode+model {full:.1f}, "
              f"ratio {pipe['fps'] / bare:.2f}, to decode+model {pipe['fps'] / dm:.2f}, "
              f"p50/p99 {pipe['latency_p50_ms']:.0f}/{pipe['latency_p99_ms']:.0f} ms", flush=True)
    return {"rows": rows}


# decode variants compared with the full decode (then area resize) the consumer did before issue 14
AUROC_VARIANTS = (("default", 2.0), ("coarsest", 1.0), ("oversample4", 4.0))


def paired_auroc_diff_ci(y: np.ndarray, ref: np.ndarray, new: np.ndarray, draws: int = 2000, seed: int = 0,
                         level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of AUROC(new) - AUROC(ref) over images resampled with replacement, good and
    defective separately (both score sets on the same draw: the ranking noise of a small test set is
    what the interval shows, not a training seed's)."""
    from training.metrics import image_auroc

    rng = np.random.default_rng(seed)
    good, bad = np.flatnonzero(y == 0), np.flatnonzero(y == 1)
    diffs = np.empty(draws)
    for i in range(draws):
        idx = np.concatenate([rng.choice(good, len(good)), rng.choice(bad, len(bad))])
        diffs[i] = image_auroc(y[idx], new[idx]) - image_auroc(y[idx], ref[idx])
    lo, hi = np.percentile(diffs, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def run_auroc(iters: int, max_per_category: int, hw: tuple[int, int] = (2048, 2448),
              categories: list[str] | None = None, seeds: tuple[int, ...] = (0,)) -> dict:
    """Image AUROC per category on 5 MP frames: decoded reduced (the consumer's rule, and the coarsest
    and a finer scale) vs decoded full then area-resized, plus the uncompressed upscale (what JPEG q92
    itself moves). Per image: the mean / max absolute input difference to the full path (grey
    levels) and the score change, to see which images move and why. The first seed's model gives
    the table's figures and a paired bootstrap interval of each difference; every further seed's
    model (same data, another initialisation) scores the same inputs, to show whether a difference
    follows the decode or the model."""
    import hashlib
    import json

    import cv2
    from tqdm import tqdm

    from benchmarks.common import WORK, data_root
    from inference.engines.onnx_engine import OnnxEngine
    from inference.preprocess import as_rgb, resize_rgb
    from ingest.envelope import FrameEnvelope, decode_frame, decode_image, encode_image
    from training import metrics
    from training.data import discover, load_split
    from training.train import TrainConfig, train

    root = data_root()
    arch = hashlib.sha1(json.dumps(TrainConfig().model.to_dict(), sort_keys=True).encode()).hexdigest()[:10]
    out: dict[str, Any] = {"iters": iters, "hw": list(hw), "jpeg_quality": QUALITY, "categories": {},
                           "variants": {name: ov for name, ov in AUROC_VARIANTS}}
    for cat in discover(root):
        if categories and cat not in categories:
            continue
        model_dirs = []
        for seed in seeds:
            model_dir = WORK / "camera" / cat.replace("/", "__") / (f"model-{iters}-{arch}" + (f"-s{seed}" if seed else ""))
            if not (model_dir / "checksums.json").is_file():
                items = list(load_split(root, cat, "train"))
                print(f"training a default-config model on {cat} ({len(items)} images, {iters} iterations, seed {seed}) ...",
                      flush=True)
                train([it.path for it in items], TrainConfig(threads=2, cache_dir=str(WORK / "cache")), model_dir,
                      iters=iters, seed=seed, progress=False)
            model_dirs.append(model_dir)
        test = list(load_split(root, cat, "test"))
        rng = np.random.default_rng(0)
        if 0 < max_per_category < len(test):  # stratified: keep the good/defect mix
            good = [t for t in test if t.label == 0]
            bad = [t for t in test if t.label == 1]
            kg = max(1, round(max_per_category * len(good) / len(test)))
            test = ([good[i] for i in sorted(rng.choice(len(good), min(kg, len(good)), replace=False))]
                    + [bad[i] for i in sorted(rng.choice(len(bad), min(max_per_category - kg, len(bad)), replace=False))])
        eng = OnnxEngine(model_dirs[0], batch_size=8)
        mhw = eng.input_hw
        inputs: dict[str, list[np.ndarray]] = {"full": [], "uncompressed": [], "two_stage": [],
                                               **{n: [] for n, _ in AUROC_VARIANTS}}
        scales: dict[str, set[int]] = {n: set() for n, _ in AUROC_VARIANTS}
        labels = []
        try:
            for it in tqdm(test, desc=f"AUROC {cat}"):
                big = cv2.resize(it.image(), (hw[1], hw[0]), interpolation=cv2.INTER_CUBIC)
                env = FrameEnvelope("p", "l", "c", 0, encode_image(big, "jpeg", QUALITY), "jpeg", big.shape)
                for name, ov in AUROC_VARIANTS:
                    d = decode_frame(env, target_hw=mhw, oversample=ov)
                    scales[name].add(d.scale)
                    inputs[name].append(as_rgb(d.image))
                full = decode_image(env)
                inputs["full"].append(resize_rgb(full, mhw))
                # control: the default rule's intermediate size reached by an area resize, not by the DCT
                ds = max(scales["default"])
                mid = cv2.resize(full, (-(-hw[1] // ds), -(-hw[0] // ds)), interpolation=cv2.INTER_AREA)
                inputs["two_stage"].append(resize_rgb(mid, mhw))
                inputs["uncompressed"].append(resize_rgb(big, mhw))
                labels.append(it.label)
            scores = {name: eng.infer("p", ims).scores for name, ims in inputs.items()}
        finally:
            eng.close()
        by_seed: dict[int, dict[str, np.ndarray]] = {}
        for seed, model_dir in zip(seeds[1:], model_dirs[1:]):
            other = OnnxEngine(model_dir, batch_size=8)
            try:
                by_seed[seed] = {name: other.infer("p", ims).scores for name, ims in inputs.items()}
            finally:
                other.close()
        y = np.asarray(labels)
        ref = np.stack(inputs["full"]).astype(np.float32)
        a_full = float(metrics.image_auroc(y, scores["full"]))
        full_by_seed = {k: float(metrics.image_auroc(y, v["full"])) for k, v in by_seed.items()}
        cat_out: dict[str, Any] = {"n": len(test), "defective": int(y.sum()), "auroc_full": a_full, "seeds": list(seeds),
                                   "auroc_full_by_seed": {str(seeds[0]): a_full, **{str(k): f for k, f in full_by_seed.items()}},
                                   "mean_score": float(np.mean(np.abs(scores["full"])))}
        for name in [n for n, _ in AUROC_VARIANTS] + ["uncompressed", "two_stage"]:
            x = np.stack(inputs[name]).astype(np.float32)
            d_in = np.abs(x - ref).reshape(len(x), -1)
            per_mean, per_max = d_in.mean(1), d_in.max(1)
            ds = np.abs(scores[name] - scores["full"])
            a = float(metrics.image_auroc(y, scores[name]))
            worst = int(np.argmax(ds))
            cat_out[name] = {
                "auroc": a, "difference": a - a_full,
                "dct_scales": sorted(scales.get(name, {1})) if name != "two_stage" else [1],
                "difference_ci95": list(paired_auroc_diff_ci(y, scores["full"], scores[name])),
                "difference_by_seed": {str(seeds[0]): a - a_full, **{
                    str(k): float(metrics.image_auroc(y, v[name])) - full_by_seed[k] for k, v in by_seed.items()}},
                "input_mean_abs_diff": float(per_mean.mean()), "input_max_abs_diff": float(per_max.max()),
                "input_bias": float((x - ref).mean()),
                "mean_abs_score_change": float(ds.mean()), "p95_abs_score_change": float(np.percentile(ds, 95)),
                "corr_input_diff_score_change": float(np.corrcoef(per_mean, ds)[0, 1]) if ds.std() > 0 else 0.0,
                "worst_image": {"index": worst, "label": int(y[worst]), "score_change": float(ds[worst]),
                                "input_mean_abs_diff": float(per_mean[worst])}}
        out["categories"][cat] = cat_out
        print(f"{cat}: AUROC full {a_full:.4f}; " + "; ".join(
            f"{n} {cat_out[n]['auroc']:.4f} ({cat_out[n]['difference']:+.4f}, input |d| {cat_out[n]['input_mean_abs_diff']:.3f}, "
            f"score |d| {cat_out[n]['mean_abs_score_change']:.4f})" for n in [v for v, _ in AUROC_VARIANTS] + ["uncompressed", "two_stage"]),
            flush=True)
    return out


def decide_oversample(auroc: dict, bound: float = 0.005) -> dict:
    """The decode rule the AUROC run supports (rule written before the 3-seed run): per variant and
    category the mean difference to the full path over the seeds; a variant meets the bound if that
    mean is within ``bound`` on every category; the cheapest (coarsest) variant that meets it wins,
    else the one with the smallest worst-category mean, reported as a miss."""
    variants = dict(auroc["variants"])
    cats = auroc["categories"]
    means: dict[str, dict[str, float]] = {
        name: {c: float(np.mean(list(v[name].get("difference_by_seed", {"0": v[name]["difference"]}).values())))
               for c, v in cats.items()} for name in variants}
    worst = {name: max(abs(x) for x in m.values()) for name, m in means.items()}
    meeting = sorted((ov, name) for name, ov in variants.items() if worst[name] <= bound)
    chosen = meeting[0][1] if meeting else min(worst, key=lambda n: (worst[n], variants[n]))
    return {"means": means, "worst": worst, "chosen": chosen, "oversample": variants[chosen], "met": bool(meeting),
            "seeds": sorted({k for v in cats.values() for x in variants for k in v[x].get("difference_by_seed", {"0": 0})})}
