"""Drift tables on SQLite and PostgreSQL: one open alarm per camera even when consumers race."""

from __future__ import annotations

import threading
import time

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
        assert ds.drifted("cam1", now - 94) and not ds.drifted("cam1", now - 96) and not ds.drifted("cam2", now - 94)
        assert ds.drifted_count(aid) == 5
        assert ds.request_rebaseline("bolt", None, "operator") == 1
        assert ds.open_alarms("bolt")[0]["rebaseline_since"] == now - 95  # defaults to the onset
        ds.clear_rebaseline("bolt")
        assert ds.open_alarms("bolt")[0]["rebaseline_since"] is None
        ds.save_reference("bolt", "cam1", {"n": 3}, b"png")
        assert ds.reference("cam1")["stats"] == {"n": 3}
        assert ds.resolve("bolt", "done") == 1
        assert ds.reference("cam1") is None  # the next frames become the reference
        assert not ds.drifted("cam1", time.time() + 10)
