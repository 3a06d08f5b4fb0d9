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

VIEWS = ("top", "left", "right")


def texture(seed: int, spot: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:128, 0:128]
    img = 120 + 40 * np.sin(xx / 2.5 + rng.uniform(0, 6)) * np.cos(yy / 2.5) + rng.normal(0, 3, (128, 128))
    if spot:
        img[50:64, 70:84] = 250
    return np.repeat(np.clip(img, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)


class Line:
    """Scores views with one engine and stores them like a consumer would, then calls the fuser."""

    def __init__(self, store: ResultStore, fuser: SpecimenFuser, engine: ZeroShotEngine) -> None:
        self.store, self.fuser, self.engine = store, fuser, engine
        self.frame_id = 0

    def shoot(self, specimen: str, views: dict[str, np.ndarray]):  # noqa: ANN201
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
def line(tmp_path) -> Line:  # noqa: ANN001
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
