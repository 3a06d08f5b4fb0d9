"""End-to-end pipeline throughput, latency and memory vs the bare model, on the real services.

One run measures, on the same real frames (JPEG, as cameras send them):
  1. the bare model: the local engine (ONNX Runtime, all cores, the consumer's default batch) on
     decoded frames, no bus or storage; measured before *and* after the pipeline runs, because
     the machine is shared and its load drifts;
  2. one consumer process (``lineinspect consume``): a backlog of frames published to Kafka is
     drained through decode -> engine -> PostgreSQL -> Redis -> commit; steady-state frames/s
     come from the rows' ``stored_at`` (first stored batch to last), so process start-up is
     excluded; then frames are published at a camera's pace (70 % of that throughput) and the
     rows' ``latency_ms`` (capture -> stored) give p50 / p99. Once pipelined (the default: a sink
     thread stores batch k while batch k+1 is scored) and once serial (``--no-pipeline``);
  3. the same with two consumer processes in one group (one intra-op thread each);
  4. in-process variants on the memory bus with the real PostgreSQL + Redis (serial, pipelined,
     pipelined with a 2-thread JPEG decode pool), each next to a bare-model run, which isolates
     the consumer's own overlap from Kafka and process start-up.
Memory is the peak RSS of the consumer processes and the RSS of PostgreSQL, Redis and Kafka.

Services are started with ``deploy/services.sh`` when they are not running (and stopped again
afterwards if this script started them). Writes the ``pipeline`` section of RESULTS.md and
``results/pipeline.json``. ``python benchmarks/bench_pipeline.py [--frames 320]``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import camera_section as cam
from benchmarks.common import REPO, RESULTS_DIR, WORK, data_root, machine, write_section
from benchmarks.kafka_run import KafkaRun, RssSampler, steady_fps, tree_rss_mb

if TYPE_CHECKING:  # types only: the benchmark imports the heavy modules where it runs them
    from inference.pipeline import Pipeline
    from ingest.bus.base import BatchConsumer
    from lineinspect.settings import Settings

SERVICES = ("postgres", "redis", "kafka")
ARCHS = {  # small = the engines benchmark's model; default = what `lineinspect train` builds
    "small": dict(input_hw=(128, 128), width=64, decoder_blocks=2),
    "default": {},
}


# --- services ----------------------------------------------------------------------------------------
def services_sh(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "deploy" / "services.sh"), *args], capture_output=True, text=True,
                          timeout=180)


def ensure_services() -> tuple[dict[str, str], list[str]]:
    """URLs of the running services; the names this call had to start."""
    started = []
    for name in SERVICES:
        if services_sh("status", name).returncode != 0:
            r = services_sh("start", name)
            if r.returncode != 0:
                sys.exit(f"bench_pipeline: cannot start {name}:\n{r.stderr[-2000:]}")
            started.append(name)
    urls = dict(re.findall(r"LINEINSPECT_TEST_(\w+)_URL=(\S+)", services_sh("env").stdout))
    return {k.lower(): v for k, v in urls.items()}, started


def service_pids() -> dict[str, int]:
    out = {}
    for name in SERVICES:
        m = re.search(r"pid=(\d+)", services_sh("status", name).stdout)
        if m:
            out[name] = int(m.group(1))
    return out


# --- frames and model ------------------------------------------------------------------------------
def real_frames(per_category: int) -> list[tuple[str, bytes, tuple[int, ...]]]:
    """[(category, JPEG bytes, shape)] of real test images, good and defective, every category."""
    from benchmarks.common import sampled_test_rgb
    from ingest.envelope import encode_image

    root = data_root()
    out = [(cat, encode_image(rgb, "jpeg", 92), rgb.shape) for cat, rgb in sampled_test_rgb(per_category)]
    if not out:
        sys.exit(f"bench_pipeline: no real data under {root} (set LINEINSPECT_DATA)")
    return out


def build_model(arch: str) -> Path:
    import torch

    from inference.engines.onnx_engine import OnnxEngine
    from inference.model.inp_former import InpConfig, InpFormer
    from inference.model_dir import save_model_dir

    d = WORK / "pipeline" / f"model-{arch}"
    if not (d / "model.onnx").is_file():
        torch.manual_seed(0)  # untrained: throughput does not depend on what the weights learned
        save_model_dir(d, InpFormer(InpConfig(**ARCHS[arch])), {}, {"threshold": 1.0})
        OnnxEngine(d).close()  # export model.onnx once
    return d


def decode_all(frames: list[tuple[str, bytes, tuple[int, ...]]]) -> list[np.ndarray]:
    from ingest.envelope import FrameEnvelope, decode_image

    return [decode_image(FrameEnvelope("p", "l", "c", i, data, "jpeg", shape)) for i, (_c, data, shape) in enumerate(frames)]


def bare_fps(model_dir: Path, images: list[np.ndarray], n: int, batch: int, threads: int = 0) -> float:
    """Frames/s of the local engine alone, ``batch`` frames a call, after one warm-up batch."""
    from inference.engines.onnx_engine import OnnxEngine

    eng = OnnxEngine(model_dir, threads=threads)
    try:
        eng.infer("p", images[:batch])
        t0, done = time.perf_counter(), 0
        while done < n:
            chunk = [images[(done + i) % len(images)] for i in range(batch)]
            eng.infer("p", chunk)
            done += batch
        return done / (time.perf_counter() - t0)
    finally:
        eng.close()


def calibrate(model_dir: Path, images: list[np.ndarray], q: float = 90.0) -> tuple[float, float]:
    """A threshold flagging ~10 % of the frames, so masks, heatmaps and kept frames get written, and the
    frames' highest score (the drift check's held-out p99 stand-in: ``KafkaRun``)."""
    from inference.engines.onnx_engine import OnnxEngine

    eng = OnnxEngine(model_dir)
    try:
        scores = eng.infer("p", images).scores
        return float(np.percentile(scores, q)), float(np.max(scores))
    finally:
        eng.close()


# --- one pipeline configuration ----------------------------------------------------------------------
def _pipeline(s: Settings, bus: BatchConsumer, **consumer_options: Any) -> Pipeline:
    """The production wiring (:func:`inference.pipeline.build_pipeline`) with what a measurement
    needs: a non-polling router (no registry thread competing for the cores), a Redis prefix of
    its own, no periodic health rows and no post-store steps (drift, families), as before they
    existed, so figures stay comparable."""
    from inference.pipeline import build_pipeline
    from inference.router import ModelRouter
    from storage.redis_cache import RedisCache

    return build_pipeline(s, bus, cache=RedisCache(s.cache_url, prefix=f"li-bench-{uuid.uuid4().hex[:6]}:"),
                          build_engine=lambda st, reg: ModelRouter(st, reg, poll_s=0, start=False),
                          stat_interval_s=3600, post_store=[], **consumer_options)


def measure(urls: dict, model_dir: Path, threshold: tuple[float, float], frames: list, n: int, consumers: int, threads: int,
            tmp: Path, pipelined: bool = True) -> dict:
    run = KafkaRun(urls, model_dir, threshold[0], tmp, f"c{consumers}{'p' if pipelined else 's'}", p99=threshold[1])
    try:
        load = os.getloadavg()[0]
        pub_fps = run.publish(frames, 0, n)  # the backlog is in Kafka before any consumer runs
        t_ready = run.start_consumers(consumers, threads, pipelined)
        sampler = RssSampler([p.pid for p in run.procs])
        sampler.start()
        fps, counted = steady_fps(run.wait_rows(0, n, timeout_s=max(120, n / 2)), t_ready)
        paced = max(1.0, 0.7 * fps)
        n_lat = int(min(max(60, paced * 15), 400))
        run.publish(frames, n, n_lat, fps=paced)
        lat = np.array([ms for _t, ms in run.wait_rows(n, n + n_lat, timeout_s=120)])
        rss = sampler.stop()
        return {"consumers": consumers, "threads_each": threads, "pipelined": pipelined, "load_avg": load,
                "frames": n, "frames_timed": counted,
                "publish_fps": pub_fps,
                "pipeline_fps": fps, "paced_fps": paced, "latency_frames": n_lat,
                "latency_p50_ms": float(np.percentile(lat, 50)), "latency_p99_ms": float(np.percentile(lat, 99)),
                "consumer_rss_mb": rss}
    finally:
        run.close()


def stage_breakdown(urls: dict, model_dir: Path, threshold: tuple[float, float], frames: list, n: int, threads: int,
                    tmp: Path) -> dict:
    """Where one consumer's time goes: the same consumer code in-process on the memory bus, profiled.

    The serial consumer (``pipelined=False``): cProfile sees only the calling thread, and the
    question is what each stage costs, not how they overlap."""
    import cProfile
    import pstats

    from ingest.bus.memory import MemoryBus, MemoryConsumer
    from ingest.envelope import FrameEnvelope

    run = KafkaRun(urls, model_dir, threshold[0], tmp, "profile", p99=threshold[1])
    s = run.s.with_overrides(threads=threads)
    bus = MemoryBus(s.topic_partitions)
    for i in range(n):
        _c, data, shape = frames[i % len(frames)]
        bus.produce(s.topic_frames, *FrameEnvelope(run.product, "L1", f"cam-{i % 4}", i, data, "jpeg",
                                                   tuple(shape)).to_message())
    pipe = _pipeline(s, MemoryConsumer(bus, s.topic_frames, "g", dlq_topic=s.topic_dlq), pipelined=False)
    consumer = pipe.consumer
    prof = cProfile.Profile()
    try:
        t0 = time.perf_counter()
        prof.enable()
        consumer.run(max_frames=n)
        prof.disable()
        total = time.perf_counter() - t0
    finally:
        pipe.close()
        run.close()
    stats = pstats.Stats(prof).stats  # {(file, line, func): (cc, nc, tt, ct, callers)}

    def cum(file_end: str, func: str) -> float:
        return sum(v[3] for (f, _l, fn), v in stats.items() if f.endswith(file_end) and fn == func)

    parts = {"engine (resize + ONNX Runtime)": cum("onnx_engine.py", "infer"),
             "JPEG decode": cum("envelope.py", "decode_frame"),
             "verdict, mask / heatmap PNG": cum("consumer.py", "_row"),
             "PostgreSQL write": cum("store.py", "save_results"),
             "Redis update": cum("redis_cache.py", "record_results")}
    parts["bus, commit, rest"] = max(0.0, total - sum(parts.values()))
    return {"frames": n, "threads": threads, "fps": n / total, "seconds": total,
            "share": {k: v / total for k, v in parts.items()}}


VARIANTS = {  # name -> (engine intra-op threads, 0 = all cores; InferenceConsumer keyword arguments)
    "serial, all cores": (0, dict(pipelined=False)),
    "pipelined, all cores": (0, dict(pipelined=True)),
    "serial, 1 engine thread": (1, dict(pipelined=False)),
    "pipelined, 1 engine thread": (1, dict(pipelined=True)),
    "pipelined, 1 engine thread, decode pool 2": (1, dict(pipelined=True, decode_threads=2)),
}


def inprocess_variants(urls: dict, model_dir: Path, threshold: tuple[float, float], frames: list, images: list, n: int, batch: int,
                       tmp: Path, reps: int = 2) -> dict:
    """Frames/s of consumer variants in-process (memory bus, real PostgreSQL + Redis), each as a
    ratio to a bare-model run with the same engine threads just before it (the load drifts)."""
    from ingest.bus.memory import MemoryBus, MemoryConsumer
    from ingest.envelope import FrameEnvelope

    warm = 2 * batch  # first batches load the model and open connections
    out: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    for r in range(reps):
        for vi, (name, (threads, kw)) in enumerate(VARIANTS.items()):
            bare = bare_fps(model_dir, images, n, batch, threads=threads)
            run = KafkaRun(urls, model_dir, threshold[0], tmp, f"v{r}{vi}", p99=threshold[1])
            run.s = run.s.with_overrides(threads=threads)
            bus = MemoryBus(run.s.topic_partitions)
            for i in range(n + warm):
                _c, data, shape = frames[i % len(frames)]
                bus.produce(run.s.topic_frames, *FrameEnvelope(run.product, "L1", f"cam-{i % 4}", i, data, "jpeg",
                                                               tuple(shape)).to_message())
            pipe = _pipeline(run.s, MemoryConsumer(bus, run.s.topic_frames, "g"), **kw)
            consumer = pipe.consumer
            try:
                consumer.run(max_frames=warm)
                t0 = time.perf_counter()
                handled = consumer.run(max_frames=n)
                fps = handled / (time.perf_counter() - t0)
            finally:
                pipe.close()
                run.close()
            out[name].append({"fps": fps, "bare_fps": bare, "ratio": fps / bare, "load_avg": os.getloadavg()[0]})
    return {name: {"threads": VARIANTS[name][0], "runs": runs, "fps": float(np.mean([x["fps"] for x in runs])),
                   "bare_fps": float(np.mean([x["bare_fps"] for x in runs])),
                   "ratio": float(np.mean([x["ratio"] for x in runs]))} for name, runs in out.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=320, help="backlog frames per configuration")
    ap.add_argument("--per-category", type=int, default=8, help="distinct real frames per category")
    ap.add_argument("--arch", choices=sorted(ARCHS), default="small")
    ap.add_argument("--batch", type=int, default=None, help="engine batch (default: the consumer's batch_max_records)")
    ap.add_argument("--camera", action="store_true", help="only the camera-scale section (issue 14): 5/12 MP frames")
    ap.add_argument("--camera-frames", type=int, default=240, help="backlog frames per camera configuration")
    ap.add_argument("--camera-decode-threads", type=int, default=None,
                    help="the consumer's decode_threads in the camera runs (default: the settings' default)")
    ap.add_argument("--camera-decode-ahead", choices=("settings", "on", "off"), default="settings",
                    help="the consumer's decode_ahead in the camera runs (settings: its default)")
    ap.add_argument("--camera-ahead-ab", action="store_true",
                    help="also run each camera consumer with the other decode_ahead, in alternating order")
    ap.add_argument("--camera-auroc", action="store_true", help="only the camera section's AUROC check")
    ap.add_argument("--auroc-iters", type=int, default=200, help="training iterations of the AUROC models (200 = the default)")
    ap.add_argument("--auroc-max-per-category", type=int, default=0, help="0 = the whole test set")
    ap.add_argument("--auroc-categories", nargs="*", default=None, help="only these categories (added to the others)")
    ap.add_argument("--auroc-hw", type=int, nargs=2, default=[2048, 2448], metavar=("H", "W"),
                    help="sensor size of the AUROC frames; other than 5 MP the results go under camera.auroc_HxW")
    ap.add_argument("--auroc-seeds", type=int, nargs="+", default=[0],
                    help="training seeds of the AUROC models: the first gives the table, the others its seed column")
    args = ap.parse_args()
    if args.camera or args.camera_auroc:
        return camera_main(args)
    t_start = time.time()
    os.environ.setdefault("LINEINSPECT_LOG_LEVEL", "WARNING")
    from lineinspect.settings import Settings

    batch = args.batch or Settings().batch_max_records
    urls, started = ensure_services()
    tmp = WORK / "pipeline" / f"run-{uuid.uuid4().hex[:6]}"
    try:
        frames = real_frames(args.per_category)
        images = decode_all(frames)
        model_dir = build_model(args.arch)
        threshold = calibrate(model_dir, images)
        load0 = os.getloadavg()[0]
        runs = []
        # (consumers, engine threads each, pipelined); each Kafka run sits between two bare runs with the
        # engine threads of a single consumer, and its ratio uses their mean (the load on a shared box drifts)
        for consumers, threads, pipelined in ((1, 0, False), (1, 0, True), (1, 1, False), (1, 1, True), (2, 1, True)):
            bare_threads = threads if consumers == 1 else 0  # two 1-thread consumers vs the model on all cores
            before = bare_fps(model_dir, images, args.frames, batch, threads=bare_threads)
            got = measure(urls, model_dir, threshold, frames, args.frames, consumers=consumers, threads=threads,
                          tmp=tmp, pipelined=pipelined)
            after = bare_fps(model_dir, images, args.frames, batch, threads=bare_threads)
            runs.append({**got, "bare_threads": bare_threads, "bare_fps_before": before, "bare_fps_after": after,
                         "bare_fps": (before + after) / 2, "ratio_to_bare": got["pipeline_fps"] / ((before + after) / 2)})
        variants = inprocess_variants(urls, model_dir, threshold, frames, images, min(args.frames, 240), batch, tmp)
        bare_1t = bare_fps(model_dir, images, args.frames // 2, batch, threads=1)
        profile = stage_breakdown(urls, model_dir, threshold, frames, min(args.frames, 160), 1, tmp)
        bare_1t_after = bare_fps(model_dir, images, args.frames // 2, batch, threads=1)
        services_mb = {k: tree_rss_mb(pid) for k, pid in service_pids().items()}
        load1 = os.getloadavg()[0]
    finally:
        for name in started:
            services_sh("stop", name)
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    result = {
        "date": time.strftime("%Y-%m-%d"), "machine": machine(), "arch": args.arch, "batch": batch,
        "frames": len(frames), "load_avg": [load0, load1], "runs": runs,
        "inprocess_variants": variants,
        "bare_fps_1thread": bare_1t, "bare_fps_1thread_after": bare_1t_after,
        "profile_1thread": {**profile, "ratio_to_bare": profile["fps"] / ((bare_1t + bare_1t_after) / 2)},
        "services_rss_mb": services_mb, "seconds": time.time() - t_start,
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / "pipeline.json"
    if path.is_file() and "camera" in (prev := json.loads(path.read_text())):
        result["camera"] = prev["camera"]  # the camera section has its own runs (--camera): kept, not dropped
    path.write_text(json.dumps(result, indent=2) + "\n")
    write_section("pipeline", render(result))
    print(render(result))
    return 0


def camera_main(args: argparse.Namespace) -> int:
    """The ``camera`` section of pipeline.json and RESULTS.md (see benchmarks/camera_section.py)."""
    from lineinspect.settings import Settings

    os.environ.setdefault("LINEINSPECT_LOG_LEVEL", "WARNING")
    path = RESULTS_DIR / "pipeline.json"
    result = json.loads(path.read_text()) if path.is_file() else {}
    section = result.get("camera", {})
    t0 = time.time()
    load0 = os.getloadavg()[0]
    if args.camera_auroc:
        hw = (int(args.auroc_hw[0]), int(args.auroc_hw[1]))
        key = "auroc" if hw == (2048, 2448) else f"auroc_{hw[0]}x{hw[1]}"
        got = cam.run_auroc(args.auroc_iters, args.auroc_max_per_category, hw=hw, categories=args.auroc_categories,
                            seeds=tuple(args.auroc_seeds))
        prev = section.get(key, {})
        if args.auroc_categories and prev.get("iters") == got["iters"] and "variants" in prev:
            prev["categories"].update(got["categories"])  # a run over some categories adds to the others
            got["categories"] = prev["categories"]
        section[key] = got
    if args.camera:
        batch = args.batch or Settings().batch_max_records
        urls, started = ensure_services()
        tmp = WORK / "pipeline" / f"camera-{uuid.uuid4().hex[:6]}"
        try:
            ahead = Settings().decode_ahead if args.camera_decode_ahead == "settings" else args.camera_decode_ahead == "on"
            got = cam.run_camera(urls, build_model("default"), 90.0, args.camera_frames, batch, 2, tmp,
                                 decode_threads=args.camera_decode_threads or Settings().decode_threads, decode_ahead=ahead,
                                 ahead_ab=args.camera_ahead_ab)
        finally:
            for name in started:
                services_sh("stop", name)
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        if section.get("rows"):  # the run before this one becomes an earlier run (newest first)
            section["earlier_runs"] = [earlier_run(section), *section.get("earlier_runs", [])]
        section.update(got, batch=batch, arch="default", machine=machine(), date=time.strftime("%Y-%m-%d"),
                       finished=time.strftime("%Y-%m-%d %H:%M"))
    section.setdefault("load_avg", {})[("auroc" if args.camera_auroc and not args.camera else "throughput")] = [
        load0, os.getloadavg()[0]]
    section["seconds_last_run"] = time.time() - t0
    result = json.loads(path.read_text()) if path.is_file() else {}  # re-read: another section may have landed
    fresh = result.get("camera", {})
    fresh.update({k: v for k, v in section.items() if k != "load_avg"})
    fresh.setdefault("load_avg", {}).update(section.get("load_avg", {}))
    section = result["camera"] = fresh
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    text = render_camera(section)
    write_section("camera", text)
    print(text)
    return 0


def earlier_run(section: dict) -> dict:
    """The summary of a camera run that a newer one replaces: per configuration the rates and ratios."""
    r0 = section["rows"][0]
    when = (f"{section.get('finished', section.get('date', '?'))}, {r0['pipeline']['frames']} frames, decode_threads "
            f"{r0.get('decode_threads', 1)}, decode_ahead {'on' if r0['pipeline'].get('decode_ahead') else 'off'}, "
            f"DCT 1/{r0.get('dct_scale', '?')}")
    keys = ("fps", "bare_fps", "decode_and_model_fps", "ratio", "ratio_to_decode_and_model", "decode_ahead_ab")
    return {"when": when, "load_avg": section.get("load_avg", {}).get("throughput", [0.0, 0.0]),
            "rows": {r["config"]: {k: r[k] for k in keys if k in r} for r in section["rows"]}}


def render_mono_ab(pairs: list[tuple[dict, dict]]) -> str:
    """The 5 MP mono consumer's own CPU per frame, the commit before vs after (profile_camera_consumer.py --src)."""
    def med(key: str, side: int, thread: str | None = None) -> float:
        vals = [(p[side]["thread_cpu_s_per_frame"].get(thread, 0.0) if thread else p[side][key]) for p in pairs]
        return float(np.median(vals)) * (1.0 if key.startswith("cpu_ratio") else 1e3)

    sink = next((k for k in pairs[0][0]["thread_cpu_s_per_frame"] if k.endswith("consumer-sink")), None)
    loads = [r["load_avg"] for p in pairs for r in p]
    each = "; ".join(f"{o['consumer_cpu_s_per_frame'] * 1e3:.1f} -> {n['consumer_cpu_s_per_frame'] * 1e3:.1f}" for o, n in pairs)
    svc = lambda side: float(np.median([sum(p[side]["services_cpu_s_per_frame"].values()) for p in pairs])) * 1e3  # noqa: E731
    text = (f"5 MP mono, the consumer's own per-frame work (`benchmarks/profile_camera_consumer.py --src`, the commit before "
            f"({pairs[0][0].get('src_commit', 'before')}) and after ({pairs[0][1].get('src_commit', 'after')}) each exported "
            f"and run on the same services, model and frames, {len(pairs)} interleaved rounds of {pairs[0][0]['frames']} "
            f"frames, load average {min(loads):.1f}-{max(loads):.1f}; CPU time from /proc, medians): consumer process "
            f"{med('consumer_cpu_s_per_frame', 0):.1f} -> {med('consumer_cpu_s_per_frame', 1):.1f} ms per frame (rounds: {each}); "
            f"decode + model alone, same code, in-process {med('decode_and_model_cpu_s_per_frame', 0):.1f} -> "
            f"{med('decode_and_model_cpu_s_per_frame', 1):.1f} ms; ")
    if sink:
        text += (f"the storage thread (rows, PostgreSQL, Redis, drift) {med('', 0, sink):.2f} -> {med('', 1, sink):.2f} ms; ")
    text += (f"CPU ratio decode+model / consumer {med('cpu_ratio_consumer_process_only', 0):.2f} -> "
             f"{med('cpu_ratio_consumer_process_only', 1):.2f} ({med('cpu_ratio_to_decode_and_model', 0):.2f} -> "
             f"{med('cpu_ratio_to_decode_and_model', 1):.2f} counting the shared PostgreSQL/Redis/Kafka servers' CPU, "
             f"{svc(0):.1f} -> {svc(1):.1f} ms per frame, which other engineers' tests also use). Cut: the model input written in "
             "place (a mono frame is scaled once and copied to the three planes: 0.7 -> 0.05 ms), executemany inserts "
             "(one cached multi-row INSERT instead of compiling `.values(list)` per batch), every drifting camera's kept "
             "frames in one transaction and statement, heatmap PNG at zlib level 1 (same pixels), the drift step's "
             "bootstrap draws memoised and its medians by partition (bitwise the same). Scores, maps, verdicts, "
             "areas and heatmap pixels of the 5 MP colour and mono frames are bitwise those of the commit before; "
             "the heatmap PNG bytes are larger (~13 kB instead of ~9 kB per flagged frame). CPU time still moves "
             "with the load (a round's pair can differ by 4 ms); the storage thread's CPU is the steadiest measure "
             "of the consumer's own work.")
    return text


