from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import replace

import pytest

from storage.records import SpecimenDecision
from storage.store import ResultStore
from tests.storage.conftest import make_row


@pytest.fixture()
def store(db_url):
    s = ResultStore.open(db_url)
    yield s
    s.close()


def test_save_returns_ids_and_is_idempotent(store):
    rows = [make_row(1), make_row(2, "defect", mask_png=b"mask", heat_png=b"heat", frame_bytes=b"jpeg"), make_row(3)]
    ids = store.save_results(rows)
    assert len(set(ids)) == 3 and all(isinstance(i, int) for i in ids)
    again = store.save_results([rows[1], make_row(4), rows[0]])
    assert again[0] == ids[1] and again[2] == ids[0] and again[1] not in ids
    assert store.count_results() == 4
    assert store.count_results("bolt") == 4 and store.count_results("nut") == 0


def test_duplicate_frame_inside_one_batch_is_stored_once(store):
    ids = store.save_results([make_row(7), make_row(7, "defect")])
    assert ids[0] == ids[1]
    assert store.count_results() == 1
    assert store.get_result("cam1", 7)["verdict"] == "ok"  # the first one wins


def test_same_frame_id_on_two_cameras_is_two_results(store):
    a, b = store.save_results([make_row(1, camera="cam1"), make_row(1, camera="cam2")])
    assert a != b and store.count_results() == 2


def test_get_result_carries_names_mask_and_frame(store):
    captured = time.time() - 2.0
    store.save_results([make_row(5, "defect", captured_at=captured, mask_png=b"m", heat_png=b"h", frame_bytes=b"f",
                                 frame_encoding="png", defect_area_px=12, specimen_id="s1", view="top")])
    r = store.get_result("cam1", 5)
    assert (r["product"], r["line"], r["camera"]) == ("bolt", "L1", "cam1")
    assert (r["mask_png"], r["heat_png"], r["frame_bytes"], r["frame_encoding"]) == (b"m", b"h", b"f", "png")
    assert (r["defect_area_px"], r["specimen_id"], r["view"], r["false_alarm"]) == (12, "s1", "top", False)
    assert r["latency_ms"] == pytest.approx((r["stored_at"] - captured) * 1000.0)
    assert r["latency_ms"] >= 2000.0
    assert store.get_result("cam1", 6) is None
    assert store.get_result_by_id(r["id"])["frame_id"] == 5


def test_normal_rows_keep_no_mask_or_frame(store):
    store.save_results([make_row(1, mask_png=b"m", frame_bytes=b"f")])
    r = store.get_result("cam1", 1)
    assert r["mask_png"] is None and r["frame_bytes"] is None


def test_clear_normals_become_deduplicated_capped_samples(store):
    rows = [make_row(i, keep_as_normal=True, frame_bytes=f"img{i % 4}".encode()) for i in range(6)]
    store.save_results(rows[:3])
    store.save_results(rows[3:])  # frames 4, 5 repeat images 0, 1: no new samples
    samples = store.training_samples("bolt")
    assert sorted(s.data for s in samples) == [b"img0", b"img1", b"img2", b"img3"]
    sha, data, source, created = samples[0]
    assert sha == hashlib.sha256(data).hexdigest() and source == "clear_normal" and created > 0
    more = [make_row(10 + i, keep_as_normal=True, frame_bytes=f"new{i}".encode()) for i in range(3)]
    store.save_results(more, normal_cap=3)
    kept = store.training_samples("bolt")
    assert len(kept) == 3 and {s.data for s in kept} == {b"new0", b"new1", b"new2"}
    assert store.count_training_samples("bolt") == 3
    assert len(store.training_samples("bolt", limit=2)) == 2


def test_false_alarm_copies_the_frame_and_survives_the_cap(store):
    rid = store.save_results([make_row(1, "defect", mask_png=b"m", frame_bytes=b"flagged")])[0]
    t0 = time.time()
    assert store.mark_false_alarm(rid) is True
    assert store.get_result("cam1", 1)["false_alarm"] is True
    assert [(s.data, s.source) for s in store.training_samples("bolt")] == [(b"flagged", "false_alarm")]
    assert store.count_training_samples("bolt", since=t0 - 1) == 1
    assert store.count_training_samples("bolt", since=time.time() + 60) == 0
    assert store.mark_false_alarm(rid) is False  # the same image is already a sample
    store.save_results([make_row(2, keep_as_normal=True, frame_bytes=b"n1"),
                        make_row(3, keep_as_normal=True, frame_bytes=b"n2")], normal_cap=1)
    assert sorted(s.source for s in store.training_samples("bolt")) == ["clear_normal", "false_alarm"]
    with pytest.raises(KeyError):
        store.mark_false_alarm(10**9)


