"""ModelRouter: a promoted model that fails verification holds its product (never zero-shot), and
repairing the file or promoting another version recovers without a restart. SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from inference.engines.base import EngineOutput
from inference.metrics import ConsumerMetrics
from inference.router import ModelHeld, ModelRouter
from ingest.bus.memory import MemoryBus
from lineinspect import model_meta
from lineinspect.settings import Settings
from storage.registry import ModelRegistry
from storage.store import ResultStore
from tests.inference.test_consumer import FakeEngine, make, publish


class VersionEngine(FakeEngine):
    """Scores like FakeEngine and reports the version it was built for."""

    def __init__(self, version: str) -> None:
        super().__init__(("widget",))
        self.name, self.version = "local", version

    def infer(self, product: str, images: list[np.ndarray]) -> EngineOutput:
        out = super().infer(product, images)
        out.model_version = self.version
        return out


class ZeroShot(FakeEngine):
    name = "zero-shot"

    def __init__(self) -> None:
        super().__init__(("widget",))


def _version(registry: ModelRegistry, root: Path, tag: str) -> str:
    d = root / f"cand-{tag}"
    d.mkdir()
    (d / "weights.pt").write_bytes(f"weights {tag}".encode())
    (d / "model.onnx").write_bytes(b"onnx " + tag.encode())
    model_meta.write(d, {"backbone": {"name": "tiny"}}, {"threshold": 0.5})
    return registry.register("widget", d)


@pytest.fixture()
def world(db_url: str, tmp_path: Path):
    store = ResultStore.open(db_url)
    registry = ModelRegistry(store, tmp_path / "models")
    yield store, registry
    store.close()


def _router(settings: Settings, registry: ModelRegistry, zs: ZeroShot) -> ModelRouter:
    return ModelRouter(settings, registry, engine_factory=lambda info: VersionEngine(info.version), fallback=zs,
                       poll_s=0, start=False)


@pytest.mark.parametrize("victim", ["weights.pt", "config.json", "calibration.json", "model.onnx"])
def test_a_corrupt_active_model_holds_the_product_and_repair_recovers(settings: Settings, world, tmp_path: Path,
                                                                      victim: str) -> None:
    _, registry = world
    v1 = _version(registry, tmp_path, "a")
    info = registry.promote("widget", v1)
    target = info.path / victim
    good = target.read_bytes()
    target.write_bytes(good + b" tampered")
    zs = ZeroShot()
    router = _router(settings, registry, zs)
    img = [np.zeros((64, 64, 3), np.uint8)]
    with pytest.raises(ModelHeld, match="held"):
        router.infer("widget", img)
    assert "widget" in router.held() and zs.calls == []  # never scored zero-shot
    target.write_bytes(good)  # repaired: the next poll verifies again
    router.refresh()
    assert router.held() == {} and router.infer("widget", img).model_version == v1
    router.close()


def test_promoting_another_version_recovers_a_held_product(settings: Settings, world, tmp_path: Path) -> None:
    _, registry = world
    v1 = _version(registry, tmp_path, "a")
    v2 = _version(registry, tmp_path, "b")
    info = registry.promote("widget", v1)
    (info.path / "calibration.json").write_text('{"threshold": 99.0}')  # a hand-edited threshold
    zs = ZeroShot()
    router = _router(settings, registry, zs)
    with pytest.raises(ModelHeld):
        router.infer("widget", [np.zeros((64, 64, 3), np.uint8)])
    registry.promote("widget", v2)
    router.refresh()
    assert router.products() == {"widget": v2} and router.held() == {} and zs.calls == []
    router.close()


def test_the_consumer_holds_frames_uncommitted_with_a_gauge_and_resumes_after_repair(settings: Settings, world,
                                                                                    tmp_path: Path) -> None:
    store, registry = world
    info = registry.promote("widget", _version(registry, tmp_path, "a"))
    weights = info.path / "weights.pt"
    good = weights.read_bytes()
    weights.write_bytes(b"corrupt")
    bus = MemoryBus(partitions=1)
    publish(bus, settings, 4)
    zs = ZeroShot()
    router = _router(settings, registry, zs)
    metrics = ConsumerMetrics(settings)
    c = make(settings, bus, store, engine=router)
    c.metrics = metrics
    t = threading.Thread(target=c.run, kwargs={"max_frames": 4, "idle_timeout_s": 5})
    t.start()
    deadline = time.monotonic() + 10
    while metrics.registry.get_sample_value("lineinspect_models_held", {"product": "widget"}) != 1.0:
        assert time.monotonic() < deadline, "the held gauge was never set"
        time.sleep(0.02)
    assert bus.committed("g", settings.topic_frames) == {} and store.count_results() == 0 and zs.calls == []
    weights.write_bytes(good)
    t.join(20)
    assert not t.is_alive()
    assert store.count_results() == 4 and bus.committed("g", settings.topic_frames) == {0: 4}
    assert {r["model_version"] for r in store.results_for_camera("cam-1")} == {info.version}
    assert metrics.registry.get_sample_value("lineinspect_models_held", {"product": "widget"}) == 0.0
    c.close()
    router.close()


def test_an_earlier_verified_version_keeps_serving_when_the_new_one_is_corrupt(settings: Settings, world,
                                                                              tmp_path: Path) -> None:
    _, registry = world
    v1 = _version(registry, tmp_path, "a")
    v2 = _version(registry, tmp_path, "b")
    registry.promote("widget", v1)
    router = _router(settings, registry, ZeroShot())
    assert router.products() == {"widget": v1}
    info2 = registry.promote("widget", v2)
    (info2.path / "weights.pt").write_bytes(b"broken after promotion")
    router.refresh()
    assert router.products() == {"widget": v1} and router.held() == {}
    router.close()
