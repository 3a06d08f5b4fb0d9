"""ModelRouter: a promoted model that fails verification holds its product (never zero-shot), and
repairing the file or promoting another version recovers without a restart. SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from inference.engines.base import EngineOutput, UnknownProduct
from inference.router import ModelHeld, ModelRouter
from inference.telemetry import ConsumerMetrics
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


# --- hot swap, as a unit: a fake registry and engines, no database ----------------------------------
class _Info:
    def __init__(self, version: str, threshold: float) -> None:
        self.version, self.threshold = version, threshold


class _Registry:
    def __init__(self) -> None:
        self.active: dict[str, _Info] = {}

    def active_versions(self) -> dict[str, _Info]:
        return dict(self.active)


class _GateEngine:
    """Scores 0.1 per image; ``gate`` (when set) holds infer until released, like a long batch."""

    name = "local"

    def __init__(self, version: str) -> None:
        self.version, self.closed = version, False
        self.gate: threading.Event | None = None
        self.entered = threading.Event()

    def infer(self, product: str, images: list[np.ndarray]) -> EngineOutput:
        assert not self.closed, f"engine {self.version} used after close"
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(10)
        return EngineOutput(np.full(len(images), 0.1, np.float32), np.zeros((len(images), 4, 4), np.float32),
                            model_version="engine-own", threshold=9.9)

    def close(self) -> None:
        self.closed = True


def test_hot_swap_serves_the_new_version_at_once_and_closes_the_old_one_after_its_batch() -> None:
    reg = _Registry()
    built: dict[str, _GateEngine] = {}

    def factory(info: _Info) -> _GateEngine:
        built[info.version] = _GateEngine(info.version)
        return built[info.version]

    reg.active["widget"] = _Info("v0001", 0.5)
    router = ModelRouter(Settings(), reg, engine_factory=factory, poll_s=0, verify=False)
    img = [np.zeros((8, 8, 3), np.uint8)]
    out = router.infer("widget", img)
    assert (out.model_version, out.threshold) == ("v0001", 0.5)  # the route's version and threshold, not the engine's

    # a batch is in flight on v0001 when v0002 is promoted
    built["v0001"].gate = threading.Event()
    in_flight: list[EngineOutput] = []
    t = threading.Thread(target=lambda: in_flight.append(router.infer("widget", img)))
    t.start()
    assert built["v0001"].entered.wait(10)
    reg.active["widget"] = _Info("v0002", 0.7)
    assert router.refresh() == ["widget"]
    assert router.products() == {"widget": "v0002"}
    out = router.infer("widget", img)                       # new batches: the new version, at once
    assert (out.model_version, out.threshold) == ("v0002", 0.7)
    assert not built["v0001"].closed                         # retired, not closed under the running batch
    built["v0001"].gate.set()
    t.join(10)
    assert [o.model_version for o in in_flight] == ["v0001"]  # the old batch finished on the old version
    router.refresh()                                         # the next sync closes what was retired
    assert built["v0001"].closed and not built["v0002"].closed

    # a threshold change of the same version swaps no engine
    reg.active["widget"] = _Info("v0002", 0.8)
    assert router.refresh() == []
    assert router.infer("widget", img).threshold == 0.8 and set(built) == {"v0001", "v0002"}

    # demoted: the product is gone, with no fallback it is unknown
    reg.active.clear()
    assert router.refresh() == ["widget"]
    with pytest.raises(UnknownProduct):
        router.infer("widget", img)
    router.close()
    assert built["v0002"].closed
