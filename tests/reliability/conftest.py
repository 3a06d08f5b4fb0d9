"""Fault-injection harness: private real services, a tiny real model, a camera thread, consumer processes.

The faults stop and restart services, so these tests never touch the shared development services
other tests use: :func:`fault_services` starts a *private* PostgreSQL, Redis and Kafka through
``deploy/services.sh`` on their own ports and state folders (127.0.0.1 only) and stops them at
the end of the session. Each test gets a fresh database, its own topics and consumer group.

The engine is the real local ONNX Runtime engine on a tiny untrained INP-Former (64x64 input):
deterministic, a few milliseconds a batch, and it exercises the real routing/registry path. The
frames are small seeded JPEGs published by :class:`Camera` at a steady rate, the way a line
camera does, so a fault lands while frames are being consumed. The camera re-sends any group of
frames the broker did not acknowledge (same frame ids), so "every published frame" means every
frame the broker acknowledged, and the re-sends double as redelivery tests.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, func, select

from ingest.envelope import FrameEnvelope, encode_image
from lineinspect.settings import Settings
from tests.dbtools import throwaway_database

REPO = Path(__file__).resolve().parents[2]
ON_CI = bool(os.environ.get("CI"))
# Private ports; LINEINSPECT_FAULT_*_PORT, _FAULT_SERVICES_DIR and _FAULT_PG_DIR move them, so two fault-test runs
# (a CI loop beside a developer's run) never stop each other's services.
PORTS = {k: os.environ.get(k.replace("LINEINSPECT_", "LINEINSPECT_FAULT_"), v)
         for k, v in {"LINEINSPECT_PG_PORT": "25532", "LINEINSPECT_REDIS_PORT": "26479",
                      "LINEINSPECT_KAFKA_PORT": "29192"}.items()}
SERVICE_TIMEOUT_S = 120


# --- private services ----------------------------------------------------------------------------
@dataclass
class Services:
    """deploy/services.sh bound to the private ports; ``stop``/``start``/``restart`` inject faults."""

    env: dict[str, str]
    urls: dict[str, str] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)

    def run(self, verb: str, *names: str) -> str:
        proc = subprocess.run(["bash", str(REPO / "deploy" / "services.sh"), verb, *names], env=self.env,
                              capture_output=True, text=True, timeout=SERVICE_TIMEOUT_S)
        self.log.append(f"{time.strftime('%H:%M:%S')} services.sh {verb} {' '.join(names)} -> {proc.returncode}")
        if proc.returncode != 0:
            raise RuntimeError(f"services.sh {verb} {' '.join(names)} failed:\n{proc.stderr[-2000:]}")
        return proc.stdout

    def start(self, *names: str) -> None:
        self.run("start", *names)

    def stop(self, *names: str) -> None:
        self.run("stop", *names)

    def restart(self, *names: str) -> None:
        self.run("restart", *names)


@pytest.fixture(scope="session")
def fault_services() -> Iterator[Services]:
    cache = Path(os.environ.get("LINEINSPECT_CACHE", Path.home() / ".cache" / "lineinspect"))
    state = os.environ.get("LINEINSPECT_FAULT_SERVICES_DIR", str(cache / "fault-services"))
    env = {**os.environ, **PORTS, "LINEINSPECT_SERVICES_DIR": state,
           "LINEINSPECT_PG_DIR": os.environ.get("LINEINSPECT_FAULT_PG_DIR", f"/var/tmp/lineinspect-faults-pg-{os.getuid()}")}
    svc = Services(env)
    try:
        svc.start()
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        msg = f"cannot start private services for the fault tests (bash deploy/services.sh install): {exc}"
        if ON_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    for line in svc.run("env").splitlines():
        m = re.match(r"export LINEINSPECT_TEST_(\w+)_URL=(\S+)", line)
        if m:
            svc.urls[m.group(1).lower()] = m.group(2)
    try:
        yield svc
    finally:
        try:
            svc.stop()
        except (RuntimeError, subprocess.TimeoutExpired):
            pass


# --- tiny model -------------------------------------------------------------------------------------
FRAME_HW = (96, 128)


def frame_payloads(n: int = 64, seed: int = 0) -> list[bytes]:
    """Seeded JPEG frames: smooth background plus a few bright blobs, so scores vary frame to frame."""
    rng = np.random.default_rng(seed)
    out = []
    yy, xx = np.mgrid[0:FRAME_HW[0], 0:FRAME_HW[1]]
    for _ in range(n):
        base = 90 + 40 * np.sin(xx / rng.uniform(8, 30)) * np.cos(yy / rng.uniform(8, 30))
        for _ in range(int(rng.integers(0, 4))):
            cy, cx, r = rng.uniform(0, FRAME_HW[0]), rng.uniform(0, FRAME_HW[1]), rng.uniform(3, 12)
            base = base + 120 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        img = np.clip(np.stack([base, base * 0.9, base * 1.1], -1) + rng.normal(0, 4, (*FRAME_HW, 3)), 0, 255)
        out.append(encode_image(img.astype(np.uint8), "jpeg", quality=85))
    return out


@dataclass
class TinyModel:
    model_dir: Path
    threshold: float


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


def build_tiny_model(dest: Path) -> TinyModel:
    """An untrained seeded 64x64 INP-Former with its ONNX export; threshold = median score of the frames."""
    import cv2
    import torch

    from inference.engines.onnx_engine import OnnxEngine
    from inference.model.inp_former import InpConfig, InpFormer
    from inference.model_dir import save_model_dir

    torch.manual_seed(0)
    model = InpFormer(InpConfig(input_hw=(64, 64), width=32, head_dim=32, decoder_blocks=2, n_inps=2))
    d = save_model_dir(dest / "model", model, {}, {"threshold": 1.0})
    engine = OnnxEngine(d, threads=1)  # exports model.onnx + sidecar once, so consumers only load it
    imgs = [cv2.cvtColor(cv2.imdecode(np.frombuffer(p, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
            for p in frame_payloads()]
    scores = engine.infer("tiny", imgs).scores
    engine.close()
    return TinyModel(d, float(np.median(scores)))


# --- one test's world -------------------------------------------------------------------------------
@dataclass
class Rig:
    """Settings, database and helpers of one fault test."""

    settings: Settings
    services: Services
    tmp: Path
    product: str
    run_id: str
    procs: list[subprocess.Popen] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    # consumers -----------------------------------------------------------------------------------
    def consumer_env(self) -> dict[str, str]:
        s = self.settings
        env = {k: v for k, v in os.environ.items() if not k.startswith("LINEINSPECT_")}
        env.update({
            "LINEINSPECT_HOME": str(self.tmp), "LINEINSPECT_MODELS_DIR": str(s.resolved_models_dir),
            "LINEINSPECT_TOPIC_DLQ": s.topic_dlq, "LINEINSPECT_TOPIC_PARTITIONS": str(s.topic_partitions),
            "LINEINSPECT_THREADS": "1", "LINEINSPECT_LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": "1",
        })
        return env

    def start_consumer(self, idle_timeout_s: float = 90.0, engine_url: str = "local://onnx",
                       extra_env: dict[str, str] | None = None, launcher: list[str] | None = None) -> subprocess.Popen:
        """``launcher``: what runs the CLI (default ``-m lineinspect.cli``; the soak wraps one in tracemalloc)."""
        s = self.settings
        log_path = self.tmp / f"consumer-{len(self.procs)}.log"
        cmd = [sys.executable, *(launcher or ["-m", "lineinspect.cli"]), "consume", "--bus", s.bus_url, "--engine", engine_url,
               "--db", s.resolved_db_url, "--cache", s.cache_url, "--group", s.consumer_group,
               "--topic", s.topic_frames, "--batch", str(s.batch_max_records),
               "--batch-wait-ms", str(s.batch_max_wait_ms), "--idle-timeout", str(idle_timeout_s)]
        with open(log_path, "wb") as out:
            proc = subprocess.Popen(cmd, cwd=REPO, env={**self.consumer_env(), **(extra_env or {})},
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        self.logs.append(log_path)
        return proc

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.logs if p.exists())

    def stop_consumers(self, timeout_s: float = 30.0) -> list[int | None]:
        """SIGTERM (finish the batch in hand, commit, exit) every running consumer; their exit codes."""
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        codes = []
        for p in self.procs:
            try:
                codes.append(p.wait(timeout=timeout_s))
            except subprocess.TimeoutExpired:
                p.kill()
                codes.append(None)
        return codes

    def kill_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)

    # observations --------------------------------------------------------------------------------
    def stored_keys(self) -> list[tuple[str, int]]:
        from storage.models import Camera, InspectionResult

        eng = create_engine(self.settings.resolved_db_url)
        try:
            with eng.connect() as conn:
                q = select(Camera.name, InspectionResult.frame_id).join(Camera, Camera.id == InspectionResult.camera_id)
                return [(c, int(f)) for c, f in conn.execute(q).all()]
        finally:
            eng.dispose()

    def stored_count(self) -> int:
        from storage.models import InspectionResult

        eng = create_engine(self.settings.resolved_db_url)
        try:
            with eng.connect() as conn:
                return int(conn.execute(select(func.count()).select_from(InspectionResult)).scalar_one())
        except Exception:  # noqa: BLE001 - the database may be the thing we stopped
            return -1
        finally:
            eng.dispose()

    def wait_for(self, cond, timeout_s: float, what: str, poll_s: float = 0.25) -> None:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if cond():
                return
            dead = [p.returncode for p in self.procs if p.poll() is not None and p.returncode not in (0, -9)]
            if dead:
                raise AssertionError(f"a consumer exited with {dead} while waiting for {what}:\n{self.log_text()[-4000:]}")
            time.sleep(poll_s)
        raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what} "
                             f"(stored={self.stored_count()}):\n{self.log_text()[-4000:]}")

    def group_lag(self) -> int:
        """Uncommitted records of the test's consumer group over all partitions (-1 if unknown)."""
        from kafka import KafkaConsumer, TopicPartition

        s = self.settings
        try:  # a member-less client of the group: reads its committed offsets without joining it
            probe = KafkaConsumer(bootstrap_servers=s.kafka_bootstrap, group_id=s.consumer_group,
                                  enable_auto_commit=False, request_timeout_ms=10_000)
        except Exception:  # noqa: BLE001 - the broker may be restarting
            return -1
        try:
            tps = [TopicPartition(s.topic_frames, p) for p in range(s.topic_partitions)]
            ends = probe.end_offsets(tps)
            return sum(ends[tp] - (probe.committed(tp) or 0) for tp in tps)
        except Exception:  # noqa: BLE001
            return -1
        finally:
            probe.close(autocommit=False)


