"""The families post-store step: flagged frames get region embeddings and families, normal ones nothing;
a failing step never blocks the commit."""

from __future__ import annotations

import numpy as np

from inference.engines.base import EngineOutput
from inference.families import EMBED_DIM, FamilyStep, RegionEmbedder, components, pooled
from ingest.bus.memory import MemoryBus, MemoryPublisher
from ingest.publisher import FramePublisher
from lineinspect.settings import Settings
from storage.families import FamilyStore
from storage.store import ResultStore
from tests.inference.test_consumer import make

THRESHOLD = 0.5


class PatchEngine:
    """Score = max red / 255; map = red / 255 at full resolution: a red patch is a defect region."""

    name = "patch"

    def infer(self, product: str, images: list[np.ndarray]) -> EngineOutput:
        maps = np.stack([im[:, :, 0].astype(np.float32) / 255.0 for im in images])
        scores = np.array([im[:, :, 0].max() / 255.0 for im in images], np.float32)
        return EngineOutput(scores, maps, "v0001", THRESHOLD, infer_ms=1.0)

    def close(self) -> None:
        pass


def _frame(i: int, defect: bool) -> np.ndarray:
    rng = np.random.default_rng(i)
    img = rng.integers(10, 40, size=(96, 96, 3), dtype=np.uint8)
    if defect:
        img[8:24, 8:24, 0] = 250                 # two separate regions
        img[60:80, 50:90, 0] = 250
    return img


def test_components_are_largest_first_and_small_specks_dropped():
    m = np.zeros((100, 100), bool)
    m[10:20, 10:20] = True          # 100 px
    m[50:70, 50:80] = True          # 600 px
    m[90, 90] = True                # 1 px: noise
    comps = components(m)
    assert [a for _, _, a in comps] == [600, 100]
    cx, cy, x0, y0, x1, y1 = comps[0][1]
    assert (x0, y0, x1, y1) == (0.5, 0.5, 0.8, 0.7) and abs(cx - 0.645) < 1e-6 and abs(cy - 0.595) < 1e-6
    assert components(np.zeros((10, 10), bool)) == []


def test_pooled_descriptor_is_unit_and_context_relative():
    rng = np.random.default_rng(0)
    feats = [rng.normal(size=(8, 12, 12)).astype(np.float32), rng.normal(size=(4, 6, 6)).astype(np.float32)]
    comp = np.zeros((48, 48), bool)
    comp[0:12, 0:12] = True
    v = pooled(feats, comp)
    assert v.shape == (12,) and abs(float(np.linalg.norm(v)) - 1.0) < 1e-5
    shifted = [f + 5.0 for f in feats]   # the same offset everywhere: the region still differs the same way
    np.testing.assert_allclose(pooled(shifted, comp), v, atol=1e-4)
    tiny = np.zeros((48, 48), bool)
    tiny[30, 30] = True                   # smaller than a cell: still a unit vector
    assert abs(float(np.linalg.norm(pooled(feats, tiny))) - 1.0) < 1e-5


def test_consumer_writes_regions_for_flagged_frames_only(settings: Settings, store: ResultStore):
    bus = MemoryBus(partitions=1)
    pub = FramePublisher(settings, "widget", "L1", "cam-1", MemoryPublisher(bus, settings.topic_frames),
                         first_frame_id=1, encoding="png")
    flagged = []
    for i in range(9):
        env = pub.publish(_frame(i, defect=i % 3 == 0))
        if i % 3 == 0:
            flagged.append(env.frame_id)
    fam = FamilyStore(store.engine, warmup=2)
    step = FamilyStep(fam, RegionEmbedder(threads=1))
    c = make(settings, bus, store, engine=PatchEngine(), post_store=[step])
    assert c.run(max_frames=9, idle_timeout_s=2) == 9
    c.close()
    rows = store.results_for_camera("cam-1")
    assert {r["frame_id"] for r in rows if r["verdict"] == "defect"} == set(flagged)
    for r in rows:
        regions = fam.regions_of("cam-1", r["frame_id"])
        if r["frame_id"] in flagged:
            assert len(regions) == 2
            assert all(g["embedding"].shape == (EMBED_DIM,) and g["family_id"] is not None for g in regions)
            assert regions[0]["area_px"] == 800 and regions[1]["area_px"] == 256
        else:
            assert regions == []
    assert step.embedded_frames == 3
    live = [f for f in fam.families("widget") if f["merged_into"] is None]
    assert sum(f["count"] for f in live) == 6


def test_a_failing_family_step_never_blocks_the_commit(settings: Settings, store: ResultStore):
    class Broken:
        def add_regions(self, batch):
            raise RuntimeError("database said no")

    bus = MemoryBus(partitions=1)
    pub = FramePublisher(settings, "widget", "L1", "cam-1", MemoryPublisher(bus, settings.topic_frames),
                         first_frame_id=1, encoding="png")
    for i in range(4):
        pub.publish(_frame(i, defect=True))
    c = make(settings, bus, store, engine=PatchEngine(), post_store=[FamilyStep(Broken(), RegionEmbedder())])
    assert c.run(max_frames=4, idle_timeout_s=2) == 4
    c.close()
    assert store.count_results() == 4
    assert sum(bus.committed("g", "frames").values()) == 4
