"""Cold start end to end (SQLite + memory bus): a new product is scored zero-shot from its first
frame, then by its trained model as soon as one is registered and promoted - no restart."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from inference.consumer import InferenceConsumer
from inference.engines.zero_shot import ZeroShotEngine
from inference.model.inp_former import InpConfig, InpFormer
from inference.model_dir import save_model_dir
from inference.router import ModelRouter, local_engine_factory, open_engine
from inference.telemetry import ConsumerMetrics
from ingest.bus.memory import MemoryBus, MemoryConsumer, MemoryPublisher
from ingest.publisher import FramePublisher
from lineinspect.settings import Settings
from storage.registry import ModelRegistry
from storage.store import ResultStore


def texture(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:64, 0:64]
    img = 120 + 40 * np.sin(xx / 2.0 + rng.uniform(0, 6)) * np.cos(yy / 2.0) + rng.normal(0, 3, (64, 64))
    return np.repeat(np.clip(img, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path, engine_url="local://torch", batch_max_records=4, batch_max_wait_ms=20,
                    topic_frames="frames", topic_dlq="frames.dlq")


def test_open_engine_falls_back_to_zero_shot_behind_the_setting(settings: Settings, tmp_path: Path) -> None:
    store = ResultStore.open(settings.resolved_db_url)
    reg = ModelRegistry(store, tmp_path / "models")
    on = open_engine(settings, reg)
    off = open_engine(settings.with_overrides(zero_shot_fallback=False), reg)
    try:
        assert isinstance(on, ModelRouter) and isinstance(on.fallback, ZeroShotEngine)
        assert isinstance(off, ModelRouter) and off.fallback is None
    finally:
        on.close()
        off.close()
        store.close()


def test_new_product_zero_shot_first_then_trained_model_without_restart(settings: Settings, tmp_path: Path) -> None:
    store = ResultStore.open(settings.resolved_db_url)
    registry = ModelRegistry(store, tmp_path / "models")
    fallback = ZeroShotEngine(backbone="random_tiny", input_hw=(64, 64), min_scores=4, window=20)
    router = ModelRouter(settings, registry, engine_factory=local_engine_factory(settings), fallback=fallback, poll_s=0.2)
    bus = MemoryBus(partitions=1)
    pub = FramePublisher(settings, "newpart", "L1", "cam-1", MemoryPublisher(bus, settings.topic_frames),
                         first_frame_id=1, encoding="png")
    consumer = InferenceConsumer(settings, MemoryConsumer(bus, settings.topic_frames, "g", settings.topic_dlq), router,
                                 store, None, ConsumerMetrics(settings), backoff_initial_s=0.01, backoff_max_s=0.05)
    try:
        for i in range(4):
            pub.publish(texture(i))
        assert consumer.run(max_frames=4, idle_timeout_s=3) == 4
        first = store.results_for_camera("cam-1")
        assert [r["frame_id"] for r in first] == [1, 2, 3, 4]
        assert {r["model_version"] for r in first} == {"zero-shot"}
        # the first frames were scored before the product's rolling threshold existed: marked as such
        assert store.get_result("cam-1", 1)["engine"] == "zero-shot:warmup"

        # the retraining path (another engineer's) ends in register + promote; here a tiny stand-in model
        torch.manual_seed(0)
        model = InpFormer(InpConfig(backbone="random_tiny", input_hw=(64, 64), width=32, head_dim=16, decoder_blocks=2))
        save_model_dir(tmp_path / "trained", model.eval(), {}, {"threshold": 0.5})
        version = registry.register("newpart", tmp_path / "trained")
        registry.promote("newpart", version)
        deadline = time.monotonic() + 20
        while router.products().get("newpart") != version and time.monotonic() < deadline:
            time.sleep(0.1)
        assert router.products().get("newpart") == version

        for i in range(4, 8):
            pub.publish(texture(i))
        assert consumer.run(max_frames=4, idle_timeout_s=3) == 4
        later = store.results_for_camera("cam-1", min_frame_id=5)
        assert [r["frame_id"] for r in later] == [5, 6, 7, 8]
        assert {r["model_version"] for r in later} == {version}
        assert all(r["threshold"] == pytest.approx(0.5) for r in later)
    finally:
        consumer.close()
        router.close()
        store.close()


def test_eval_zero_shot_runs_on_any_mvtec_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``lineinspect eval --zero-shot`` on a simulator-written category: metrics computed, JSON written."""
    import json

    from ingest.simulator import LineSimulator
    from lineinspect.cli import main

    cat = LineSimulator("fabric-roll", size=(96, 128), seed=1).write_mvtec(tmp_path / "sim" / "fabric", 1, 2, 2)
    out = tmp_path / "zs.json"
    rc = main(["eval", "--zero-shot", "--data", str(cat), "--category", "fabric", "--json", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["engine"] == "zero-shot" and res["n_images"] == 4 and res["n_anomalous"] == 2
    assert 0.0 <= res["image_auroc"] <= 1.0 and 0.0 <= res["pixel_auroc"] <= 1.0
    assert "I-AUROC" in capsys.readouterr().out
