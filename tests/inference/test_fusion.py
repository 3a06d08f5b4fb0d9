"""Specimen fusion: pure fusion functions, the decision rule, and the database-backed fuser on SQLite."""

from __future__ import annotations

import threading
import time

import pytest

from inference.fusion import (
    SpecimenFuser,
    ViewScore,
    decide,
    fuse,
    fuse_max,
    fuse_topk_mean,
    threshold_ratio,
    timed_out,
)
from lineinspect.settings import Settings
from storage.records import ResultRow
from storage.store import ResultStore


def test_fusion_functions() -> None:
    assert fuse_max([0.1, 0.9, 0.3]) == 0.9
    assert fuse_topk_mean([0.1, 0.9, 0.3], 2) == pytest.approx(0.6)
    assert fuse_topk_mean([0.4], 3) == pytest.approx(0.4)
    assert fuse([0.2, 0.4], "topk_mean", k=1) == fuse([0.2, 0.4], "max")
    for bad in (lambda: fuse_max([]), lambda: fuse_topk_mean([1.0], 0), lambda: fuse([1.0], "median")):
        with pytest.raises(ValueError):
            bad()


def test_ratio_and_timeout_rules() -> None:
    assert threshold_ratio(0.5, 0.25) == 2.0
    assert threshold_ratio(0.1, 0.0) > 1.0          # a warm-up threshold of 0 flags
    assert timed_out(100.0, 130.0, 30.0) and not timed_out(100.0, 129.9, 30.0)


def _v(i: int, view: str, score: float, thr: float = 0.5, t: float = 10.0) -> ViewScore:
    return ViewScore(i, view, score, thr, t)


def test_decide_one_bad_view_of_three() -> None:
    views = [_v(1, "top", 0.2), _v(2, "left", 0.8, t=9.0), _v(3, "right", 0.1)]
    d = decide("bolt", "s1", views, 3, "max", 2, now=20.0)
    assert d.verdict == "defect" and d.complete and d.score == pytest.approx(1.6) and d.threshold == 1.0
    assert d.result_ids == [1, 2, 3] and d.first_seen_at == 9.0 and d.received_views == 3
    diluted = decide("bolt", "s1", views, 3, "topk_mean", 2, now=20.0)
    assert diluted.verdict == "ok"                  # (1.6 + 0.4) / 2 = 1.0 is not over the threshold


def test_decide_counts_views_not_frames_and_uses_each_views_threshold() -> None:
    views = [_v(1, "top", 0.2), _v(2, "top", 0.3), _v(3, "left", 0.3, thr=0.2)]
    d = decide("bolt", "s", views, 3, "max", 2, now=0.0)
    assert d.received_views == 2 and not d.complete
    assert d.verdict == "defect" and d.score == pytest.approx(1.5)


# --- database-backed ------------------------------------------------------------------------------
@pytest.fixture()
def store(tmp_path):
    s = ResultStore.open(f"sqlite:///{(tmp_path / 'f.sqlite').as_posix()}")
    yield s
    s.close()


def row(frame_id: int, view: str, score: float, specimen: str | None = "S1", camera: str | None = None,
        product: str = "gear", threshold: float = 0.5) -> ResultRow:
    now = time.time()
    return ResultRow(product=product, line="L1", camera=camera or f"cam-{view}", frame_id=frame_id,
                     captured_at=now, inferred_at=now, score=score, threshold=threshold,
                     verdict="defect" if score > threshold else "ok", model_version="v1", engine="torch",
                     infer_ms=1.0, batch_size=1, width=8, height=8, specimen_id=specimen, view=view)


def settings(**kw) -> Settings:
    return Settings(fusion_default_views=3, fusion_timeout_s=30.0, **kw)


def test_fuser_waits_for_all_views_then_decides_once(store: ResultStore) -> None:
    fuser = SpecimenFuser(store, settings())
    first = [row(1, "top", 0.1), row(2, "left", 0.2)]
    store.save_results(first)
    assert fuser.on_results(first) == []
    assert store.get_specimen("gear", "S1") is None
    last = [row(3, "right", 0.9)]
    ids = store.save_results(last)
    (d,) = fuser.on_results(last)
    assert d.verdict == "defect" and d.complete and d.received_views == 3
    spec = store.get_specimen("gear", "S1")
    assert spec["verdict"] == "defect" and spec["complete"] and ids[0] in spec["result_ids"]
    assert len(spec["result_ids"]) == 3
    # redelivery / another consumer / a sweep: nothing is decided twice
    assert fuser.on_results(last) == [] and fuser.sweep(time.time() + 3600) == []


def test_sweep_decides_timed_out_specimens_as_incomplete(store: ResultStore) -> None:
    fuser = SpecimenFuser(store, settings())
    rows = [row(1, "top", 0.1, specimen="S2"), row(2, "left", 0.2, specimen="S2")]
    store.save_results(rows)
    assert fuser.on_results(rows) == []
    assert fuser.sweep(time.time() + 5) == []          # not yet timed out
    (d,) = fuser.sweep(time.time() + 31)
    assert not d.complete and d.received_views == 2 and d.expected_views == 3 and d.verdict == "ok"
    spec = store.get_specimen("gear", "S2")
    assert spec["complete"] is False or spec["complete"] == 0
    late = [row(3, "right", 0.99, specimen="S2")]      # a late view does not re-decide
    store.save_results(late)
    assert fuser.on_results(late) == []
    assert store.get_specimen("gear", "S2")["verdict"] == "ok"


def test_product_expected_views_override_the_default(store: ResultStore) -> None:
    store.set_expected_views("gear", 2)
    fuser = SpecimenFuser(store, settings())
    rows = [row(1, "a", 0.1), row(2, "b", 0.1)]
    store.save_results(rows)
    (d,) = fuser.on_results(rows)
    assert d.complete and d.expected_views == 2 and d.verdict == "ok"


def test_frames_without_specimen_are_ignored(store: ResultStore) -> None:
    fuser = SpecimenFuser(store, settings())
    rows = [row(1, "a", 0.9, specimen=None)]
    store.save_results(rows)
    assert fuser.on_results(rows) == [] and fuser.sweep(time.time() + 999) == []


def test_concurrent_fusers_decide_exactly_once(store: ResultStore) -> None:
    rows = [row(i, v, 0.2) for i, v in enumerate(("a", "b", "c"))]
    store.save_results(rows)
    fusers = [SpecimenFuser(store, settings()) for _ in range(4)]
    results: list[list] = []
    barrier = threading.Barrier(len(fusers))

    def go(f: SpecimenFuser) -> None:
        barrier.wait()
        results.append(f.on_results(rows))

    threads = [threading.Thread(target=go, args=(f,)) for f in fusers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(len(r) for r in results) == 1


def test_bad_settings_are_refused(store: ResultStore) -> None:
    with pytest.raises(ValueError):  # a Settings built without validation, as a caller could
        SpecimenFuser(store, Settings.model_construct(fusion_method="median"))
    with pytest.raises(ValueError):
        SpecimenFuser(store, Settings.model_construct(fusion_timeout_s=0.0))
