"""Camera-scale JPEG decode on the GPU (nvJPEG) against the CPU's DCT-scaled decode.

Needs a CUDA host (the lent GPU machine; CI never has one). Frames are real test images upscaled
(bicubic) to 5 MP and 12 MP and JPEG-encoded at q92; each path turns a batch of 8 encoded frames
into the model's float input tensor (``inference.gpu_decode.frames_to_input``), the GPU path with
only the compressed bytes crossing PCIe. Run it with ``--measure OUT.json`` on the GPU host, then
``--report OUT.json`` anywhere to write ``benchmarks/results/gpu_decode.json`` and the RESULTS.md
section.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from benchmarks.common import RESULTS_DIR, data_root, fmt, write_section
from inference.gpu_decode import frames_to_input
from ingest.envelope import FrameEnvelope, encode_image

SIZES = {"5mp": (2048, 2448), "12mp": (3000, 4000)}
HW = (256, 256)
BATCH = 8


def _frames(root: Path, hw: tuple[int, int], n: int) -> list[FrameEnvelope]:
    paths = sorted(root.glob("*/*/test/*/*.jpg"))[:: max(1, len(sorted(root.glob("*/*/test/*/*.jpg"))) // n)][:n]
    out = []
    for i, p in enumerate(paths):
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        big = cv2.resize(img, (hw[1], hw[0]), interpolation=cv2.INTER_CUBIC)
        out.append(FrameEnvelope("p", "l", "c", i, encode_image(big, "jpeg", 92), "jpeg"))
    return out


def _time(fn, reps: int) -> float:  # type: ignore[no-untyped-def]
    fn()  # warm-up (cuDNN/nvJPEG handles, allocator)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps


def measure(root: Path, reps: int) -> dict:
    rows = {}
    for name, hw in SIZES.items():
        envs = _frames(root, hw, BATCH)
        cpu_s = _time(lambda envs=envs: frames_to_input(envs, HW, "cpu"), reps)
        gpu_s = _time(lambda envs=envs: frames_to_input(envs, HW, "cuda"), reps)
        x_gpu, _, path = frames_to_input(envs, HW, "cuda")
        x_cpu, _, _ = frames_to_input(envs, HW, "cpu")
        rows[name] = {"megapixels": round(hw[0] * hw[1] / 1e6, 1), "batch": BATCH, "gpu_path": path,
                      "cpu_ms_per_frame": 1000 * cpu_s / BATCH, "gpu_ms_per_frame": 1000 * gpu_s / BATCH,
                      "speedup": cpu_s / gpu_s,
                      "input_mean_abs_diff": float((x_gpu.cpu() - x_cpu).abs().mean()),
                      "mean_jpeg_kb": float(np.mean([len(e.payload) for e in envs]) / 1024)}
    return {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
            "cpu_threads": torch.get_num_threads(), "reps": reps, "rows": rows}


class _PixelsOnly:
    """The same engine with its encoded path hidden: the consumer decodes on the CPU (the baseline)."""

    def __init__(self, engine: Any) -> None:
        self._e = engine
        self.name = "torch"

    def decode_hw(self, product: str) -> tuple[int, int] | None:
        return self._e.decode_hw(product)  # type: ignore[no-any-return]

    def infer(self, product: str, images: list[np.ndarray]) -> Any:
        return self._e.infer(product, images)

    def close(self) -> None:
        pass


def measure_consumer(root: Path, n_frames: int = 48, device: str = "cuda") -> dict:
    """Frames/s of the whole consumer (memory bus -> decode -> INP-Former on the GPU -> SQLite) with
    the JPEG decoded by nvJPEG on the device vs by the consumer on the CPU, same engine and frames.
    The model is an untrained default INP-Former (ImageNet EfficientNet-Lite0): speed does not
    depend on the weights."""
    import tempfile

    from inference.consumer import InferenceConsumer
    from inference.engines.torch_engine import TorchEngine
    from inference.model.inp_former import InpConfig, InpFormer
    from inference.model_dir import save_model_dir
    from inference.telemetry import ConsumerMetrics
    from ingest.bus.memory import MemoryBus, MemoryConsumer, MemoryPublisher
    from lineinspect.settings import Settings
    from storage.store import ResultStore

    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        mdir = save_model_dir(t / "m", InpFormer(InpConfig()), {"categories": ["p/p"], "seed": 0}, {"threshold": 1.0})
        engine = TorchEngine(mdir, device=device, batch_size=BATCH)
        sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
        for name, hw in SIZES.items():
            envs = _frames(root, hw, BATCH)
            for mode, eng in (("gpu_decode", engine), ("cpu_decode", _PixelsOnly(engine))):
                settings = Settings(home=t / f"h_{name}_{mode}", batch_max_records=BATCH, batch_max_wait_ms=50,
                                    topic_frames="frames", topic_dlq="frames.dlq", keep_normal_margin=0.0)
                store = ResultStore.open(f"sqlite:///{t / f'{name}_{mode}.sqlite'}")
                bus = MemoryBus(partitions=1)
                pub = MemoryPublisher(bus, settings.topic_frames)
                for i in range(n_frames + BATCH):  # the first batch warms up (cuDNN, nvJPEG handles)
                    e = envs[i % len(envs)]
                    pub.publish(*FrameEnvelope("p", "l", "c", i, e.payload, "jpeg").to_message())
                c = InferenceConsumer(settings, MemoryConsumer(bus, settings.topic_frames, "g", settings.topic_dlq),
                                      eng, store, None, ConsumerMetrics(settings),  # type: ignore[arg-type]
                                      backoff_initial_s=0.01, backoff_max_s=0.05)
                c.run(max_frames=BATCH, idle_timeout_s=5)
                sync()
                t0 = time.perf_counter()
                done = c.run(max_frames=n_frames, idle_timeout_s=5)
                sync()
                wall = time.perf_counter() - t0
                c.close()
                engines = {r["engine"] for r in (store.get_result("c", i) for i in range(BATCH, n_frames + BATCH))
                           if r is not None}
                rows[f"{name}_{mode}"] = {"frames": done, "fps": done / wall, "stored": store.count_results(),
                                          "engine_names": sorted(engines)}
                store.close()
    return {"frames_per_run": n_frames, "batch": BATCH, "rows": rows}


def report(res: dict) -> None:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "gpu_decode.json").write_text(json.dumps(res, indent=2) + "\n")
    lines = ["## GPU decode (nvJPEG) vs CPU DCT-scaled decode",
             "",
             f"`benchmarks/bench_gpu_decode.py` on the lent GPU host ({res['device']}, torch {res['torch']}, "
             f"{res['cpu_threads']} CPU threads for the CPU path; not this project's 2-core machine). Encoded batch of "
             f"{BATCH} real test images upscaled (bicubic) and JPEG q92 -> the model's 256x256 float input. "
             "Both paths in the same process, interleaved, each the mean of the repetitions after a warm-up.",
             "",
             "| frames | JPEG kB | CPU ms/frame | GPU ms/frame | GPU speed-up | mean abs input difference |",
             "|---|---|---|---|---|---|"]
    for name, r in res["rows"].items():
        lines.append(f"| {name} ({r['megapixels']} MP) | {r['mean_jpeg_kb']:.0f} | {fmt(r['cpu_ms_per_frame'], 1)} | "
                     f"{fmt(r['gpu_ms_per_frame'], 1)} | {fmt(r['speedup'], 2)}x | {fmt(r['input_mean_abs_diff'], 4)} |")
    if "consumer" in res:
        cons = res["consumer"]
        lines += ["", f"Whole consumer on the same host (memory bus -> decode -> INP-Former on the GPU, untrained default "
                  f"model, batch {cons['batch']} -> SQLite; {cons['frames_per_run']} frames after one warm-up batch, "
                  "same engine and frames, the JPEG decoded by nvJPEG on the device or by the consumer on the CPU):", "",
                  "| frames | CPU decode frames/s | GPU decode frames/s | ratio | engine names stored |", "|---|---|---|---|---|"]
        for name in SIZES:
            g, c = cons["rows"][f"{name}_gpu_decode"], cons["rows"][f"{name}_cpu_decode"]
            lines.append(f"| {name} | {fmt(c['fps'], 1)} | {fmt(g['fps'], 1)} | {fmt(g['fps'] / c['fps'], 2)}x | "
                         f"{', '.join(g['engine_names'])} / {', '.join(c['engine_names'])} |")
    write_section("gpu_decode", "\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--measure", type=Path, help="measure on this (CUDA) host and write the raw JSON here")
    ap.add_argument("--report", type=Path, help="render a measured JSON into results/ and RESULTS.md")
    ap.add_argument("--reps", type=int, default=10)
    a = ap.parse_args()
    if a.measure:
        if not torch.cuda.is_available():
            raise SystemExit("bench_gpu_decode: no CUDA device here; run --measure on a GPU host")
        res = measure(data_root(), a.reps)
        a.measure.write_text(json.dumps(res, indent=2) + "\n")  # the decode figures survive a consumer failure
        res["consumer"] = measure_consumer(data_root())
        a.measure.write_text(json.dumps(res, indent=2) + "\n")
    if a.report:
        report(json.loads(a.report.read_text()))


if __name__ == "__main__":
    main()
