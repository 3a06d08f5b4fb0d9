"""Where a 5 MP consumer's CPU goes besides the decode and the model (issue 14, ``ratio_to_decode_and_model``).

    nice -n 10 python benchmarks/profile_camera_consumer.py [--frames 96] [--config "5 MP colour"] [--out F.json]

One consumer process (the production ``lineinspect consume``, pipelined) drains a backlog of camera frames
(real test images upscaled, JPEG q92, as in ``camera_section``) through the real Kafka -> PostgreSQL + Redis,
while py-spy samples every one of its Python threads (``--threads``, idle samples dropped, so a sample is
CPU time of that thread; ONNX Runtime's native worker threads are not Python threads and do not appear,
the calling thread does). Each sample is put in one bucket by the first rule its stack matches
(:data:`BUCKETS`), and the shares are written with the services' own CPU seconds (Kafka, PostgreSQL, Redis
read from /proc before and after: they share the 2 cores with the consumer). Needs ``py-spy`` on PATH.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS_DIR, WORK
from benchmarks.kafka_run import tree_sum

# (bucket, substrings any of which in a stack puts the sample there); first match wins, most specific first
BUCKETS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("post-store: drift checks", ("DriftMonitor",)),
    ("post-store: defect families (decode + torch encoder)", ("FamilyMonitor",)),
    ("model (ONNX Runtime + input resize)", ("onnx_engine.py",)),
    ("decode (JPEG at model scale)", ("decode_frame (ingest/envelope.py", "decode_image (ingest/envelope.py")),
    ("envelope parse + header check", ("from_message (ingest/envelope.py", "check_frame_header")),
    ("row build (mask, heatmap PNG)", ("build_row (inference/postprocess.py",)),
    ("PostgreSQL write", ("save_results (storage/store.py",)),
    ("Redis update", ("record_results (storage/redis_cache.py",)),
    ("Kafka commit", ("commit (ingest/bus/kafka.py",)),
    ("Kafka fetch (network, CRC, record parse)", ("poll_batch (ingest/bus/kafka.py", "kafka/")),
    ("metrics, logging", ("telemetry.py", "prometheus_client", "logging/")),
)


def bucket(stack: str) -> str:
    for name, keys in BUCKETS:
        if any(k in stack for k in keys):
            return name
    return "other"


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its live children (PostgreSQL's backends are children)."""
    return tree_sum(pid, lambda q: sum(q.cpu_times()[:2]))  # user + system


