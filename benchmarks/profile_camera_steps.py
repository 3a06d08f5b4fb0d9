"""CPU per frame of each consumer step at camera scale, in one process (issue 14, the consumer's own work).

    nice -n 10 python benchmarks/profile_camera_steps.py [--config "5 MP mono"] [--frames 160] [--src TREE] [--tag T]

The production consumer (``build_pipeline``: ``local://onnx``, pipelined, its post-store steps) on the in-process
memory bus with the real PostgreSQL + Redis, on the camera frames of ``camera_section`` (real test images
upscaled, JPEG q92, threshold at their 90th percentile, four cameras). Each step's thread CPU time
(``time.thread_time`` around it, so the load of the shared machine inflates it much less than wall time) is
summed over ``--frames`` frames after a warm-up of 24: decode, engine, rows, the store, the cache, the post-store
steps and the drift store's calls. ``--src`` runs another source tree (``git archive`` of an earlier commit) in
the same way, for a side-by-side of two versions. Kafka is left out (``profile_camera_consumer.py`` has it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS_DIR, WORK
from benchmarks.profile_camera_consumer import thread_cpu_s

CONSUMER_STEPS = ("_decode", "_infer", "_row", "_before_store", "_save", "_update_cache", "_post_store", "_commit")
SINK_STEPS = ("_row", "_before_store", "_save", "_update_cache", "_post_store")  # the storage thread's work
DRIFT_STORE_CALLS = ("keep_frames", "keep_frames_many", "open_alarm", "mark_drifted", "open_alarms")


class StepClock:
    """Thread CPU seconds spent in wrapped callables, by label, while ``on``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.on = False

    def wrap(self, obj: Any, attr: str, label: str) -> None:
        fn: Callable[..., Any] = getattr(obj, attr)

        def timed(*a: Any, **k: Any) -> Any:
            t0 = time.thread_time()
            try:
                return fn(*a, **k)
            finally:
                if self.on:
                    self.seconds[label] += time.thread_time() - t0
                    self.calls[label] += 1

        setattr(obj, attr, timed)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="5 MP mono")
    ap.add_argument("--frames", type=int, default=160)
    ap.add_argument("--src", type=Path, default=None, help="run the project's packages from this tree")
    ap.add_argument("--tag", default="latest")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "camera_steps_ab.json")
    args = ap.parse_args()
    os.environ.setdefault("LINEINSPECT_LOG_LEVEL", "WARNING")
    from benchmarks import camera_section as cam
    from benchmarks.bench_pipeline import ensure_services, services_sh
    from benchmarks.kafka_run import KafkaRun

    if args.src:
        sys.path.insert(0, str(args.src.resolve()))

    from inference.pipeline import build_pipeline
    from ingest.bus.memory import MemoryBus, MemoryConsumer, MemoryPublisher
    from ingest.envelope import FrameEnvelope

    name, hw, mono, frames, model_dir, threshold, p99 = cam.profile_setup(args.config)
    urls, started = ensure_services()
    tmp = WORK / "pipeline" / f"steps-{uuid.uuid4().hex[:6]}"
    warm = cam.WARMUP_FRAMES
    clock = StepClock()
    try:
        run = KafkaRun(urls, model_dir, threshold, tmp, "steps", p99=p99)  # database + model only
        try:
            s = run.s.with_overrides(bus_url="memory://", engine_url="local://onnx")
            mb = MemoryBus(s.topic_partitions)
            pub = MemoryPublisher(mb, s.topic_frames)
            for i in range(warm + args.frames):
                _c, data, shape = frames[i % len(frames)]
                env = FrameEnvelope(run.product, "L1", f"cam-{i % 4}", i, data, "jpeg", tuple(shape), capture_ts=time.time())
                pub.publish(*env.to_message())
            pipe = build_pipeline(s, bus=MemoryConsumer(mb, s.topic_frames, s.consumer_group, s.topic_dlq))
            c = pipe.consumer
            for attr in CONSUMER_STEPS:
                clock.wrap(c, attr, attr)
            for step in c.post_store:
                store = getattr(step, "store", None)
                for attr in DRIFT_STORE_CALLS:
                    if store is not None and hasattr(store, attr):
                        clock.wrap(store, attr, f"{type(store).__name__}.{attr}")
            with pipe:
                c.run(max_frames=warm)  # ONNX Runtime's first runs, the drift references
                main_tid, pid = threading.get_native_id(), os.getpid()
                clock.on = True
                p0, w0, t0 = time.process_time(), time.time(), thread_cpu_s(pid)
                c.run(max_frames=args.frames)
                p1, w1, t1 = time.process_time(), time.time(), thread_cpu_s(pid)
                clock.on = False
        finally:
            run.close()
    finally:
        for svc in started:
            services_sh("stop", svc)
        shutil.rmtree(tmp, ignore_errors=True)
    n = args.frames
    ms = {k: v / n * 1e3 for k, v in sorted(clock.seconds.items(), key=lambda kv: -kv[1])}
    result = {"config": name, "frames": n, "tag": args.tag, "src": str(args.src or "this checkout"),
              "load_avg": os.getloadavg()[0], "date": time.strftime("%Y-%m-%d %H:%M"), "wall_s": w1 - w0,
              "process_cpu_ms_per_frame": (p1 - p0) / n * 1e3,
              "main_thread_cpu_ms_per_frame": (t1.get(main_tid, 0.0) - t0.get(main_tid, 0.0)) / n * 1e3,
              "storage_steps_cpu_ms_per_frame": sum(ms.get(k, 0.0) for k in SINK_STEPS),
              "steps_cpu_ms_per_frame": ms, "calls": dict(clock.calls)}
    print(json.dumps(result, indent=2))
    prev = json.loads(args.out.read_text()) if args.out.is_file() else {}
    prev[args.tag] = result
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(prev, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
