import calendar
import threading

import pytest

from storage.jobs import finish_run, list_runs, start_run
from storage.locks import DbLock
from storage.registry import ModelRegistry
from storage.store import ResultStore
from tests.storage.conftest import db_url, pg_url, sqlite_url  # noqa: F401 - SQLite and PostgreSQL fixtures
from tests.training.test_retrain import add_frames, options
from training.retrain import NotEnoughSamples
from training.scheduler import Schedule, Scheduler, cron_fired_since, due_reason, run_job


@pytest.fixture()
def db_store(db_url):  # noqa: F811 - job bookkeeping on SQLite and (integration) PostgreSQL
    s = ResultStore.open(db_url)
    yield s
    s.close()


def utc(y, mo, d, h, mi=0):
    return float(calendar.timegm((y, mo, d, h, mi, 0)))


@pytest.fixture()
def store(tmp_path):
    s = ResultStore.open(f"sqlite:///{(tmp_path / 's.sqlite').as_posix()}")
    yield s
    s.close()


def test_cron_fired_since():
    nightly = "0 2 * * *"
    assert cron_fired_since(nightly, utc(2026, 1, 1, 1), utc(2026, 1, 1, 3))
    assert not cron_fired_since(nightly, utc(2026, 1, 1, 2, 30), utc(2026, 1, 2, 1))
    assert cron_fired_since(nightly, utc(2026, 1, 1, 2, 30), utc(2026, 1, 2, 2))
    assert cron_fired_since(nightly, None, utc(2026, 1, 1, 0))


def test_due_reason_by_cron_samples_and_backoff():
    now = utc(2026, 3, 1, 12)
    s = Schedule(min_new=10, backoff_s=600)
    assert due_reason(s, now, None, 9) is None
    assert due_reason(s, now, None, 10) == "10 new samples >= 10"
    failed = {"status": "failed", "started_at": now - 400, "finished_at": now - 300}
    assert due_reason(s, now, failed, 50) is None                      # resting after a failure
    assert due_reason(s, now + 301, failed, 50) is not None
    ok = {"status": "ok", "started_at": now - 60, "finished_at": now - 30}
    assert due_reason(s, now, ok, 50) is not None                      # success: no rest needed
    c = Schedule(cron="0 2 * * *")
    assert due_reason(c, now, {"status": "ok", "started_at": utc(2026, 3, 1, 2, 5)}, 0) is None
    assert "cron" in due_reason(c, now, {"status": "ok", "started_at": utc(2026, 2, 28, 2, 5)}, 0)


def test_schedule_validation():
    with pytest.raises(ValueError, match="needs"):
        Schedule()
    with pytest.raises(ValueError, match="invalid cron"):
        Schedule(cron="every night")


def test_run_job_records_ok_failed_and_skipped(db_store):
    eng = db_store.db_engine
    ok = run_job(eng, "widget", lambda lost: "trained v0001")
    assert ok.status == "ok" and ok.detail == "trained v0001"

    def boom(lost):
        raise RuntimeError("disk full")

    failed = run_job(eng, "widget", boom)
    assert failed.status == "failed" and "disk full" in failed.detail

    def few(lost):
        raise NotEnoughSamples("widget has 3 training samples")

    assert run_job(eng, "widget", few).status == "skipped"
    other = DbLock(eng, "retrain:widget")
    assert other.acquire()
    held = run_job(eng, "widget", lambda lost: "never runs")
    assert held.status == "skipped" and other.holder in held.detail
    other.release()
    runs = list_runs(eng, "widget")
    assert [r["status"] for r in runs] == ["skipped", "skipped", "failed", "ok"]
    assert all(r["finished_at"] is not None for r in runs)
    assert DbLock(eng, "retrain:widget").current_holder() is None      # released after every job


def test_only_one_of_two_concurrent_jobs_runs(db_store):
    store = db_store
    started, release = threading.Event(), threading.Event()

    def slow(lost):
        started.set()
        release.wait(5)
        return "done"

    t = threading.Thread(target=lambda: run_job(store.db_engine, "cap", slow))
    t.start()
    assert started.wait(5)
    second = run_job(store.db_engine, "cap", lambda lost: "should not run")
    release.set()
    t.join()
    assert second.status == "skipped"
    assert sorted(r["status"] for r in list_runs(store.db_engine, "cap")) == ["ok", "skipped"]


def test_start_finish_run_validation(store):
    rid = start_run(store.db_engine, "p")
    with pytest.raises(ValueError):
        finish_run(store.db_engine, rid, "running")
    with pytest.raises(ValueError):
        start_run(store.db_engine, "p", status="weird")


def test_scheduler_retrains_due_products_and_survives_a_failing_one(store, tmp_path):
    registry = ModelRegistry(store, tmp_path / "models")
    add_frames(store, "widget", 16)
    store.add_training_sample("broken", b"not an image" * 10, source="seed")
    for i in range(15):
        store.add_training_sample("broken", f"junk {i}".encode() * 10, source="seed")
    sched = Scheduler(store, registry, Schedule(min_new=10, backoff_s=3600), options())
    assert sched.due() == {"broken": "16 new samples >= 10", "widget": "16 new samples >= 10"}
    outcomes = {o.product: o for o in sched.tick()}
    assert outcomes["broken"].status == "failed" and "decode" in outcomes["broken"].detail
    assert outcomes["widget"].status == "ok" and "widget v0001: active" in outcomes["widget"].detail
    assert registry.active("widget").version == "v0001"
    assert sched.due() == {}                       # nothing new; broken rests after its failure
    add_frames(store, "widget", 10, start=500)
    assert sched.due() == {"widget": "10 new samples >= 10"}
    sched.run(once=True)
    assert [v.version for v in registry.list("widget")] == ["v0001", "v0002"]
    assert registry.get("widget", "v0002").parent_version == "v0001"