@pytest.fixture()
def rig(fault_services: Services, tiny_model: TinyModel, tmp_path: Path) -> Iterator[Rig]:
    from storage.registry import ModelRegistry
    from storage.store import ResultStore

    run_id = uuid.uuid4().hex[:10]
    # dropped on exit, after the services are back (the drop uses a fresh connection)
    with throwaway_database(fault_services.urls["postgres"], "li_fault") as db_url:
        settings = Settings(home=tmp_path, models_dir=tmp_path / "models", bus_url=fault_services.urls["kafka"],
                            db_url=db_url, cache_url=fault_services.urls["redis"],
                            topic_frames=f"li-fault-{run_id}.frames", topic_dlq=f"li-fault-{run_id}.dlq",
                            topic_partitions=4, consumer_group=f"li-fault-{run_id}", batch_max_records=8,
                            batch_max_wait_ms=50, engine_url="local://onnx", threads=1)
        product = f"tiny-{run_id}"
        with ResultStore.open(db_url) as store:
            reg = ModelRegistry(store, settings.resolved_models_dir)
            reg.promote(product, reg.register(product, tiny_model.model_dir, threshold=tiny_model.threshold))
        r = Rig(settings, fault_services, tmp_path, product, run_id)
        try:
            yield r
        finally:
            r.kill_all()
            for svc in ("postgres", "redis", "kafka"):  # a failed test must not leave a service down
                try:
                    fault_services.start(svc)
                except (RuntimeError, subprocess.TimeoutExpired):
                    pass
            import redis as redis_lib

            try:
                redis_lib.Redis.from_url(fault_services.urls["redis"]).config_set("maxmemory", 0)
            except redis_lib.RedisError:
                pass