def render_mono_steps(pairs: list[tuple[dict, dict]]) -> str:
    """Per-step thread CPU of the 5 MP mono consumer in one process, before vs after (profile_camera_steps.py)."""
    def med(side: int, *keys: str) -> float:
        return float(np.median([sum(p[side]["steps_cpu_ms_per_frame"].get(k, 0.0) for k in keys) for p in pairs]))

    def total(side: int, key: str) -> float:
        return float(np.median([p[side][key] for p in pairs]))

    parts = (("rows (mask, heatmap PNG)", ("_row",)), ("PostgreSQL results", ("_save",)),
             ("drift step with its kept frames", ("_post_store",)), ("Redis", ("_update_cache",)),
             ("engine call (input + ONNX Runtime's calling thread)", ("_infer",)), ("decode", ("_decode",)))
    loads = [r["load_avg"] for p in pairs for r in p]
    return (f"Per step, in one process (`benchmarks/profile_camera_steps.py --src`: the production consumer on the "
            f"memory bus with the real PostgreSQL + Redis, thread CPU per step, same commits, {len(pairs)} interleaved "
            f"rounds of {pairs[0][0]['frames']} 5 MP mono frames, load {min(loads):.1f}-{max(loads):.1f}, medians, ms per "
            f"frame): storage thread's steps {total(0, 'storage_steps_cpu_ms_per_frame'):.2f} -> "
            f"{total(1, 'storage_steps_cpu_ms_per_frame'):.2f}; "
            + "; ".join(f"{label} {med(0, *keys):.2f} -> {med(1, *keys):.2f}" for label, keys in parts)
            + f"; process {total(0, 'process_cpu_ms_per_frame'):.1f} -> {total(1, 'process_cpu_ms_per_frame'):.1f}.")


