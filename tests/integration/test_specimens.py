"""Multi-camera specimens end to end on SQLite: engine -> stored frame results -> fused specimen verdict."""

from __future__ import annotations

import time

import numpy as np
import pytest

from inference.engines.zero_shot import ZeroShotEngine
from inference.fusion import SpecimenFuser
from lineinspect.settings import Settings
from storage.records import ResultRow
from storage.store import ResultStore
from tests.images import wavy_texture

VIEWS = ("top", "left", "right")


def texture(seed: int, spot: bool = False) -> np.ndarray:
    return wavy_texture(seed, (128, 128), (slice(50, 64), slice(70, 84)) if spot else None)


class Line:
    """Scores views with one engine and stores them like a consumer would, then calls the fuser."""

    def __init__(self, store: ResultStore, fuser: SpecimenFuser, engine: ZeroShotEngine) -> None:
        self.store, self.fuser, self.engine = store, fuser, engine
        self.frame_id = 0

    def shoot(self, specimen: str, views: dict[str, np.ndarray]):
        out = self.engine.infer("gear", list(views.values()))
        rows = []
        now = time.time()
        for (view, img), score in zip(views.items(), out.scores):
            self.frame_id += 1
            rows.append(ResultRow(product="gear", line="L1", camera=f"cam-{view}", frame_id=self.frame_id,
                                  captured_at=now, inferred_at=now, score=float(score), threshold=out.threshold,
                                  verdict="defect" if score > out.threshold else "ok", model_version=out.model_version,
                                  engine="zero-shot", infer_ms=out.infer_ms, batch_size=len(views),
                                  width=img.shape[1], height=img.shape[0], specimen_id=specimen, view=view))
        self.store.save_results(rows)
        return self.fuser.on_results(rows)


@pytest.fixture()
def line(tmp_path) -> Line:
    store = ResultStore.open(f"sqlite:///{(tmp_path / 's.sqlite').as_posix()}")
    settings = Settings(home=tmp_path, fusion_default_views=3, fusion_timeout_s=30.0, fusion_method="max")
    eng = ZeroShotEngine(method="grnr", input_hw=(128, 128), min_scores=6, window=50)
    ln = Line(store, SpecimenFuser(store, settings), eng)
    for i in range(2):  # a few normal parts: warms the zero-shot threshold and gives decided ok specimens
        (d,) = ln.shoot(f"N{i}", {v: texture(10 * i + j) for j, v in enumerate(VIEWS)})
        assert d.complete
    yield ln
    store.close()


def test_defect_visible_in_one_view_flags_the_specimen(line: Line) -> None:
    (d,) = line.shoot("S1", {"top": texture(101), "left": texture(102, spot=True), "right": texture(103)})
    assert d.complete and d.received_views == 3 and d.verdict == "defect"
    spec = line.store.get_specimen("gear", "S1")
    assert spec["verdict"] == "defect" and len(spec["result_ids"]) == 3
    views = {line.store.get_result_by_id(i)["view"]: line.store.get_result_by_id(i)["verdict"] for i in spec["result_ids"]}
    assert views["left"] == "defect" and views["top"] == "ok" and views["right"] == "ok"
    # the normal parts were decided ok
    assert line.store.get_specimen("gear", "N1")["verdict"] == "ok"


def test_missing_view_is_decided_at_the_timeout_and_marked_incomplete(line: Line) -> None:
    assert line.shoot("S2", {"top": texture(201), "left": texture(202)}) == []
    assert line.store.get_specimen("gear", "S2") is None
    assert line.fuser.sweep(time.time() + 1) == []
    (d,) = line.fuser.sweep(time.time() + 31)
    assert d.specimen_id == "S2" and not d.complete and d.received_views == 2 and d.expected_views == 3
    spec = line.store.get_specimen("gear", "S2")
    assert not spec["complete"] and spec["received_views"] == 2
    assert line.fuser.sweep(time.time() + 3600) == []       # decided exactly once


def test_consumer_fuses_specimens_across_consumers(tmp_path) -> None:
    """Views of one part land on two consumers (two partitions); the verdict is decided once, in the DB."""
    from inference.consumer import InferenceConsumer
    from inference.engines.base import EngineOutput
    from inference.telemetry import ConsumerMetrics
    from ingest.bus.memory import MemoryBus, MemoryConsumer, MemoryPublisher
    from ingest.publisher import FramePublisher

    class RedEngine:
        """score = mean red / 255, threshold 0.5 (deterministic and fast)."""

        name = "red"

        def infer(self, product: str, images: list[np.ndarray]) -> EngineOutput:
            s = np.array([im[:, :, 0].mean() / 255.0 for im in images], np.float32)
            return EngineOutput(s, np.stack([im[:16, :16, 0] / 255.0 for im in images]).astype(np.float32), "v1", 0.5)

        def close(self) -> None:
            pass

    settings = Settings(home=tmp_path, batch_max_records=4, batch_max_wait_ms=20, topic_frames="frames",
                        topic_dlq="frames.dlq", fusion_default_views=3, fusion_timeout_s=30.0)
    store = ResultStore.open(settings.resolved_db_url)
    bus = MemoryBus(partitions=2)
    pubs = {v: FramePublisher(settings, "gear", "L1", f"cam-{v}", MemoryPublisher(bus, settings.topic_frames),
                              first_frame_id=1, encoding="png") for v in VIEWS}
    for sid, bad_view in (("P1", "left"), ("P2", None)):
        for v in VIEWS:
            img = np.full((32, 32, 3), 40, np.uint8)
            if v == bad_view:
                img[:, :, 0] = 240
            pubs[v].publish(img, specimen_id=sid, view=v)
    pubs["top"].publish(np.full((32, 32, 3), 40, np.uint8), specimen_id="P3", view="top")   # the others never come
    consumers = [InferenceConsumer(settings, MemoryConsumer(bus, settings.topic_frames, "g", settings.topic_dlq),
                                   RedEngine(), store, None, ConsumerMetrics(settings), backoff_initial_s=0.01)
                 for _ in range(2)]
    try:
        handled = 0
        for _ in range(10):
            for c in consumers:
                handled += c.run(max_frames=7 - handled, idle_timeout_s=0.2) if handled < 7 else 0
        assert handled == 7
        assert store.get_specimen("gear", "P1")["verdict"] == "defect"
        assert store.get_specimen("gear", "P2")["verdict"] == "ok"
        assert store.get_specimen("gear", "P3") is None
        fuser = next(c.fuser for c in consumers if c.fuser is not None)
        (d,) = fuser.sweep(time.time() + 60)
        assert d.specimen_id == "P3" and not d.complete and d.received_views == 1
    finally:
        for c in consumers:
            c.close()
        store.close()