def test_false_alarm_without_a_stored_frame_only_sets_the_flag(store):
    rid = store.save_results([make_row(1, "defect", mask_png=b"m")])[0]
    assert store.mark_false_alarm(rid) is False
    assert store.get_result("cam1", 1)["false_alarm"] is True


def test_concurrent_overlapping_batches_store_each_frame_once(db_url):
    stores = [ResultStore.open(db_url), ResultStore.open(db_url, migrate=False)]
    results: dict[int, list] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def work(k: int) -> None:
        try:
            barrier.wait()
            out = []
            for start in range(0, 40, 8):  # both threads write frames 0..39 of brand-new cameras/products
                batch = [make_row(i, product=f"p{i % 3}", camera=f"cam{i % 5}", line=f"L{i % 2}")
                         for i in range(start, start + 8)]
                out += stores[k].save_results(batch)
            results[k] = out
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert not errors, errors
        assert results[0] == results[1]
        assert stores[0].count_results() == 40
        assert stores[0].products() == ["p0", "p1", "p2"]
    finally:
        for s in stores:
            s.close()


def test_specimen_first_verdict_stands(store):
    """One conflict rule for specimens (the fuser's): the first stored verdict is final."""
    first = SpecimenDecision("bolt", "S-1", expected_views=3, received_views=2, score=0.4, threshold=0.5,
                             verdict="ok", fusion="max", complete=False, first_seen_at=1.0, decided_at=2.0,
                             result_ids=[1, 2])
    assert store.save_specimen(first) is True
    later = replace(first, received_views=3, score=0.8, verdict="defect", complete=True, decided_at=3.0,
                    result_ids=[1, 2, 3])
    assert store.save_specimen(later) is False
    sp = store.get_specimen("bolt", "S-1")
    assert (sp["received_views"], sp["verdict"], bool(sp["complete"]), sp["result_ids"]) == (2, "ok", False, [1, 2])
    assert store.get_specimen("bolt", "S-2") is None
    with pytest.raises(ValueError):
        store.save_specimen(replace(first, specimen_id="S-3", verdict="maybe"))
    assert store.get_specimen("bolt", "S-3") is None


def test_consumer_stats_newest_first(store):
    for i in range(3):
        store.record_consumer_stat("c-1", frames=10 * i, seconds=5.0, mean_batch=4.0, p50_latency_ms=20.0,
                                   p99_latency_ms=80.0, lag=i, dlq_total=0, engine="onnx", engine_ok=True, at=100.0 + i)
    stats = store.consumer_stats("c-1")
    assert [s["lag"] for s in stats] == [2, 1, 0] and stats[0]["engine_ok"] is True
    assert store.consumer_stats("other") == []


def test_seed_samples_and_products(store):
    assert store.add_training_sample("nut", b"seed-img") is True
    assert store.add_training_sample("nut", b"seed-img") is False
    assert store.products() == ["nut"]
    with pytest.raises(ValueError):
        store.add_training_sample("nut", b"x", source="whatever")


@pytest.mark.parametrize("bad", [dict(verdict="maybe"), dict(camera=""), dict(product="x" * 200), dict(frame_id=-1)])
def test_bad_rows_are_rejected_before_anything_is_written(store, bad):
    with pytest.raises(ValueError):
        store.save_results([make_row(1), make_row(**{"frame_id": 2, **bad})])
    assert store.count_results() == 0


def test_empty_batch(store):
    assert store.save_results([]) == []


def test_results_for_camera_in_frame_order(store):
    store.save_results([make_row(i, "defect" if i == 4 else "ok", camera="cam1") for i in (5, 3, 4)]
                       + [make_row(9, camera="cam2")])
    rows = store.results_for_camera("cam1", min_frame_id=4)
    assert [(r["frame_id"], r["verdict"]) for r in rows] == [(4, "defect"), (5, "ok")]
    assert rows[0]["product"] == "bolt" and "mask_png" not in rows[0]
    assert store.results_for_camera("nope") == []
