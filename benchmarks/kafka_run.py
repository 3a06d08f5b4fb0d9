"""The Kafka pipeline harness the pipeline and camera benchmarks share: consumer processes on the
real services (:class:`KafkaRun`), their peak RSS and the steady stored-frames rate."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import REPO


def tree_sum(pid: int, measure: Callable[[Any], float]) -> float:
    """``measure`` summed over ``pid`` and its live children (a consumer's helpers, PostgreSQL's backends);
    processes that end while being read count 0."""
    import psutil

    try:
        p = psutil.Process(pid)
        procs = [p, *p.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0.0
    for q in procs:
        try:
            total += measure(q)
        except psutil.Error:
            pass
    return total


def tree_rss_mb(pid: int) -> float:
    return tree_sum(pid, lambda q: q.memory_info().rss) / 2**20


class RssSampler(threading.Thread):
    """Peak summed RSS of a set of processes, sampled every 0.2 s."""

    def __init__(self, pids: list[int]) -> None:
        super().__init__(daemon=True)
        self.pids, self.peak_mb = pids, 0.0
        self._stop_evt = threading.Event()

    def run(self) -> None:
        while not self._stop_evt.wait(0.2):
            self.peak_mb = max(self.peak_mb, sum(tree_rss_mb(p) for p in self.pids))

    def stop(self) -> float:
        self._stop_evt.set()
        self.join(2)
        return self.peak_mb


class KafkaRun:
    """One benchmark run against the real services: a throw-away database with the model registered
    and promoted, private topics, ``lineinspect consume`` processes, publishing and row polling."""

    def __init__(self, urls: dict[str, str], model_dir: Path, threshold: float, tmp: Path, tag: str,
                 p99: float | None = None) -> None:
        """``p99``: the highest score of the run's frames, the stand-in for a trained product's held-out
        p99 that the drift monitor's score check reads (see below); ``None``: the threshold."""
        from sqlalchemy import create_engine, text
        from sqlalchemy.engine import make_url

        from lineinspect.settings import Settings
        from storage.registry import ModelRegistry
        from storage.store import ResultStore

        rid = uuid.uuid4().hex[:8]
        self.dbname = f"li_bench_{tag}_{rid}"
        self.admin_url = urls["postgres"]
        admin = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{self.dbname}"'))
        admin.dispose()
        db = make_url(urls["postgres"]).set(database=self.dbname).render_as_string(hide_password=False)
        self.tmp = tmp / tag
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.product = f"bench-{rid}"
        self.s = Settings(home=self.tmp, models_dir=self.tmp / "models", bus_url=urls["kafka"], db_url=db,
                          cache_url=urls["redis"], topic_frames=f"li-bench-{tag}-{rid}.frames",
                          topic_dlq=f"li-bench-{tag}-{rid}.dlq", consumer_group=f"li-bench-{tag}-{rid}")
        with ResultStore.open(db) as store:
            reg = ModelRegistry(store, self.s.resolved_models_dir)
            # The benchmark models are untrained, their directories' calibration a placeholder (threshold 1.0,
            # no quantiles), so the drift monitor's score check (median score / held-out p99) read every
            # camera as drifted within ~120 frames and the consumer then kept every frame of the run in
            # drift_frames (measured: 4 alarms in a 240-frame 5 MP run). The run's frames are the product's
            # normal stream here, so their highest score stands in for the held-out p99: the runs measure a
            # line in its steady state, not one under a permanent drift alarm.
            cal = {"threshold": threshold, "quantiles": {"p99": threshold if p99 is None else p99},
                   "note": "benchmark stand-in"}
            reg.promote(self.product, reg.register(self.product, model_dir, threshold=threshold,
                                                   metrics={"calibration": cal}))
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = []

    def start_consumers(self, n: int, threads: int, pipelined: bool = True, src: Path | None = None,
                        decode_threads: int = 1, decode_ahead: bool = False) -> float:
        """Start ``n`` consumer processes; returns the wall time when all of them own partitions.

        ``src``: run the consumer from another source tree (e.g. ``git archive`` of an earlier commit), so a
        profile can compare two versions of the code on the same services, frames and model."""
        s = self.s
        env = {k: v for k, v in os.environ.items() if not k.startswith("LINEINSPECT_")}
        env.update(LINEINSPECT_HOME=str(self.tmp), LINEINSPECT_MODELS_DIR=str(s.resolved_models_dir),
                   LINEINSPECT_TOPIC_DLQ=s.topic_dlq, LINEINSPECT_THREADS=str(threads), PYTHONUNBUFFERED="1",
                   LINEINSPECT_DECODE_THREADS=str(decode_threads), LINEINSPECT_DECODE_AHEAD=str(decode_ahead).lower())
        for i in range(n):
            log = self.tmp / f"consumer-{i}.log"
            cmd = [sys.executable, "-m", "lineinspect.cli", "consume", "--bus", s.bus_url, "--engine", "local://onnx",
                   "--db", s.resolved_db_url, "--cache", s.cache_url, "--group", s.consumer_group,
                   "--topic", s.topic_frames, "--idle-timeout", "300", *([] if pipelined else ["--no-pipeline"])]
            with open(log, "wb") as out:
                self.procs.append(subprocess.Popen(cmd, cwd=src or REPO, env=env, stdout=out, stderr=subprocess.STDOUT))
            self.logs.append(log)
        # ready = every consumer owns partitions (so the backlog is not drained by the first one alone)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            texts = [p.read_text(errors="replace") for p in self.logs]
            owned = [re.findall(r'event="partitions assigned".*partitions="?\[([^\]]*)\]', t) for t in texts]
            if all(o and o[-1].strip() for o in owned):
                sets = [set(o[-1].split(",")) for o in owned]
                if sum(len(x) for x in sets) == self.s.topic_partitions:
                    return time.time()
            if any(p.poll() is not None for p in self.procs):
                break
            time.sleep(0.5)
        raise RuntimeError("consumers did not get their partitions:\n" + "\n".join(
            p.read_text(errors="replace")[-2000:] for p in self.logs))

    def publish(self, frames: list, start_id: int, n: int, fps: float | None = None,
                capture_fps: float | None = None) -> float:
        """Publish ``n`` frames (ids from ``start_id``), as fast as possible or at ``fps``; returns frames/s.

        Each category's frames come from one camera (``cam-<n>``, in order of first appearance), as on a
        line where a camera watches one product: a camera cycling through four products' images is a
        drift alarm the consumer answers by keeping every frame (inference.drift), a cost no real line has.
        Capture times are the wall clock at publishing, or with ``capture_fps`` those of the cameras
        recording at that rate in all (from now on), however fast the backlog is published: what the
        consumer's normal-sample spacing (``keep_normal_every_s``) sees of a real line."""
        from ingest.bus.kafka import KafkaPublisher
        from ingest.envelope import FrameEnvelope

        pub = KafkaPublisher(self.s)
        cams = {cat: f"cam-{j}" for j, cat in enumerate(dict.fromkeys(c for c, _d, _s in frames))}
        t0 = time.perf_counter()
        c0 = time.time()
        for i in range(n):
            cat, data, shape = frames[i % len(frames)]
            fid = start_id + i
            env = FrameEnvelope(self.product, "L1", cams[cat], fid, data, "jpeg", tuple(shape),
                                capture_ts=c0 + i / capture_fps if capture_fps else time.time())
            pub.publish(*env.to_message())
            if fps:
                ahead = t0 + (i + 1) / fps - time.perf_counter()
                if ahead > 0:
                    time.sleep(ahead)
        pub.flush(60)
        rate = n / (time.perf_counter() - t0)
        pub.close()
        return rate

    def rows(self, min_id: int, max_id: int) -> list[tuple[float, float]]:
        """(stored_at, latency_ms) of the rows with frame ids in [min_id, max_id)."""
        from sqlalchemy import create_engine, select

        from storage.models import InspectionResult as R

        eng = create_engine(self.s.resolved_db_url)
        try:
            with eng.connect() as conn:
                q = select(R.stored_at, R.latency_ms).where(R.frame_id >= min_id, R.frame_id < max_id)
                return [(float(a), float(b)) for a, b in conn.execute(q).all()]
        finally:
            eng.dispose()

    def samples_kept(self) -> int:
        """Clearly normal frames the consumers kept as training samples (all sources of this run's product)."""
        from storage.store import ResultStore

        with ResultStore.open(self.s.resolved_db_url, migrate=False) as store:
            return store.count_training_samples(self.product)

    def wait_rows(self, min_id: int, max_id: int, timeout_s: float) -> list[tuple[float, float]]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            got = self.rows(min_id, max_id)
            if len(got) >= max_id - min_id:
                return got
            if any(p.poll() is not None for p in self.procs):
                raise RuntimeError("a consumer exited:\n" + "\n".join(p.read_text()[-2000:] for p in self.logs))
            time.sleep(0.3)
        raise RuntimeError(f"only {len(self.rows(min_id, max_id))} of {max_id - min_id} frames stored in {timeout_s:.0f}s")

    def close(self) -> None:
        from sqlalchemy import create_engine, text

        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        admin = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{self.dbname}" WITH (FORCE)'))
        admin.dispose()


def steady_fps(stored: list[tuple[float, float]], t_ready: float) -> tuple[float, int]:
    """Frames/s stored from the moment every consumer owned partitions to the last row; and that count."""
    ts = sorted(t for t, _ in stored)
    after = [t for t in ts if t >= t_ready]
    return (len(after) / (after[-1] - t_ready) if len(after) > 1 else float("nan")), len(after)