def thread_cpu_s(pid: int) -> dict[int, float]:
    """{native thread id: user + system CPU seconds} of every thread of ``pid`` (/proc; Linux only)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        out[int(task.name)] = (int(fields[11]) + int(fields[12])) / tick  # utime, stime (fields 14, 15)
    return out


def decode_and_model_cpu_s(model_dir: Path, frames: list, n: int, batch: int = 8) -> float:
    """Process CPU seconds per frame (every thread, ONNX Runtime's included) of decode at model scale + the
    engine alone, over ``n`` frames after one warm-up batch: the yardstick of ``ratio_to_decode_and_model``."""
    from benchmarks import camera_section as cam
    from inference.engines.onnx_engine import OnnxEngine
    from ingest.envelope import decode_frame

    envs = cam._envs(frames)
    eng = OnnxEngine(model_dir)
    try:
        hw = eng.input_hw
        step = lambda i0: eng.infer("p", [decode_frame(envs[(i0 + i) % len(envs)], target_hw=hw).image  # noqa: E731
                                          for i in range(batch)])
        step(0)
        c0 = time.process_time()
        for i0 in range(0, n, batch):
            step(i0)
        return (time.process_time() - c0) / (len(range(0, n, batch)) * batch)
    finally:
        eng.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=96)
    ap.add_argument("--config", default="5 MP colour")
    ap.add_argument("--rate", type=int, default=97, help="py-spy samples per second")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "camera_profile.json")
    ap.add_argument("--tag", default="", help="a label stored with the result (e.g. before / after)")
    ap.add_argument("--src", type=Path, default=None,
                    help="run the consumer from this source tree (git archive of another commit: an A/B on one setup)")
    ap.add_argument("--raw", type=Path, default=None, help="also keep py-spy's raw stacks here (for a finer look)")
    ap.add_argument("--capture-fps", type=float, default=40.0,
                    help="the backlog's capture clock: 4 cameras recording this many frames/s in all (what the "
                         "consumer's normal-sample spacing sees); 0 = stamped at publishing, as before")
    args = ap.parse_args()
    os.environ.setdefault("LINEINSPECT_LOG_LEVEL", "WARNING")
    from benchmarks import camera_section as cam
    from benchmarks.bench_pipeline import ensure_services, service_pids, services_sh
    from benchmarks.kafka_run import KafkaRun, steady_fps

    if args.src:  # the project's packages from the other tree too, so the decode + model yardstick is that code's
        sys.path.insert(0, str(args.src.resolve()))

    if shutil.which("py-spy") is None:
        raise SystemExit("py-spy is not on PATH (pip install py-spy)")
    name, hw, mono, frames, model_dir, threshold, p99 = cam.profile_setup(args.config)
    urls, started = ensure_services()
    tmp = WORK / "pipeline" / f"profile-{uuid.uuid4().hex[:6]}"
    raw = tmp / "pyspy.txt"
    try:
        run = KafkaRun(urls, model_dir, threshold, tmp, "prof", p99=p99)
        try:
            run.publish(frames, 0, args.frames, capture_fps=args.capture_fps or None)
            t_ready = run.start_consumers(1, 0, True, src=args.src)
            pid = run.procs[0].pid
            svc = {k: p for k, p in service_pids().items()}
            svc0 = {k: cpu_s(p) for k, p in svc.items()}
            c0, w0, t0 = cpu_s(pid), time.time(), thread_cpu_s(pid)
            spy = subprocess.Popen(["py-spy", "record", "-p", str(pid), "--threads", "--format", "raw",
                                    "--rate", str(args.rate), "-o", str(raw), "--nonblocking"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            stored = run.wait_rows(0, args.frames, timeout_s=max(180, args.frames * 3))
            c1, w1, t1 = cpu_s(pid), time.time(), thread_cpu_s(pid)
            svc1 = {k: cpu_s(p) for k, p in svc.items()}
            kept = run.samples_kept()
            spy.send_signal(2)  # SIGINT: py-spy writes the file and exits
            spy.wait(60)
            fps, counted = steady_fps(stored, t_ready)
            if args.raw:
                shutil.copyfile(raw, args.raw)
        finally:
            run.close()
        dm_cpu = decode_and_model_cpu_s(model_dir, frames, args.frames)
        samples: Counter[str] = Counter()
        threads: Counter[str] = Counter()
        top: Counter[str] = Counter()
        for line in raw.read_text().splitlines():
            stack, _, n = line.rpartition(" ")
            if not stack or not n.isdigit():
                continue
            samples[bucket(stack)] += int(n)
            threads[stack.split(";", 1)[0]] += int(n)
            if bucket(stack) == "other":
                top[";".join(stack.split(";")[-3:])] += int(n)
        total = sum(samples.values())
        # CPU per frame of each thread (from /proc, not sampled); py-spy names the Python threads by native id,
        # the rest are native (ONNX Runtime's intra-op pool, the allocator's, ...)
        names = {int(m.group(1)): m.group(2) for m in re.finditer(r"thread \((\d+)\): ([\w-]+)", raw.read_text())}
        per_thread: Counter[str] = Counter()
        for tid, sec in t1.items():
            per_thread[names.get(tid, "native (ONNX Runtime pool, ...)")] += (sec - t0.get(tid, 0.0)) / args.frames
        result = {"config": name, "frames": args.frames, "tag": args.tag, "src": str(args.src or "this checkout"), "fps": fps, "frames_timed": counted,
                  "capture_fps": args.capture_fps, "normal_samples_kept": kept,
                  "load_avg": os.getloadavg()[0], "date": time.strftime("%Y-%m-%d %H:%M"),
                  "consumer_cpu_s": c1 - c0, "wall_s": w1 - w0,
                  "consumer_cpu_s_per_frame": (c1 - c0) / args.frames,
                  "services_cpu_s_per_frame": {k: (svc1[k] - svc0[k]) / args.frames for k in svc},
                  "decode_and_model_cpu_s_per_frame": dm_cpu,
                  # CPU, not wall: what the consumer and its services spend per frame against decode + model alone;
                  # robust to the shared machine's load, which moves the wall-clock ratio by +-0.3 between runs
                  "cpu_ratio_consumer_process_only": dm_cpu / ((c1 - c0) / args.frames),
                  # the services are shared with other engineers' runs: an upper bound of what this consumer cost them
                  "cpu_ratio_to_decode_and_model": dm_cpu / ((c1 - c0) / args.frames
                                                             + sum(svc1[k] - svc0[k] for k in svc) / args.frames),
                  "samples": total, "share": {k: v / total for k, v in samples.most_common()},
                  "threads": {k: v / total for k, v in threads.most_common()},
                  "thread_cpu_s_per_frame": dict(per_thread.most_common()),
                  "other_top": {k: v / total for k, v in top.most_common(12)}}
    finally:
        for s in started:
            services_sh("stop", s)
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        prev = json.loads(args.out.read_text()) if args.out.is_file() else {}
        prev[args.tag or "latest"] = result
        args.out.write_text(json.dumps(prev, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
