"""The consumer hands encoded frames to engines that decode them themselves (engines.base.takes_encoded):
the PyTorch engine's GPU decode on a GPU host, its CPU fallback here. Checks before decoding (bomb guard,
geometry) stay in the consumer; a frame the engine's decoder refuses is isolated, never loses the batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from inference.consumer import InferenceConsumer
from inference.engines.base import EngineOutput
from inference.engines.torch_engine import TorchEngine
from inference.model.inp_former import InpConfig, InpFormer
from inference.model_dir import save_model_dir
from inference.telemetry import ConsumerMetrics
from ingest.bus.memory import MemoryBus, MemoryConsumer, MemoryPublisher
from ingest.envelope import FrameEnvelope, decode_frame, encode_image
from lineinspect.settings import Settings
from storage.store import ResultStore


def _consumer(settings: Settings, bus: MemoryBus, store: ResultStore, engine: object) -> InferenceConsumer:
    return InferenceConsumer(settings, MemoryConsumer(bus, settings.topic_frames, "g", settings.topic_dlq),
                             engine, store, None, ConsumerMetrics(settings),  # type: ignore[arg-type]
                             backoff_initial_s=0.01, backoff_max_s=0.05)


def _image(i: int) -> np.ndarray:
    rng = np.random.default_rng(i)
    return np.kron(rng.integers(0, 255, (60, 70, 3), dtype=np.uint8), np.ones((8, 8, 1), np.uint8))  # 480x560


def _send(bus: MemoryBus, settings: Settings, env: FrameEnvelope) -> None:
    MemoryPublisher(bus, settings.topic_frames).publish(*env.to_message())


def _corrupt_jpeg() -> bytes:
    """A JPEG whose headers are intact (480x560) and whose entropy-coded data is cut off."""
    data = encode_image(_image(9), "jpeg", 92)
    return data[: len(data) // 8]


@pytest.fixture()
def engine(tmp_path) -> TorchEngine:
    torch.manual_seed(1)
    m = InpFormer(InpConfig(backbone="random_tiny", input_hw=(64, 64), width=32, head_dim=16, decoder_blocks=2))
    return TorchEngine(save_model_dir(tmp_path / "m", m, {"categories": ["a/b"], "seed": 1}, {"threshold": 0.5}))


def test_torch_engine_gets_the_jpeg_bytes_and_scores_like_decode_then_infer(settings: Settings, store: ResultStore,
                                                                             engine: TorchEngine) -> None:
    bus = MemoryBus(partitions=1)
    envs = [FrameEnvelope("widget", "L1", "cam-1", i, encode_image(_image(i), "jpeg", 92), "jpeg", (480, 560, 3))
            for i in range(1, 6)]
    for e in envs:
        _send(bus, settings, e)
    seen: list[list[FrameEnvelope]] = []
    real = engine.infer_encoded

    def spy(product, batch, max_pixels=40_000_000, oversample=2.0):
        seen.append(list(batch))
        return real(product, batch, max_pixels, oversample)

    engine.infer_encoded = spy  # type: ignore[method-assign]
    engine.infer = None  # type: ignore[assignment]  # the pixel path must not be taken
    c = _consumer(settings, bus, store, engine)
    assert c.run(max_frames=5, idle_timeout_s=2) == 5
    c.close()
    assert [e.frame_id for b in seen for e in b] == [1, 2, 3, 4, 5]  # whole envelopes, the bytes untouched
    ref = TorchEngine.infer(engine, "widget", [decode_frame(e, target_hw=(64, 64)).image for e in envs])
    for i, e in enumerate(envs):
        row = store.get_result("cam-1", e.frame_id)
        assert row is not None and (row["width"], row["height"]) == (560, 480)
        assert row["engine"] == "torch+cpudecode"  # no CUDA here: the engine's CPU fallback decoded it
        assert row["score"] == pytest.approx(float(ref.scores[i]), rel=1e-5, abs=1e-6)


def test_bad_frames_are_refused_before_the_engine_or_isolated_after_it(settings: Settings, store: ResultStore,
                                                                       engine: TorchEngine) -> None:
    bus = MemoryBus(partitions=1)
    good = encode_image(_image(1), "jpeg", 92)
    _send(bus, settings, FrameEnvelope("widget", "L1", "cam-1", 1, good, "jpeg", (480, 560, 3)))
    _send(bus, settings, FrameEnvelope("widget", "L1", "cam-1", 2, _corrupt_jpeg(), "jpeg", (480, 560, 3)))
    _send(bus, settings, FrameEnvelope("widget", "L1", "cam-1", 3, good, "jpeg", (400, 560, 3)))  # wrong shape
    _send(bus, settings, FrameEnvelope("widget", "L1", "cam-1", 4, good, "jpeg", (480, 560, 3)))
    got: list[int] = []
    real = engine.infer_encoded

    def spy(product, batch, max_pixels=40_000_000, oversample=2.0):
        got.append(len(batch))
        return real(product, batch, max_pixels, oversample)

    engine.infer_encoded = spy  # type: ignore[method-assign]
    s = settings.with_overrides(max_frame_pixels=300_000)
    c = _consumer(s, bus, store, engine)
    assert c.run(max_frames=4, idle_timeout_s=2) == 4
    c.close()
    assert got == [3]  # the shape mismatch never reached the engine; the corrupt frame did (its header is fine)
    reasons = {int(dict(r.headers)["li-src-offset"]): dict(r.headers)["li-dlq-reason"].decode()
               for r in bus.records(settings.topic_dlq)}
    assert reasons == {1: "undecodable", 2: "shape_mismatch"}
    assert store.get_result("cam-1", 1) is not None and store.get_result("cam-1", 4) is not None
    assert store.count_results() == 2
    assert sum(bus.committed("g", "frames").values()) == 4


def test_oversized_frames_are_refused_before_the_engine(settings: Settings, store: ResultStore,
                                                        engine: TorchEngine) -> None:
    bus = MemoryBus(partitions=1)
    _send(bus, settings, FrameEnvelope("widget", "L1", "cam-1", 1, encode_image(_image(1), "jpeg", 92), "jpeg"))
    engine.infer_encoded = None  # type: ignore[assignment]  # must not be called
    c = _consumer(settings.with_overrides(max_frame_pixels=100_000), bus, store, engine)
    assert c.run(max_frames=1, idle_timeout_s=2) == 1
    c.close()
    assert [dict(r.headers)["li-dlq-reason"].decode() for r in bus.records(settings.topic_dlq)] == ["oversized"]


class _Switching:
    """Takes encoded frames when the consumer parses them, then no longer (a route replaced mid-batch)."""

    name = "switching"

    def __init__(self) -> None:
        self.encoded = True
        self.pixels: list[tuple[int, ...]] = []

    def takes_encoded(self, product: str) -> bool:
        was, self.encoded = self.encoded, False
        return was

    def decode_hw(self, product: str) -> tuple[int, int]:
        return (32, 32)

    def infer_encoded(self, *a: object, **k: object) -> tuple[EngineOutput, list, str]:
        raise AssertionError("the route no longer takes encoded frames")

    def infer(self, product: str, images: list[np.ndarray]) -> EngineOutput:
        self.pixels.extend(im.shape for im in images)
        n = len(images)
        return EngineOutput(np.zeros(n, np.float32), np.zeros((n, 8, 8), np.float32), "v1", 0.5)

    def close(self) -> None:
        pass


def test_a_route_change_between_parse_and_score_decodes_on_the_cpu(settings: Settings, store: ResultStore) -> None:
    bus = MemoryBus(partitions=1)
    _send(bus, settings, FrameEnvelope("widget", "L1", "cam-1", 1, encode_image(_image(1), "jpeg", 92), "jpeg"))
    eng = _Switching()
    c = _consumer(settings, bus, store, eng)
    assert c.run(max_frames=1, idle_timeout_s=2) == 1
    c.close()
    assert eng.pixels == [(32, 32, 3)] and store.count_results() == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on a GPU host)")
def test_on_a_gpu_the_consumer_decodes_on_the_device_and_still_isolates_a_corrupt_frame(
        settings: Settings, store: ResultStore, engine: TorchEngine, tmp_path) -> None:
    """The same batch as the CPU-fallback tests, through nvJPEG: good frames are stored with the
    device decode's engine name and scores close to the CPU path's; the cut-off JPEG is still
    dead-lettered alone (nvJPEG refusing it, or the CPU fallback refusing it), never scored."""
    gpu = TorchEngine(tmp_path / "m", device="cuda")  # the fixture's model directory
    bus = MemoryBus(partitions=1)
    envs = {i: FrameEnvelope("widget", "L1", "cam-1", i, encode_image(_image(i), "jpeg", 92), "jpeg", (480, 560, 3))
            for i in (1, 3, 4)}
    for i in (1, 2, 3, 4):
        _send(bus, settings, envs[i] if i in envs else
              FrameEnvelope("widget", "L1", "cam-1", 2, _corrupt_jpeg(), "jpeg", (480, 560, 3)))
    c = _consumer(settings, bus, store, gpu)
    assert c.run(max_frames=4, idle_timeout_s=5) == 4
    c.close()
    reasons = [dict(r.headers)["li-dlq-reason"].decode() for r in bus.records(settings.topic_dlq)]
    assert reasons == ["undecodable"]
    assert store.get_result("cam-1", 2) is None and store.count_results() == 3
    ref = TorchEngine.infer(engine, "widget", [decode_frame(envs[i], target_hw=(64, 64)).image for i in (1, 3, 4)])
    for k, i in enumerate((1, 3, 4)):
        row = store.get_result("cam-1", i)
        assert row is not None and row["engine"] in ("torch+gpudecode", "torch+cpudecode")
        assert row["score"] == pytest.approx(float(ref.scores[k]), rel=0.05, abs=0.05)
    assert any(store.get_result("cam-1", i)["engine"] == "torch+gpudecode" for i in (1, 3, 4))  # type: ignore[index]
