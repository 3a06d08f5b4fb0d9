"""Engines side by side in one run: throughput per batch size, latency, int8 accuracy change.

Yardstick: the frozen encoder alone in ONNX Runtime at the same input size (what any model on this
backbone must pay). Each full-model engine (PyTorch eager, ONNX Runtime fp32, ONNX Runtime int8,
OpenVINO fp32 on the same ONNX file, Triton via pytriton over gRPC) is reported as images/s and as a ratio of the yardstick at batch
1/4/8/16, on already pre-processed tensors (the shared resize is identical for all engines and is
timed separately). Latency p50/p99 at batch 1: one client, and 4 concurrent clients (local: one
shared session; Triton: dynamic batching). Accuracy: image AUROC on real test images of one
category, PyTorch vs ORT fp32 vs ORT int8.

    python benchmarks/bench_engines.py [--model MODEL_DIR] [--category ds/cat] [--iters 100]

Writes the ``engines`` section of benchmarks/RESULTS.md and benchmarks/results/engines.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS_DIR, WORK, data_root, fmt, machine, write_section

THREADS = 2
BATCHES = (1, 4, 8, 16)


def _rate(fn, batch: np.ndarray, min_s: float = 1.5, min_runs: int = 2) -> float:
    """images/s of ``fn(batch)`` after one warm-up call."""
    fn(batch)
    n, t0 = 0, time.perf_counter()
    while n < min_runs or time.perf_counter() - t0 < min_s:
        fn(batch)
        n += 1
    return n * batch.shape[0] / (time.perf_counter() - t0)


def _latency(fn, x1: np.ndarray, clients: int, per_client: int) -> dict[str, float]:
    lat: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        mine = []
        for _ in range(per_client):
            t0 = time.perf_counter()
            fn(x1)
            mine.append((time.perf_counter() - t0) * 1e3)
        with lock:
            lat.extend(mine)

    fn(x1)
    t0 = time.perf_counter()
    ts = [threading.Thread(target=worker) for _ in range(clients)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wall = time.perf_counter() - t0
    return {"p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
            "images_per_s": clients * per_client / wall}


def _model(args: argparse.Namespace, root: Path) -> tuple[Path, str]:
    from training.data import discover, load_split
    from training.train import TrainConfig, train

    cat = args.category or discover(root)[0]
    if args.model:
        return Path(args.model), cat
    import hashlib
    import json

    # Keyed by the default architecture too: a change of defaults must not reuse a stale model.
    arch = hashlib.sha1(json.dumps(TrainConfig().model.to_dict(), sort_keys=True).encode()).hexdigest()[:10]
    out = WORK / "engines" / cat.replace("/", "__") / f"model-{args.iters}-{arch}"
    if not (out / "checksums.json").is_file():
        items = list(load_split(root, cat, "train"))
        print(f"training a default-config model on {cat} ({len(items)} images, {args.iters} iterations) ...", flush=True)
        train([it.path for it in items], TrainConfig(threads=THREADS, cache_dir=str(WORK / "cache")), out,
              iters=args.iters, seed=0, progress=False)
    return out, cat


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model dir (default: train one, cached under benchmarks/_work)")
    ap.add_argument("--category", default=None)
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--test-images", type=int, default=80, help="test images for the AUROC comparison")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(THREADS)
    from deploy.triton_server import ActiveModel, ServerConfig, TritonModelServer, wait_ready
    from inference.engines.onnx_engine import make_session
    from inference.engines.triton_engine import TritonEngine
    from inference.model_dir import load_model_dir
    from inference.onnx_export import export_module, export_onnx
    from inference.preprocess import batch_to_input
    from inference.quantize import quantize_dynamic_int8
    from tests.integration.triton_fixtures import free_port
    from training import metrics
    from training.data import load_split

    t_start = time.perf_counter()
    root = data_root()
    model_dir, cat = _model(args, root)
    loaded = load_model_dir(model_dir)
    hw = loaded.input_hw
    cfg = loaded.module.cfg
    fp32 = export_onnx(model_dir)
    int8 = quantize_dynamic_int8(fp32)

    class _Enc(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = loaded.module.backbone

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return tuple(self.backbone(x))

    enc_path = WORK / "engines" / f"encoder-{cfg.backbone}-{hw[0]}x{hw[1]}.onnx"
    if not enc_path.is_file():
        n_out = len(loaded.module.backbone.blocks)
        export_module(_Enc(), enc_path, hw, tuple(f"f{i}" for i in range(n_out)))

    # --- real test images: preprocessed once, shared by every engine ----------------------
    test = list(load_split(root, cat, "test"))
    rng = np.random.default_rng(0)
    normal = [it for it in test if it.label == 0]
    bad = [it for it in test if it.label == 1]
    k = args.test_images // 2
    pick = sorted(rng.choice(len(normal), min(k, len(normal)), replace=False).tolist())
    pick_b = sorted(rng.choice(len(bad), min(args.test_images - len(pick), len(bad)), replace=False).tolist())
    items = [normal[i] for i in pick] + [bad[i] for i in pick_b]
    frames = [it.image() for it in items]
    labels = np.array([it.label for it in items])
    t0 = time.perf_counter()
    x_all = batch_to_input(frames, hw)
    pre_ms = (time.perf_counter() - t0) * 1e3 / len(frames)
    xb = {b: np.ascontiguousarray(np.resize(x_all, (b, *x_all.shape[1:]))) for b in BATCHES}

    s_enc, s_fp32, s_int8 = (make_session(p, THREADS) for p in (enc_path, fp32, int8))
    from inference.engines.openvino_engine import compile_onnx

    ov_model = compile_onnx(fp32, THREADS)
    ov_local = threading.local()  # an infer request serves one caller at a time: one per client thread

    def ov_run(x: np.ndarray) -> np.ndarray:
        req = getattr(ov_local, "req", None) or ov_model.create_infer_request()
        ov_local.req = req
        return np.array(req.infer({"images": x})[ov_model.output("score")])

    def torch_run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return loaded.module(torch.from_numpy(x))[1].numpy()

    def ort(sess):
        return lambda x: sess.run(None, {"images": x})[-1]

    # --- accuracy ---------------------------------------------------------------------------
    def scores_of(fn) -> np.ndarray:
        return np.concatenate([fn(x_all[i:i + 16]) for i in range(0, len(x_all), 16)]).reshape(-1)

    sc = {"pytorch": scores_of(torch_run), "ort_fp32": scores_of(ort(s_fp32)), "ort_int8": scores_of(ort(s_int8)),
          "openvino_fp32": scores_of(ov_run)}
    auroc = {k: float(metrics.image_auroc(labels, v)) for k, v in sc.items()}
    max_score_diff = {k: float(np.abs(v - sc["pytorch"]).max()) for k, v in sc.items() if k != "pytorch"}
    print(f"image AUROC on {len(items)} {cat} test images: {auroc}", flush=True)

    # --- Triton ------------------------------------------------------------------------------
    ports = free_port(), free_port(), free_port()
    server = TritonModelServer(lambda: {"bench": ActiveModel("bench", "bench", model_dir)},
                               ServerConfig(http_port=ports[0], grpc_port=ports[1], metrics_port=ports[2],
                                            max_batch=16, queue_delay_us=2000, threads=THREADS, poll_s=3600))
    server.start()
    wait_ready(f"http://127.0.0.1:{ports[0]}", 60)
    triton = TritonEngine(f"triton-grpc://127.0.0.1:{ports[1]}")
    triton.model_info("bench")

    def triton_run(x: np.ndarray) -> np.ndarray:
        return triton._request("bench", x, triton.model_info("bench"))[1]

    try:
        sc_triton = scores_of(triton_run)
        max_score_diff["triton"] = float(np.abs(sc_triton - sc["ort_fp32"]).max())
        engines = {"encoder only (ORT, yardstick)": ort(s_enc), "PyTorch eager": torch_run,
                   "ORT fp32": ort(s_fp32), "ORT int8": ort(s_int8),
                   "OpenVINO fp32": ov_run, "Triton (pytriton, gRPC)": triton_run}
        thr: dict[str, dict[int, float]] = {}
        for name, fn in engines.items():
            thr[name] = {b: _rate(fn, xb[b]) for b in BATCHES}
            print(f"{name}: " + ", ".join(f"b{b} {v:.1f}" for b, v in thr[name].items()) + " img/s", flush=True)
        lat = {"local ORT fp32": {c: _latency(ort(s_fp32), xb[1], c, 40 // c) for c in (1, 4)},
               "local OpenVINO fp32": {c: _latency(ov_run, xb[1], c, 40 // c) for c in (1, 4)},
               "Triton (gRPC)": {c: _latency(triton_run, xb[1], c, 40 // c) for c in (1, 4)}}
    finally:
        triton.close()
        server.stop()

    yard = thr["encoder only (ORT, yardstick)"]
    result = {"machine": machine(), "threads": THREADS, "category": cat, "model_dir": str(model_dir),
              "config": {"input_hw": list(hw), "grid": list(cfg.grid), "width": cfg.width,
                         "decoder_blocks": cfg.decoder_blocks, "backbone": cfg.backbone},
              "preprocess_ms_per_image": pre_ms, "throughput": {k: {str(b): v for b, v in d.items()} for k, d in thr.items()},
              "ratio_to_yardstick": {k: {str(b): v / yard[b] for b, v in d.items()} for k, d in thr.items()},
              "latency_batch1": {k: {str(c): v for c, v in d.items()} for k, d in lat.items()},
              "image_auroc": auroc, "n_test_images": len(items), "max_abs_score_diff": max_score_diff,
              "seconds": time.perf_counter() - t_start}
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "engines.json").write_text(json.dumps(result, indent=2) + "\n")

    lines = ["## Engines (`benchmarks/bench_engines.py`)", "",
             f"{machine()}; {THREADS} intra-op threads per engine; model: {cfg.backbone} {hw[0]}x{hw[1]} input, "
             f"{cfg.grid[0]}x{cfg.grid[1]} token grid, width {cfg.width}, {cfg.decoder_blocks} decoder blocks, trained "
             f"on {cat}. Images/s on pre-processed tensors (shared resize: {pre_ms:.2f} ms/image extra); "
             f"ratio = full model / encoder-only ORT at the same batch.", "",
             "| engine | " + " | ".join(f"b{b} img/s (x yardstick)" for b in BATCHES) + " |",
             "|---|" + "---|" * len(BATCHES)]
    for name, d in thr.items():
        lines.append(f"| {name} | " + " | ".join(f"{d[b]:.1f} ({d[b] / yard[b]:.2f}x)" for b in BATCHES) + " |")
    lines += ["", "Latency at batch 1 (ms), one client vs 4 concurrent clients:", "",
              "| engine | 1 client p50 / p99 | 4 clients p50 / p99 | 4 clients img/s |", "|---|---|---|---|"]
    for name, d in lat.items():
        lines.append(f"| {name} | {d[1]['p50_ms']:.1f} / {d[1]['p99_ms']:.1f} | {d[4]['p50_ms']:.1f} / "
                     f"{d[4]['p99_ms']:.1f} | {d[4]['images_per_s']:.1f} |")
    lines += ["", f"Image AUROC on {len(items)} real test images of {cat} (same preprocessed inputs): "
              + ", ".join(f"{k} {fmt(v)}" for k, v in auroc.items())
              + f"; int8 - PyTorch = {auroc['ort_int8'] - auroc['pytorch']:+.4f}, fp32 - PyTorch = "
              f"{auroc['ort_fp32'] - auroc['pytorch']:+.4f}. Max |score diff|: "
              + ", ".join(f"{k} {v:.2g}" for k, v in max_score_diff.items())
              + " (ORT vs PyTorch; Triton vs local ORT).", "",
              f"Run time {result['seconds']:.0f} s."]
    write_section("engines", "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
