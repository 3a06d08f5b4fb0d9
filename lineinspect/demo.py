"""``lineinspect demo``: the whole system on one machine with no services.

What it does, in order (each step is the production code path, only the URLs differ):
  1. generates normal frames of a product with the synthetic line simulator;
  2. trains an INP-Former model on them and registers + promotes it in the model registry;
  3. streams a simulated camera (with scratches, stains, cracks, missing print) through the
     in-memory bus -> batching consumer -> engine -> SQLite + in-memory cache;
  4. checks the stored verdicts against the simulator's ground truth and prints a summary,
     and where the dashboard is.
A rerun reuses the trained model unless ``--retrain`` is given.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from lineinspect.logs import kv
from lineinspect.names import check_name, child_path
from lineinspect.settings import Settings

if TYPE_CHECKING:  # types only: these modules are imported where they are used
    from ingest.bus.memory import MemoryBus
    from storage.registry import ModelRegistry, VersionInfo
    from storage.store import ResultStore

log = logging.getLogger("lineinspect.demo")



CAMERA_ENCODING: tuple[Literal["jpeg", "png"], int] = ("jpeg", 92)  # what the simulated camera publishes, and so what the model is trained on

def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train on simulated frames and stream a simulated camera end to end (embedded)")
    p.add_argument("--product", default="widget")
    p.add_argument("--line", default="line-1")
    p.add_argument("--camera", default="cam-1")
    p.add_argument("--frames", type=int, default=120, help="frames the simulated camera streams")
    p.add_argument("--defect-rate", type=float, default=0.15)
    p.add_argument("--train-frames", type=int, default=60)
    p.add_argument("--iters", type=int, default=150, help="training iterations (the model is near its final quality early)")
    p.add_argument("--size", type=int, default=256, help="simulated frame size in pixels")
    p.add_argument("--fps", type=float, default=0.0, help="camera rate; 0 = as fast as the pipeline takes them")
    p.add_argument("--home", type=Path, default=None, help="where the SQLite database and models go (default ./var/demo)")
    p.add_argument("--retrain", action="store_true", help="train a new model even if one is registered")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dashboard", action="store_true",
                   help="afterwards, serve the dashboard on the demo's database (Ctrl-C stops it)")
    p.add_argument("--dashboard-port", type=int, default=None, help="dashboard port (default settings dashboard_port)")
    p.set_defaults(func=run_demo)


def console_command() -> str:
    """How to run ``lineinspect`` from any shell: the console script beside this interpreter, by
    absolute path (it lives in the clone's .venv, which a fresh shell does not have on PATH)."""
    script = Path(sys.executable).parent / "lineinspect"
    if script.is_file() and os.access(script, os.X_OK):
        return shlex.quote(str(script))
    return f"{shlex.quote(sys.executable)} -m lineinspect.cli"


def run_demo(args: argparse.Namespace, settings: Settings) -> int:
    for kind, value in (("product", args.product), ("line", args.line), ("camera", args.camera)):
        check_name(kind, value)  # names become paths and keys: refuse them before anything is written
    home = (args.home or (settings.home / "demo")).resolve()
    home.mkdir(parents=True, exist_ok=True)
    settings = settings.with_overrides(
        home=home, bus_url="memory://", cache_url="memory://", db_url=f"sqlite:///{home / 'lineinspect.sqlite'}",
    )
    t_start = time.perf_counter()
    print(f"lineinspect demo: embedded run in {home} (SQLite, in-memory bus and cache)", flush=True)

    from storage import open_store
    from storage.registry import ModelRegistry

    store = open_store(settings)
    registry = ModelRegistry(store, settings.resolved_models_dir)
    version = _ensure_model(args, settings, registry)
    print(f"[2/4] model {version.version} of {args.product!r} is active (threshold {version.threshold:.4f})", flush=True)

    from inference.pipeline import build_pipeline
    from inference.router import ModelRouter
    from ingest.bus import open_consumer
    from ingest.bus.memory import MemoryBus

    bus = MemoryBus(partitions=settings.topic_partitions)
    truth = _start_camera(args, settings, bus)
    pipe = build_pipeline(settings, open_consumer(settings, memory_bus=bus), store=store, registry=registry,
                          build_engine=ModelRouter)
    consumer = pipe.consumer
    print(f"[3/4] streaming {args.frames} frames from simulated camera {args.camera!r} through the pipeline ...", flush=True)
    t0 = time.perf_counter()
    n = consumer.run(max_frames=args.frames, idle_timeout_s=120.0)
    elapsed = time.perf_counter() - t0
    truth_thread, defects = truth
    truth_thread.join(timeout=10)
    consumer.close()

    summary = _summarise(store, args, defects)
    print("[4/4] results", flush=True)
    print(f"  frames stored        {summary['stored']} of {args.frames} ({n} consumed, {elapsed:.1f} s, {n / max(elapsed, 1e-9):.1f} frames/s)")
    print(f"  flagged as defect    {summary['flagged']} (simulator injected {len(defects)})")
    print(f"  recall / precision   {summary['recall']:.2f} / {summary['precision']:.2f} against the simulator's ground truth")
    print(f"  database             {settings.resolved_db_url}")
    print(f"  models               {settings.resolved_models_dir}")
    port = args.dashboard_port or settings.dashboard_port
    dashboard_cmd = f"{console_command()} dashboard --db {shlex.quote(settings.resolved_db_url)} --port {port}"
    print(f"  dashboard            {dashboard_cmd}   (then open http://127.0.0.1:{port})")
    print(f"done in {time.perf_counter() - t_start:.0f} s", flush=True)
    log.info("demo finished", extra=kv(**{k: v for k, v in summary.items()}))
    pipe.close()
    if summary["stored"] != args.frames:
        print("lineinspect demo: not every frame was stored - see the log above", flush=True)
        return 1
    if args.dashboard:
        from dashboard.cli import serve

        print(f"dashboard: open http://127.0.0.1:{port} (Ctrl-C stops it)", flush=True)
        return serve(settings.with_overrides(dashboard_port=port))
    return 0


def _ensure_model(args: argparse.Namespace, settings: Settings, registry: ModelRegistry) -> VersionInfo:
    active = registry.active(args.product)
    if active is not None and not args.retrain:
        print(f"[1/4] reusing the registered model of {args.product!r} (--retrain to train a new one)", flush=True)
        return active
    from inference.model.inp_former import InpConfig
    from ingest.simulator import LineSimulator
    from training.presets import resolve
    from training.train import TrainConfig, train

    sim = LineSimulator(product=args.product, size=(args.size, args.size), defect_rate=0.0, seed=args.seed + 1000)
    # Train on what the line sends: the camera publishes JPEG, and a model trained on the pristine
    # frames reads JPEG's block artefacts as anomalies (a quarter of normal frames flagged).
    images = [_as_published(im) for im in sim.normal_frames(args.train_frames)]
    print(f"[1/4] training INP-Former ({settings.model_preset} recipe) on {len(images)} simulated normal frames of "
          f"{args.product!r} ({args.iters} iterations)", flush=True)
    cfg = TrainConfig(model=InpConfig(**resolve(settings.model_preset, {})), iters=args.iters, threads=settings.threads,
                      cache_dir=str(settings.home / "feature-cache"))
    cfg.categories = [args.product]
    out = child_path(settings.home / "runs", f"{args.product}-{int(time.time())}", kind="run folder", max_len=255)
    model_dir = train(images, cfg, out_dir=out, seed=args.seed)
    version = registry.register(args.product, model_dir, backbone=cfg.model.backbone,
                                data_snapshot={"source": "simulator", "frames": len(images), "seed": args.seed + 1000})
    registry.promote(args.product, version)
    return registry.get(args.product, version)


def _as_published(image: Any) -> Any:
    """The frame as a consumer will see it: through the publisher's JPEG encoding and back."""
    import cv2
    import numpy as np

    from ingest.envelope import encode_image

    data = encode_image(image, *CAMERA_ENCODING)
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _start_camera(args: argparse.Namespace, settings: Settings, bus: MemoryBus) -> tuple[threading.Thread, set[int]]:
    """Publish the simulated camera from a thread, as a separate process would."""
    from ingest.bus import open_publisher
    from ingest.publisher import FramePublisher
    from ingest.simulator import LineSimulator

    sim = LineSimulator(product=args.product, size=(args.size, args.size), defect_rate=args.defect_rate, seed=args.seed)
    defects: set[int] = set()
    base = int(time.time() * 1000)  # monotonic across reruns, so a rerun is new frames, not redeliveries
    args.first_frame_id = base
    pub = FramePublisher(settings, args.product, args.line, args.camera, open_publisher(settings, memory_bus=bus), first_frame_id=base,
                         encoding=CAMERA_ENCODING[0], quality=CAMERA_ENCODING[1])

    def loop() -> None:
        period = 1.0 / args.fps if args.fps > 0 else 0.0
        for i in range(args.frames):
            f = sim.frame(i)
            if f.defect:
                defects.add(base + i)
            pub.publish(f.image)
            if period:
                time.sleep(period)
        pub.flush()

    t = threading.Thread(target=loop, name="sim-camera", daemon=True)
    t.start()
    return t, defects


def _summarise(store: ResultStore, args: argparse.Namespace, defects: set[int]) -> dict[str, Any]:
    lo, hi = args.first_frame_id, args.first_frame_id + args.frames
    rows = [r for r in store.results_for_camera(args.camera, min_frame_id=lo) if lo <= r["frame_id"] < hi]
    flagged = {r["frame_id"] for r in rows if r["verdict"] == "defect"}
    tp = len(flagged & defects)
    return {
        "stored": len(rows),
        "flagged": len(flagged),
        "recall": tp / len(defects) if defects else 1.0,
        "precision": tp / len(flagged) if flagged else 1.0,
    }
