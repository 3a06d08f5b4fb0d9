"""Drift tables on SQLite and PostgreSQL: one open alarm per camera even when consumers race."""

from __future__ import annotations

import threading
import time

import pytest

from storage.drift import DriftStore, KeptFrame
from storage.store import ResultStore
from tests.storage.conftest import make_row


def _open(ds: DriftStore, camera: str = "cam1", onset: float = 100.0) -> tuple[int, bool]:
    return ds.open_alarm("bolt", camera, kinds=["brightness"], onset_at=onset, onset_frame_id=7,
                         model_version="v0001", evidence={"checks": {"brightness": {"value": 30.0}}})


def test_one_open_alarm_per_camera_under_concurrent_opens(db_url):
    with ResultStore.open(db_url) as store:
        ds = DriftStore.of(store)
        results: list[tuple[int, bool]] = []
        lock = threading.Lock()

        def opener() -> None:
            got = _open(ds)
            with lock:
                results.append(got)

        threads = [threading.Thread(target=opener) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sum(created for _, created in results) == 1
        assert len({i for i, _ in results}) == 1
        assert len(ds.open_alarms("bolt")) == 1
        other, created = _open(ds, camera="cam2")
        assert created and other != results[0][0]
        # after resolution a new alarm can open on the same camera
        assert ds.resolve("bolt", "re-baselined", camera="cam1") == 1
        again, created = _open(ds)
        assert created and again != results[0][0]
        a = ds.alarm(again)
        assert a is not None and a["kinds"] == ["brightness"] and a["evidence"]["checks"]["brightness"]["value"] == 30.0


def test_rebaseline_request_frames_and_drifted_marking(db_url):
    with ResultStore.open(db_url) as store:
        ds = DriftStore.of(store)
        now = time.time()
        store.save_results([make_row(i, camera="cam1", captured_at=now - 100 + i) for i in range(10)])
        aid, _ = _open(ds, onset=now - 95)
        frames = [KeptFrame(i, now - 100 + i, "png", bytes([i]) * 20) for i in range(5, 10)]
        assert ds.keep_frames(aid, "bolt", "cam1", frames + frames[:2], cap=4) == 4  # capped, deduplicated
        assert ds.keep_frames(aid, "bolt", "cam1", frames, cap=100) == 1
        assert [r.source for r in ds.frames_since("bolt", now - 93)] == ["drift"] * 3
        store.save_results([make_row(i, camera="cam2", captured_at=now - 100 + i) for i in range(10)])
        assert ds.mark_drifted("bolt", "cam1", now - 95) == 5  # the onset's frames, stored before the alarm
        assert ds.mark_drifted("bolt", "cam1", now - 95) == 0  # idempotent
        assert store.get_result("cam1", 5)["drifted"] and not store.get_result("cam1", 4)["drifted"]
        assert not any(r["drifted"] for r in store.results_for_camera("cam2"))  # other camera untouched
        assert ds.drifted_count(aid) == 5
        assert ds.request_rebaseline("bolt", None, "operator") == 1
        assert ds.open_alarms("bolt")[0]["rebaseline_since"] == now - 95  # defaults to the onset
        ds.clear_rebaseline("bolt")
        assert ds.open_alarms("bolt")[0]["rebaseline_since"] is None
        ds.save_reference("bolt", "cam1", {"n": 3}, b"png")
        assert ds.reference("cam1")["stats"] == {"n": 3}
        assert ds.resolve("bolt", "done") == 1
        assert ds.reference("cam1") is None  # the next frames become the reference
        assert ds.alarm(aid)["status"] == "resolved"
        assert ds.drifted_count(aid) == 5  # a re-baseline keeps the flags of the frames it covered


def test_drifted_rows_are_stored_flagged_and_never_training_data(db_url):
    with ResultStore.open(db_url) as store:
        ds = DriftStore.of(store)
        now = time.time()
        rows = [make_row(i, captured_at=now - 50 + i, keep_as_normal=True, frame_bytes=bytes([i]) * 30,
                         drifted=i >= 5) for i in range(8)]
        rows.append(make_row(8, "defect", captured_at=now - 40, frame_bytes=b"d" * 30, drifted=True))
        rows.append(make_row(9, "defect", captured_at=now - 39, frame_bytes=b"e" * 30))
        store.save_results(rows)
        assert [r["drifted"] for r in store.results_for_camera("cam1")] == [False] * 5 + [True] * 4 + [False]
        assert store.count_training_samples("bolt") == 5  # the drifted clearly-normal frames are not kept
        assert store.flagged_frames("bolt") == [b"e" * 30]  # nor a drifted frame as an anomaly example
        drifted_defect = store.get_result("cam1", 8)
        assert store.mark_false_alarm(drifted_defect["id"]) is False  # relabelled, but not kept as normal
        assert store.get_result("cam1", 8)["false_alarm"]
        # an alarm learnt late: flagging the onset's frames also withdraws their clearly-normal samples
        assert ds.mark_drifted("bolt", "cam1", now - 47, until=now - 45) == 2
        assert store.count_training_samples("bolt") == 3


def test_dismiss_closes_without_rebaseline_and_clears_flags(db_url):
    with ResultStore.open(db_url) as store:
        ds = DriftStore.of(store)
        now = time.time()
        store.save_results([make_row(i, captured_at=now - 20 + i, drifted=i >= 10) for i in range(20)])
        aid, _ = _open(ds, onset=now - 10)
        ds.save_reference("bolt", "cam1", {"n": 3}, b"png")
        with pytest.raises(ValueError, match="operator"):
            ds.dismiss(aid, by=" ")
        with pytest.raises(KeyError):
            ds.dismiss(aid + 1000, by="ana")
        assert ds.dismiss(aid, by="ana", reason="lamp test, not a change", at=now) == 10
        a = ds.alarm(aid)
        assert a["status"] == "dismissed" and a["closed_by"] == "ana" and a["resolved_at"] == now
        assert a["resolution"] == "dismissed by ana: lamp test, not a change"
        assert ds.open_alarms("bolt") == [] and ds.reference("cam1") is None
        assert not any(r["drifted"] for r in store.results_for_camera("cam1"))  # the verdicts stand
        with pytest.raises(ValueError, match="not open"):
            ds.dismiss(aid, by="ana")
        assert ds.alarms(status="dismissed")[0]["id"] == aid


def test_keep_frames_many_caps_each_alarm_and_deduplicates_across_them(db_url):
    """Several drifting cameras' frames in one statement: each alarm's cap counts its own kept frames, the
    first of equal frames (same product and sha256) wins within the statement as across statements, and
    the counts per alarm are what was added."""
    with ResultStore.open(db_url) as store:
        ds = DriftStore.of(store)
        now = time.time()
        a1, _ = _open(ds, "cam1", now - 50)
        a2, _ = _open(ds, "cam2", now - 50)
        f = [KeptFrame(i, now - 40 + i, "jpeg", bytes([i]) * 64) for i in range(8)]
        assert ds.keep_frames(a1, "bolt", "cam1", f[:2], cap=3) == 2
        # cam1 has room for 1 more (f2); cam2's f1 repeats an image cam1 kept, its f3 is new, its f2 repeats
        # the frame cam1 keeps earlier in the same statement
        got = ds.keep_frames_many([(a1, "bolt", "cam1", [f[2], f[4], f[5]]),
                                   (a2, "bolt", "cam2", [f[1], f[3], f[2]])], cap=3)
        assert got == {a1: 1, a2: 1}
        assert ds.count_frames(a1) == 3 and ds.count_frames(a2) == 1
        assert sorted(r.data[0] for r in ds.frames_since("bolt", now - 100)) == [0, 1, 2, 3]
        assert ds.keep_frames_many([(a1, "bolt", "cam1", [f[6]]), (a2, "bolt", "cam2", [])], cap=3) == {a1: 0}
        assert ds.keep_frames_many([], cap=3) == {}
        with pytest.raises(ValueError):
            ds.keep_frames_many([(a1, "bolt", "cam1", [f[6]]), (a1, "bolt", "cam1", [f[7]])], cap=10)
