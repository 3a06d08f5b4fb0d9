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
from pathlib import Path
from typing import Any

import numpy as np

CONFIGS = (("5 MP colour", (2048, 2448), False), ("5 MP mono", (2048, 2448), True),
           ("12 MP colour", (3000, 4096), False))
QUALITY = 92


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


def pipeline_run(urls: dict, model_dir: Path, threshold: float, frames: list, n: int, tmp: Path, tag: str) -> dict:
    """One consumer through Kafka: backlog fps, then latency while paced at 70 % of it, peak RSS."""
    from benchmarks.kafka_run import KafkaRun, RssSampler, steady_fps

    run = KafkaRun(urls, model_dir, threshold, tmp, tag)
    try:
        load = os.getloadavg()[0]
        pub_fps = run.publish(frames, 0, n)
        t_ready = run.start_consumers(1, 0, True)
        sampler = RssSampler([p.pid for p in run.procs])
        sampler.start()
        fps, counted = steady_fps(run.wait_rows(0, n, timeout_s=max(180, n * 2)), t_ready)
        paced = max(0.5, 0.7 * fps)
        n_lat = int(min(max(30, paced * 12), 150))
        t0 = time.perf_counter()
        held = run.publish(frames, n, n_lat, fps=paced)
        lat = np.array([ms for _t, ms in run.wait_rows(n, n + n_lat, timeout_s=max(120, n_lat / paced * 3))])
        rss = sampler.stop()
        return {"fps": fps, "frames": n, "frames_timed": counted, "publish_fps_backlog": pub_fps,
                "paced_fps": paced, "held_fps": held, "latency_frames": n_lat,
                "latency_wall_s": time.perf_counter() - t0,
                "latency_p50_ms": float(np.percentile(lat, 50)), "latency_p99_ms": float(np.percentile(lat, 99)),
                "consumer_rss_mb": rss, "load_avg": load}
    finally:
        run.close()


def run_camera(urls: dict, model_dir: Path, threshold_frames_pct: float, n: int, batch: int, per_category: int,
               tmp: Path) -> dict:
    """Every configuration of :data:`CONFIGS`; returns the ``camera`` JSON section (rows)."""
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
        pipe = pipeline_run(urls, model_dir, threshold, frames, n, tmp, f"cam{len(rows)}")
        rates_after = inprocess_rates(model_dir, frames, n, batch)
        bare = (rates["bare"] + rates_after["bare"]) / 2
        dm = (rates["decode_and_model"] + rates_after["decode_and_model"]) / 2
        full = (rates["full_decode"] + rates_after["full_decode"]) / 2
        rows.append({"config": name, "megapixels": hw[0] * hw[1] / 1e6, "hw": list(hw), "mono": mono,
                     "consumers": 1, "jpeg_quality": QUALITY, "jpeg_kb": float(np.mean([len(d) for _c, d, _s in frames])) / 1e3,
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
        print(f"{name}: fps {pipe['fps']:.1f}, bare {bare:.1f}, decode+model {dm:.1f}, full-decode+model {full:.1f}, "
              f"ratio {pipe['fps'] / bare:.2f}, to decode+model {pipe['fps'] / dm:.2f}, "
              f"p50/p99 {pipe['latency_p50_ms']:.0f}/{pipe['latency_p99_ms']:.0f} ms", flush=True)
    return {"rows": rows}


def run_auroc(iters: int, max_per_category: int, hw: tuple[int, int] = (2048, 2448)) -> dict:
    """Image AUROC per category, 5 MP frames decoded reduced vs decoded full then resized."""
    import hashlib
    import json

    import cv2
    from tqdm import tqdm

    from benchmarks.common import WORK, data_root
    from inference.engines.onnx_engine import OnnxEngine
    from inference.preprocess import resize_rgb
    from ingest.envelope import FrameEnvelope, decode_frame, decode_image, encode_image
    from training import metrics
    from training.data import discover, load_split
    from training.train import TrainConfig, train

    root = data_root()
    arch = hashlib.sha1(json.dumps(TrainConfig().model.to_dict(), sort_keys=True).encode()).hexdigest()[:10]
    out: dict[str, Any] = {"iters": iters, "hw": list(hw), "jpeg_quality": QUALITY, "categories": {}}
    for cat in discover(root):
        model_dir = WORK / "camera" / cat.replace("/", "__") / f"model-{iters}-{arch}"
        if not (model_dir / "checksums.json").is_file():
            items = list(load_split(root, cat, "train"))
            print(f"training a default-config model on {cat} ({len(items)} images, {iters} iterations) ...", flush=True)
            train([it.path for it in items], TrainConfig(threads=2, cache_dir=str(WORK / "cache")), model_dir,
                  iters=iters, seed=0, progress=False)
        test = list(load_split(root, cat, "test"))
        rng = np.random.default_rng(0)
        if len(test) > max_per_category:  # stratified: keep the good/defect mix
            good = [t for t in test if t.label == 0]
            bad = [t for t in test if t.label == 1]
            kg = max(1, round(max_per_category * len(good) / len(test)))
            test = ([good[i] for i in sorted(rng.choice(len(good), min(kg, len(good)), replace=False))]
                    + [bad[i] for i in sorted(rng.choice(len(bad), min(max_per_category - kg, len(bad)), replace=False))])
        eng = OnnxEngine(model_dir, batch_size=8)
        mhw = eng.input_hw
        red, red2, full, labels, scales = [], [], [], [], set()
        try:
            for it in tqdm(test, desc=f"AUROC {cat}"):
                big = cv2.resize(it.image(), (hw[1], hw[0]), interpolation=cv2.INTER_CUBIC)
                env = FrameEnvelope("p", "l", "c", 0, encode_image(big, "jpeg", QUALITY), "jpeg", big.shape)
                d = decode_frame(env, target_hw=mhw)
                scales.add(d.scale)
                red.append(d.image)
                red2.append(decode_frame(env, target_hw=mhw, oversample=2.0).image)  # the finer option
                full.append(resize_rgb(decode_image(env), mhw))
                labels.append(it.label)
            s_red = eng.infer("p", red).scores
            s_red2 = eng.infer("p", red2).scores
            s_full = eng.infer("p", full).scores
        finally:
            eng.close()
        y = np.asarray(labels)
        a_red, a_full = float(metrics.image_auroc(y, s_red)), float(metrics.image_auroc(y, s_full))
        a_red2 = float(metrics.image_auroc(y, s_red2))
        out["categories"][cat] = {"n": len(test), "defective": int(y.sum()), "auroc_reduced": a_red,
                                  "auroc_full": a_full, "difference": a_red - a_full,
                                  "mean_abs_score_change": float(np.mean(np.abs(s_red - s_full))),
                                  "mean_score": float(np.mean(np.abs(s_full))), "dct_scales": sorted(scales),
                                  "oversample2": {"auroc": a_red2, "difference": a_red2 - a_full,
                                                  "mean_abs_score_change": float(np.mean(np.abs(s_red2 - s_full)))}}
        print(f"{cat}: AUROC reduced {a_red:.4f} vs full {a_full:.4f} ({a_red - a_full:+.4f}); "
              f"at >= 2x the input {a_red2:.4f} ({a_red2 - a_full:+.4f})", flush=True)
    return out