# --- the camera ----------------------------------------------------------------------------------------
class Camera(threading.Thread):
    """Publishes ``n`` frames at ``fps`` in groups; a group the broker did not acknowledge is re-sent."""

    def __init__(self, settings: Settings, product: str, n: int, fps: float, cameras: int = 2, group: int = 8) -> None:
        super().__init__(name="camera", daemon=True)
        self.settings, self.product, self.n, self.fps = settings, product, n, fps
        self.cameras = [f"cam-{i}-{product}" for i in range(cameras)]
        self.group = group
        self.payloads = frame_payloads()
        self.acked: list[tuple[str, int]] = []
        self.resends = 0
        self.errors: list[str] = []
        self.done = threading.Event()
        self._stop_evt = threading.Event()

    def envelopes(self, start: int, count: int) -> list[FrameEnvelope]:
        out = []
        for i in range(start, start + count):
            cam = self.cameras[i % len(self.cameras)]
            out.append(FrameEnvelope(self.product, "L1", cam, i, self.payloads[i % len(self.payloads)], "jpeg",
                                     (*FRAME_HW, 3), capture_ts=time.time()))
        return out

    def run(self) -> None:
        from ingest.bus.kafka import KafkaPublisher

        pub = None
        t0 = time.monotonic()
        sent = 0
        try:
            while sent < self.n and not self._stop_evt.is_set():
                envs = self.envelopes(sent, min(self.group, self.n - sent))
                while not self._stop_evt.is_set():
                    try:
                        if pub is None:
                            pub = KafkaPublisher(self.settings, linger_ms=5)
                        for env in envs:
                            pub.publish(*env.to_message())
                        pub.flush(15)
                        break
                    except Exception as exc:  # noqa: BLE001 - broker down: reconnect and re-send the group
                        self.errors.append(f"{type(exc).__name__}: {exc}"[:200])
                        self.resends += 1
                        if pub is not None:
                            try:
                                pub.close()
                            except Exception:  # noqa: BLE001
                                pass
                        pub = None
                        self._stop_evt.wait(0.5)
                self.acked.extend(e.key for e in envs)
                sent += len(envs)
                ahead = t0 + sent / self.fps - time.monotonic()
                if ahead > 0:
                    self._stop_evt.wait(ahead)
        finally:
            if pub is not None:
                pub.close()
            self.done.set()

    def stop(self) -> None:
        self._stop_evt.set()
