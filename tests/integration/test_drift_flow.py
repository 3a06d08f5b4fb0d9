"""End to end, on SQLite and on PostgreSQL: a camera drifts mid-stream -> exactly one drift alarm with
its evidence, the scheduler's retrain is skipped (paused), a re-baseline on the frames since the onset
trains, gates and promotes a new version, the alarm closes, and the *running* consumer scores the
new normal with the new version and raises no new alarm. No restart anywhere.

The model is tiny (random test backbone): this checks the plumbing; detection quality is in
benchmarks/bench_drift.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from inference.drift import DriftMonitor, RegistryCalibration
from inference.telemetry import ConsumerMetrics
from storage.drift import DriftStore
from storage.jobs import list_runs
from storage.store import ResultStore
from tests.dbtools import throwaway_database
from tests.integration.live_line import CAMERA, PRODUCT, running_consumer, seeded_line, wait_for
from training.scheduler import Schedule


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def flow_db(request, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{(tmp_path / 'drift.sqlite').as_posix()}"
        return
    with throwaway_database(request.getfixturevalue("postgres_url"), "li_drift") as url:
        yield url


def brighter(img: np.ndarray) -> np.ndarray:
    """The lamp changed: every grey level +60."""
    return np.clip(img.astype(np.int16) + 60, 0, 255).astype(np.uint8)


def samples_of_results(store: ResultStore, frame_ids: range) -> int:
    """Training samples kept from the camera's results with these frame ids."""
    from sqlalchemy import func, select

    from storage.models import Camera, InspectionResult, TrainingSample

    t = InspectionResult
    q = (select(func.count()).select_from(TrainingSample).join(t, t.id == TrainingSample.result_id)
         .join(Camera, Camera.id == t.camera_id)
         .where(Camera.name == CAMERA, t.frame_id >= frame_ids.start, t.frame_id < frame_ids.stop))
    with store.db_engine.connect() as conn:
        return int(conn.execute(q).scalar_one())


def test_drift_alarm_pauses_retraining_and_rebaseline_promotes(tmp_path: Path, flow_db: str) -> None:
    # every clearly normal frame would be a sample (no sampling): so "none became a sample" below is the drift rule
    line = seeded_line(tmp_path, flow_db, drift_window=10, drift_reference_frames=10, drift_confirm_frames=2,
                       keep_normal_every_s=0)
    settings, store, registry, scheduler, sim = line.settings, line.store, line.registry, line.scheduler, line.sim
    drift = DriftStore.of(store)
    metrics = ConsumerMetrics(settings)
    monitor = DriftMonitor(settings, drift, RegistryCalibration(registry), metrics.registry, refresh_s=0.2)
    with running_consumer(line, metrics, post_store=[monitor]) as live:
        router, thread, pub = live.router, live.thread, live.pub
        for i in range(30):  # the normal line: reference built, no alarm
            pub.publish(sim.frame(i).image)
        wait_for(lambda: store.count_results(PRODUCT) == 30, what="30 normal frames")
        assert drift.alarms() == []

        for i in range(30, 70):  # the lamp changes at frame 30
            pub.publish(brighter(sim.frame(i).image))
        wait_for(lambda: store.count_results(PRODUCT) == 70, what="40 drifted frames")
        alarms = drift.alarms()
        assert len(alarms) == 1, alarms  # one alarm, however long the drift lasts
        alarm = alarms[0]
        assert alarm["status"] == "open" and "brightness" in alarm["kinds"]
        b = alarm["evidence"]["checks"]["brightness"]
        assert b["value"] > b["limit"] >= settings.drift_brightness_grey
        assert 20 <= alarm["onset_frame_id"] <= 30 + settings.drift_confirm_frames
        # verdicts marked drifted: every frame from the onset on (those stored before the alarm opened
        # flagged when it opened), none before; and none of them became a clearly-normal training sample
        flags = {r["frame_id"]: r["drifted"] for r in store.results_for_camera(CAMERA)}
        assert [f for f, d in flags.items() if d] == list(range(alarm["onset_frame_id"], 70)), flags
        assert drift.drifted_count(alarm["id"]) == 70 - alarm["onset_frame_id"]
        assert samples_of_results(store, range(alarm["onset_frame_id"], 70)) == 0
        assert drift.count_frames(alarm["id"]) >= 30  # the re-baseline's candidate training set
        assert metrics.registry.get_sample_value("lineinspect_drift_alarm_open",
                                                 {"product": PRODUCT, "camera": CAMERA}) == 1.0

        # Retraining pauses: the due retrain is recorded as skipped, no version is trained.
        scheduler.schedule = Schedule(min_new=1, backoff_s=0)
        outcome, = scheduler.tick()
        assert outcome.status == "skipped" and "drift alarm" in outcome.detail, outcome.detail
        assert list_runs(store.db_engine, PRODUCT)[0]["status"] == "skipped"
        assert [v.version for v in registry.list(PRODUCT)] == ["v0001"]

        # The operator confirms the new normal (dashboard) -> the scheduler re-baselines on the frames
        # since the onset: usual gate, promotion, the alarm closes.
        assert drift.request_rebaseline(PRODUCT, None, "operator") == 1
        outcome, = scheduler.tick()
        assert outcome.status == "ok" and "re-baseline" in outcome.detail and "v0002: active" in outcome.detail, \
            outcome.detail
        v2 = registry.active(PRODUCT)
        assert v2.version == "v0002" and v2.data_snapshot["by_source"].get("drift", 0) >= 12
        closed = drift.alarm(alarm["id"])
        assert closed["status"] == "resolved" and "v0002" in closed["resolution"]

        # No restart: the running consumer serves v0002 and the new normal raises no alarm.
        wait_for(lambda: router.products().get(PRODUCT) == "v0002", what="router to serve v0002")
        for i in range(70, 110):
            pub.publish(brighter(sim.frame(i).image))
        wait_for(lambda: store.count_results(PRODUCT) == 110, what="40 frames of the new normal")
        later = store.results_for_camera(CAMERA, min_frame_id=80)
        assert {r["model_version"] for r in later} == {"v0002"}
        # the flag is cleared going forward: the consumer learnt of the promotion before the next batch
        assert not any(r["drifted"] for r in store.results_for_camera(CAMERA, min_frame_id=70))
        assert len(drift.alarms()) == 1 and drift.open_alarms() == []
        snap = monitor.snapshot()[CAMERA]  # the monitor saw the alarm close on its next batch
        assert snap["alarm_id"] is None and snap["reference"] is not None  # reference rebuilt from the new normal
        assert drift.reference(CAMERA) is not None
        assert thread.is_alive()