def render_camera(c: dict) -> str:
    lines = ["## Camera-scale frames (issue 14; `python benchmarks/bench_pipeline.py --camera --camera-auroc`)", ""]
    if c.get("rows"):
        lines += [
            f"{c['machine']}, {c['date']}; load average during the throughput runs "
            f"{c['load_avg'].get('throughput', [0, 0])[0]:.1f} -> {c['load_avg'].get('throughput', [0, 0])[1]:.1f} "
            "(2 cores shared with other engineers' jobs: absolute figures move, ratios are side by side in one run). "
            f"Model: the default INP-Former architecture (256x256 input, untrained weights: throughput does not "
            f"depend on them), ONNX Runtime on all cores, batch {c['batch']}. Frames: real test images of every "
            "category (2 per category, good and defective), upscaled bicubic to the sensor size, gray for the "
            "mono camera, JPEG q92. One consumer process (`lineinspect consume`, `local://onnx`, with its production "
            "post-store steps: drift checks and defect families), Kafka -> PostgreSQL + Redis, threshold at the "
            "frames' 90th percentile (~10 % flagged: mask, heatmap and the original JPEG stored, the families step "
            f"embeds them); backlog of {c['rows'][0]['frames'] if 'frames' in c['rows'][0] else c['rows'][0]['pipeline']['frames']} "
            f"frames, fps counted after the first {c['rows'][0]['pipeline'].get('warmup_frames', 0)} rows (model warm-up, the families "
            "step loading its model); latency: frames published at 70 % of that fps for "
            f"{c['rows'][0]['pipeline']['latency_frames'] / max(c['rows'][0]['pipeline']['paced_fps'], 1e-9):.0f} s.",
            "",
            "| frames | MP | JPEG kB | DCT scale | consumer fps (Kafka->PG+Redis) | bare model fps | decode+model fps | "
            "ratio (fps/bare) | ratio_to_decode_and_model | full_decode: decode+model fps (x bare) | decode ms reduced / full | "
            "p50 / p99 ms at 70 % | consumer RSS MB |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in c["rows"]:
            fd = r["full_decode"]
            lines.append(
                f"| {r['config']} | {r['megapixels']:.1f} | {r['jpeg_kb']:.0f} | 1/{r['dct_scale']} | {r['fps']:.1f} | "
                f"{r['bare_fps']:.1f} | {r['decode_and_model_fps']:.1f} | **{r['ratio']:.2f}** | "
                f"**{r['ratio_to_decode_and_model']:.2f}** | {fd['decode_and_model_fps']:.1f} ({fd['ratio_to_bare']:.2f}x) | "
                f"{r['decode_reduced_ms']:.1f} / {fd['decode_ms']:.1f} | {r['latency_p50_ms']:.0f} / "
                f"{r['latency_p99_ms']:.0f} (paced {r['paced_fps']:.1f}, held {r['held_fps']:.1f} fr/s) | "
                f"{r['consumer_rss_mb']:.0f} |")
        for e in c.get("earlier_runs", []):
            lines += ["", f"Earlier quiet run, {e['when']} (load {e['load_avg'][0]:.1f} -> {e['load_avg'][1]:.1f}): " + "; ".join(
                f"{name} fps {r['fps']:.1f}, decode+model {r['decode_and_model_fps']:.1f}, bare {r['bare_fps']:.1f}, "
                f"ratio_to_decode_and_model {r['ratio_to_decode_and_model']:.2f}" for name, r in e["rows"].items()) + "."]
        ahead_runs = [(c.get("finished", c["date"]), {r["config"]: r for r in c["rows"]})] + [
            (e["when"], e["rows"]) for e in c.get("earlier_runs", [])]
        ahead_runs = [(w, rows) for w, rows in ahead_runs if all("decode_ahead_ab" in r for r in rows.values())]
        if ahead_runs:
            def pair(r: dict) -> str:
                ab = r["decode_ahead_ab"]
                return (f"{ab['serial']['ratio_to_decode_and_model']:.2f} -> {ab['ahead']['ratio_to_decode_and_model']:.2f}"
                        f" ({ab['first']} first)")
            cfgs = list(ahead_runs[0][1])
            means = "; ".join(
                f"{cfg} {np.mean([rows[cfg]['decode_ahead_ab']['serial']['ratio_to_decode_and_model'] for _, rows in ahead_runs]):.2f}"
                f" -> {np.mean([rows[cfg]['decode_ahead_ab']['ahead']['ratio_to_decode_and_model'] for _, rows in ahead_runs]):.2f}"
                for cfg in cfgs if all(cfg in rows for _, rows in ahead_runs))
            lines += ["", "**Decode ahead** (`decode_ahead`: while the polling thread scores a batch, the decode threads "
                      "already decode the next one the bus has fetched; the A/B runs each configuration's consumer both "
                      "ways, back to back in alternating order, against the same in-process yardsticks): "
                      "`ratio_to_decode_and_model` serial -> ahead, per run: "
                      + " | ".join(f"{w}: " + "; ".join(f"{cfg} {pair(r)}" for cfg, r in rows.items()) for w, rows in ahead_runs)
                      + f". Means over {len(ahead_runs)} run(s): {means}."]
        ab = c.get("decode_threads_ab")
        if ab:
            runs = ab["runs"]
            loads = [x for r in runs for x in r["load_avg"]]

            def seq(cfg: str, n: int) -> str:
                vals = [r["rows"][cfg]["ratio_to_decode_and_model"] for r in runs if r["decode_threads"] == n]
                return " / ".join(f"{v:.2f}" for v in vals) + f" (mean {np.mean(vals):.2f})"
            lines += ["", f"**Decode pool** (`decode_threads`, the consumer's JPEG decoders per batch; {ab['note']}; "
                      f"load {min(loads):.1f}-{max(loads):.1f}; order " + ", ".join(str(r["decode_threads"]) for r in runs)
                      + "): `ratio_to_decode_and_model` with 1 -> 2 decoders: "
                      + "; ".join(f"{cfg} {seq(cfg, 1)} -> {seq(cfg, 2)}" for cfg in runs[0]["rows"])
                      + ". The polling thread decodes, then calls the engine, so a serial decode leaves the second core "
                      "to the sink; two decoders use it. The gain follows the decode's share of a frame (12 MP colour "
                      "most, 5 MP mono least), so the default is now 2."]
            lines += ["", "**Harness fix this round.** Every earlier camera run measured a consumer under a permanent drift "
                      "alarm: the benchmark's untrained model carried a placeholder calibration (no held-out p99), the "
                      "drift monitor's score check read every camera as drifted after ~120 frames, and from then on the "
                      "consumer kept every 5 MP frame for a re-baseline (4 alarms in a 240-frame run). The runs now register "
                      "the frames' highest score as the p99 stand-in (0 alarms) and give each category its own camera. "
                      "In CPU time this removed most of the PostgreSQL and drift-step share (py-spy profile, 240 5 MP mono "
                      "frames: PostgreSQL 1.96 -> 1.13 ms per frame, drift checks 8.4 % -> 1.8 % of the consumer's samples, "
                      "CPU ratio to decode + model 0.82 -> 0.85); the wall-clock ratio with one decoder did not move beyond "
                      "the noise (0.78-0.79 / 0.80-0.82 / 0.84-0.87 against 0.80 / 0.82 / 0.85 before): that work ran on the "
                      "sink thread, off the polling thread's path."]
        bounds = ", ".join(f"{r['config']} {1.0 / (1.0 + r['decode_reduced_ms'] * r['bare_fps'] / 1000.0):.2f}"
                           for r in c["rows"])
        lines += ["", "Physical bound on `ratio`: the decode cannot be avoided and runs on the same 2 cores as the "
                  "model, so with a serial decode fps/bare <= 1 / (1 + decode ms x bare fps / 1000) even with free bus and storage "
                  f"(a decode costing a third of the model caps it near 0.75, ~0.7 with the rest): {bounds} from the "
                  "decode times above. `ratio_to_decode_and_model` measures everything else (Kafka, storage, "
                  "masks, commits) against that: the goal is >= 0.85. Under a load average far above 2 "
                  "the bare and pipeline runs, seconds apart, see different contention, so single ratios move by "
                  "+-0.2 between runs."]
        prof = RESULTS_DIR / "camera_profile_ab.json"
        if prof.is_file():
            ab = json.loads(prof.read_text())
            pairs = [(ab[f"old-{i}"], ab[f"new-{i}"]) for i in (1, 2) if f"old-{i}" in ab and f"new-{i}" in ab]
            if pairs:
                lines += ["", "Everything but decode and model, side by side (`benchmarks/profile_camera_consumer.py`, py-spy, "
                          "5 MP colour, 96 frames, the commit before vs this branch, interleaved): consumer CPU per frame "
                          + ", ".join(f"{o['consumer_cpu_s_per_frame'] * 1e3:.1f} -> {n['consumer_cpu_s_per_frame'] * 1e3:.1f} ms"
                                      for o, n in pairs)
                          + "; backlog fps " + ", ".join(f"{o['fps']:.1f} -> {n['fps']:.1f}" for o, n in pairs)
                          + f" (load {min(o['load_avg'] for p in pairs for o in p):.0f}-{max(o['load_avg'] for p in pairs for o in p):.0f}). "
                          "Removed: drift decoding every frame again at full resolution, the families step decoding flagged "
                          "frames at full resolution and running its encoder on torch's 2 OpenMP threads (17x the CPU of "
                          "one thread under this load)."]
            mono = sorted({int(k.rsplit("-", 1)[1]) for k in ab if k.startswith("mono-old-")}
                          & {int(k.rsplit("-", 1)[1]) for k in ab if k.startswith("mono-new-")})
            if mono:
                lines += ["", render_mono_ab([(ab[f"mono-old-{i}"], ab[f"mono-new-{i}"]) for i in mono])]
            quiet = sorted({int(k.rsplit("-", 1)[1]) for k in ab if k.startswith("quiet-old-")}
                           & {int(k.rsplit("-", 1)[1]) for k in ab if k.startswith("quiet-new-")})
            if quiet:
                qp = [(ab[f"quiet-old-{i}"], ab[f"quiet-new-{i}"]) for i in quiet]
                loads = [r["load_avg"] for p in qp for r in p]
                lines += ["", f"The same A/B on the quiet machine between this camera run and the one just before it ({len(qp)} interleaved rounds of "
                          f"{qp[0][0]['frames']} 5 MP mono frames, load {min(loads):.1f}-{max(loads):.1f}, py-spy at "
                          "50 Hz on both): backlog fps " + ", ".join(f"{o['fps']:.1f} -> {n['fps']:.1f}" for o, n in qp)
                          + "; consumer CPU per frame " + ", ".join(
                              f"{o['consumer_cpu_s_per_frame'] * 1e3:.1f} -> {n['consumer_cpu_s_per_frame'] * 1e3:.1f}" for o, n in qp)
                          + " ms; storage thread " + ", ".join(
                              f"{o['thread_cpu_s_per_frame'].get('consumer-sink', 0) * 1e3:.2f} -> "
                              f"{n['thread_cpu_s_per_frame'].get('consumer-sink', 0) * 1e3:.2f}" for o, n in qp)
                          + " ms. " + " ".join([
                              "Per consumer the cut is real (about 5 % more frames/s, 8 % less CPU), but the wall-clock",
                              "`ratio_to_decode_and_model` in the table did not move with it: the yardstick got faster",
                              "too (the model input fill is in it), and between two quiet runs the absolute rates moved",
                              "by 10-20 % (bare model 113 -> 146 fps for mono), more than this cut."])]
            steps = RESULTS_DIR / "camera_steps_ab.json"
            if steps.is_file():
                st = json.loads(steps.read_text())
                idx = sorted({int(k.rsplit("-", 1)[1]) for k in st if k.startswith("mono-old-")}
                             & {int(k.rsplit("-", 1)[1]) for k in st if k.startswith("mono-new-")})
                if idx:
                    lines += ["", render_mono_steps([(st[f"mono-old-{i}"], st[f"mono-new-{i}"]) for i in idx])]
            cr = ab.get("after-cpu-ratio")
            if cr:
                top = ", ".join(f"{k} {v:.0%}" for k, v in cr["share"].items() if v >= 0.004)
                lines += ["", f"In CPU time (same tool, {cr['frames']} frames, load {cr['load_avg']:.1f}): decode + model "
                          f"{cr['decode_and_model_cpu_s_per_frame'] * 1e3:.1f} ms per frame, the consumer process "
                          f"{cr['consumer_cpu_s_per_frame'] * 1e3:.1f} ms: ratio {cr['cpu_ratio_consumer_process_only']:.2f} "
                          f"({cr['cpu_ratio_to_decode_and_model']:.2f} with the shared servers' CPU). Python samples: {top}."]
        st = c["rows"][0]["storage_per_flagged_frame"]
        lines += ["", f"Storage per flagged 5 MP colour frame: original JPEG {st['frame_bytes'] / 1e3:.0f} kB + mask PNG "
                  f"{st['mask_png_bytes'] / 1e3:.1f} kB + heatmap PNG {st['heat_png_bytes'] / 1e3:.1f} kB at map "
                  f"resolution (row built in {st['row_build_ms']:.1f} ms)."]
    a = c.get("auroc")
    if a and "variants" in a:
        # the variant keys are those of the stored runs: "default" is oversample 2, the default until the
        # 3-seed run chose 4 ("oversample4")
        label = {"default": ">= 2x the input (the default before)", "coarsest": "coarsest (1/8, the first rule)",
                 "oversample4": ">= 4x the input (the default now)", "uncompressed": "no JPEG at all (reference)",
                 "two_stage": "full decode, area to the >= 2x rule's size, area again (control)"}
        lines += ["", f"Scores at 5 MP ({a['hw'][0]}x{a['hw'][1]}, JPEG q{a['jpeg_quality']}, real test images upscaled "
                  f"bicubic; default model, default {a['iters']} iterations, per category; every test image): image "
                  "AUROC of frames decoded the consumer's way vs decoded at full resolution then area-resized (the path "
                  "before issue 14). Input |d|: mean absolute difference of the model input to the full path's, grey "
                  "levels; score |d|: mean absolute score change. \"No JPEG at all\" is the uncompressed upscale: what "
                  "the camera's JPEG q92 itself moves; the control (where measured) reaches the >= 2x rule's "
                  "intermediate size by an area resize of the full decode instead of the DCT. 95 % CI: paired bootstrap over the test images "
                  "(2000 draws, good and defective resampled separately, both decodes scored on each draw), the "
                  "ranking noise of the test set; other seeds: the same inputs scored by models trained with other "
                  "seeds (`--auroc-seeds`), whether a difference follows the decode or the model.", "",
                  "| category | test images | decode | DCT scale | AUROC | difference to full | 95 % CI | other seeds: "
                  "difference | input abs diff mean / max | score abs diff mean (p95) | corr(input diff, score change) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for cat, v in a["categories"].items():
            names = [n for n in a["variants"]] + [n for n in ("uncompressed", "two_stage") if n in v]
            fulls = {k: f for k, f in v.get("auroc_full_by_seed", {}).items() if k != str(v.get("seeds", [0])[0])}
            others = ", ".join(f"seed {k} {f:.4f}" for k, f in fulls.items()) or "-"
            lines.append(f"| {cat} | {v['n']} ({v['defective']} defective) | full decode + area | 1/1 | "
                         f"{v['auroc_full']:.4f} | - | - | {others} | - | - (mean score {v['mean_score']:.3f}) | - |")
            for n in names:
                x = v[n]
                flag = "" if n in ("uncompressed", "two_stage") or abs(x["difference"]) <= 0.005 else " (misses 0.005)"
                ci = x.get("difference_ci95")
                ci_s = f"{ci[0]:+.4f} .. {ci[1]:+.4f}" if ci else "-"
                seeds_s = ", ".join(f"{d:+.4f}" for k, d in x.get("difference_by_seed", {}).items()
                                    if k != str(v.get("seeds", [0])[0])) or "-"
                lines.append(f"| | | {label.get(n, n)} | {'/'.join('1/' + str(s) for s in x['dct_scales'])} | "
                             f"{x['auroc']:.4f} | {x['difference']:+.4f}{flag} | {ci_s} | {seeds_s} | "
                             f"{x['input_mean_abs_diff']:.3f} / "
                             f"{x['input_max_abs_diff']:.0f} | {x['mean_abs_score_change']:.4f} "
                             f"({x['p95_abs_score_change']:.4f}) | {x['corr_input_diff_score_change']:.2f} |")
        d = cam.decide_oversample(a)
        label_ov = {n: f"{label.get(n, n)} (`decode_oversample` {ov:g})" for n, ov in a["variants"].items()}
        lines += ["", f"Over training seeds {', '.join(d['seeds'])} (mean difference to the full path per category; rule in "
                  "`camera_section.decide_oversample`, written before the 3-seed run: a rule meets the 0.005 bound if "
                  "its mean is within it on every category; the cheapest that meets it is the default, else the smallest "
                  "worst-category miss): " + "; ".join(
                      f"{label_ov[n]}: " + ", ".join(f"{c.split('/')[-1]} {m:+.4f}" for c, m in d["means"][n].items())
                      + f" (worst {d['worst'][n]:.4f})" for n in a["variants"])
                  + f". Supported: {label_ov[d['chosen']]}" + ("." if d["met"] else
                                                               f", which misses the bound by {d['worst'][d['chosen']] - 0.005:.4f}.")]
    for key in sorted(k for k in c if k.startswith("auroc_")):
        o = c[key]
        d = cam.decide_oversample(o)
        scale = {n: sorted({s for v in o["categories"].values() for s in v[n]["dct_scales"]}) for n in o["variants"]}
        lines += ["", f"The same check at {o['hw'][0]}x{o['hw'][1]} ({o['hw'][0] * o['hw'][1] / 1e6:.1f} MP; `--auroc-hw`, "
                  f"models of the same seeds {', '.join(d['seeds'])}), mean difference to the full decode per category: " + "; ".join(
                      f"`decode_oversample` {ov:g} (DCT {'/'.join('1/' + str(x) for x in scale[n])}): " + ", ".join(
                          f"{cat.split('/')[-1]} {m:+.4f}" for cat, m in d["means"][n].items()) + f" (worst {d['worst'][n]:.4f})"
                      for n, ov in o["variants"].items())
                  + f". The rule would pick `decode_oversample` {d['oversample']:g} here"
                  + (" (within the bound)." if d["met"] else f", missing the bound by {d['worst'][d['chosen']] - 0.005:.4f}.")]
    return "\n".join(lines)


def _thr(n: int) -> str:
    return "all" if n == 0 else str(n)


def render(r: dict) -> str:
    runs = r["runs"]
    singles = {(c["threads_each"], c["pipelined"]): c for c in runs if c["consumers"] == 1}
    two = next(c for c in runs if c["consumers"] == 2)
    svc = r["services_rss_mb"]
    prof_txt = ", ".join(f"{k} {v:.0%}" for k, v in r["profile_1thread"]["share"].items())
    rows = []
    for c in runs:
        mode = "pipelined" if c["pipelined"] else "serial (`--no-pipeline`)"
        rows.append(f"| {c['consumers']} x {_thr(c['threads_each'])} thr, {mode} | {c['pipeline_fps']:.1f} | "
                    f"{c['bare_fps']:.1f} ({_thr(c['bare_threads'])} thr) | **{c['ratio_to_bare']:.2f}x** | "
                    f"{c['latency_p50_ms']:.0f} / {c['latency_p99_ms']:.0f} (at {c['paced_fps']:.1f} fr/s) | "
                    f"{c['consumer_rss_mb']:.0f} | {c['load_avg']:.1f} |")
    var_rows = []
    for name, v in r["inprocess_variants"].items():
        per_run = ", ".join(f"{x['ratio']:.2f}" for x in v["runs"])
        var_rows.append(f"| {name} | {v['fps']:.1f} | {v['bare_fps']:.1f} | {v['ratio']:.2f}x ({per_run}) |")
    verdicts = []
    for threads in (0, 1):
        p_, s_ = singles[(threads, True)], singles[(threads, False)]
        verdicts.append(f"engine on {_thr(threads)} thread(s): pipelined {p_['ratio_to_bare']:.0%} of the bare model "
                        f"({'meets' if p_['ratio_to_bare'] >= 0.85 else 'misses'} the 85 % goal), serial "
                        f"{s_['ratio_to_bare']:.0%}")
    return "\n".join([
        f"## End-to-end pipeline ({r['date']})",
        "",
        f"`python benchmarks/bench_pipeline.py` on {r['machine']} (load average {r['load_avg'][0]:.1f} -> "
        f"{r['load_avg'][1]:.1f}: the 2 cores were shared with other engineers' work, so figures move by tens of "
        "per cent between runs; the table gives the load at the start of each run and every ratio uses bare-model "
        "runs taken just before and after it). Model: INP-Former `{arch}` architecture (untrained weights; "
        "throughput does not depend on them), ONNX Runtime, batch {batch} (the engines section: batch 8 is past "
        "the knee), `batch_max_wait_ms` 50. {frames} real test frames (every category, JPEG q92, shorter side "
        "320 px), threshold at their 90th percentile so ~10 % of frames write a mask, heatmap and the frame. "
        "Real services: Kafka, PostgreSQL, Redis from `deploy/services.sh`.".format(
            arch=r["arch"], batch=r["batch"], frames=r["frames"]),
        "",
        "| consumers x engine threads | pipeline frames/s | bare model frames/s | vs bare | latency p50 / p99 ms "
        "(capture -> stored) | consumer RSS MB | load |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"Pipeline frames/s: steady state while draining a {runs[0]['frames']}-frame backlog, published to Kafka "
        "before the consumers start, through decode -> engine -> PostgreSQL -> Redis -> commit (rows whose "
        "`stored_at` is after every consumer owned partitions, start-up excluded). Bare model: the local engine "
        "on decoded frames, no bus or storage, same engine threads (for two consumers: one engine on all cores). "
        "Latency: frames then published at 70 % of that rate, `latency_ms` of their rows. One consumer: "
        + "; ".join(verdicts) + ". The serial consumer's first measurement (commit f19f21a, all cores) was 46 %.",
        "",
        "Pipelining (the default; `InferenceConsumer(pipelined=True)`, `lineinspect consume --no-pipeline` "
        "turns it off): the polling thread polls, decodes and scores batch k+1 and publishes its dead letters "
        "while one sink thread encodes masks/heatmaps, stores batch k in PostgreSQL, updates Redis and fuses "
        "specimens; ONNX Runtime, OpenCV and psycopg release the GIL, so these overlap. Commits stay on the "
        "polling thread, in poll order, and only for batches the sink has stored; at most 2 scored batches "
        "wait for or sit in the sink (back-pressure), so a crash redelivers at most those plus the batch "
        "being scored. The overlap needs a core for the sink: with the engine on every core, its intra-op "
        "threads and the sink thread contend for the same two cores.",
        "",
        "In-process variants (memory bus, real PostgreSQL + Redis, same frames; each next to a bare run with the "
        "same engine threads, ratios per repetition in brackets), which leave out Kafka and process start-up:",
        "",
        "| consumer | frames/s | bare frames/s | vs bare |",
        "|---|---|---|---|",
        *var_rows,
        "",
        "JPEG decode at 320 px is ~1 ms a frame, and on two cores already busy with the engine and the sink a "
        "decode pool is within the run-to-run noise here; the default pool of 2 (`decode_threads`) is for "
        "camera-scale frames, where it pays (camera section).",
        "",
        f"Where one serial consumer's time goes (in-process on the memory bus, real "
        f"PostgreSQL + Redis, one ORT thread, cProfile): {prof_txt}; {r['profile_1thread']['fps']:.1f} frames/s = "
        f"{r['profile_1thread']['ratio_to_bare']:.0%} of the one-thread bare model "
        f"({r['bare_fps_1thread']:.1f} / {r['bare_fps_1thread_after']:.1f} frames/s before / after). Everything "
        "but the engine and the decode is what the sink thread takes off the model's path. Overlap turns idle "
        "time (waits on Kafka and PostgreSQL commits) into throughput, not CPU: when both cores are saturated "
        "(load average above 2) the non-engine stages still cost their CPU, so one "
        "consumer stays near the engine's share of the serial time "
        f"({r['profile_1thread']['share']['engine (resize + ONNX Runtime)']:.0%}) whatever the overlap. "
        "The 85 % goal needs a core the engine does not use (a lightly loaded box, or the engine on fewer "
        "threads than cores) or cheaper non-engine stages.",
        "",
        f"Services RSS: Kafka {svc.get('kafka', 0):.0f} MB, PostgreSQL {svc.get('postgres', 0):.0f} MB "
        f"(all backends), Redis {svc.get('redis', 0):.0f} MB; consumers as in the table (peak, all processes).",
        "",
        "Scaling: the frames topic has `topic_partitions` partitions (6) keyed by camera; every consumer "
        "process in one group owns a disjoint share of them, so throughput grows with consumer processes "
        "on more machines until there are as many consumers as partitions (raise the partition count "
        "first; per-camera order is kept). On this 2-core machine the two consumers share the same cores, "
        f"so their row ({two['pipeline_fps']:.0f} frames/s) is not added capacity. With `engine_url=triton-grpc://` "
        "the consumers become thin (decode + storage) and the model runs in Triton instances that batch "
        "requests across consumers; add Triton instances (or GPUs) behind a load balancer independently "
        "of the consumers. PostgreSQL writes are one transaction per batch and idempotent, so any "
        "number of consumers can replay safely.",
        "",
        f"Run time {r['seconds']:.0f} s.",
    ])


if __name__ == "__main__":
    sys.exit(main())
