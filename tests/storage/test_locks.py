import threading
import time

import pytest
from sqlalchemy import select

from storage.locks import DbLock, Heartbeat, LockHeld
from storage.models import JobLock
from storage.store import ResultStore
from tests.storage.conftest import db_url, pg_url, sqlite_url  # noqa: F401 - SQLite and PostgreSQL fixtures


@pytest.fixture()
def engine(db_url):  # noqa: F811 - every lock test runs on SQLite and (integration) PostgreSQL
    store = ResultStore.open(db_url)
    yield store.db_engine
    store.close()


class Clock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


def test_only_one_of_two_holders_wins_and_release_frees_it(engine):
    a, b = DbLock(engine, "retrain:widget"), DbLock(engine, "retrain:widget")
    assert a.acquire() and not b.acquire()
    assert a.current_holder()[0] == a.holder
    a.release()
    assert b.acquire() and b.current_holder()[0] == b.holder


def test_concurrent_acquisitions_one_wins(engine):
    locks = [DbLock(engine, "retrain:cap") for _ in range(6)]
    barrier = threading.Barrier(len(locks))
    won = []

    def go(lock):
        barrier.wait()
        if lock.acquire():
            won.append(lock.holder)

    threads = [threading.Thread(target=go, args=(lk,)) for lk in locks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1
    with engine.connect() as conn:
        assert conn.execute(select(JobLock.holder)).scalars().all() == won


def test_expired_lock_can_be_stolen_and_the_old_holder_notices(engine):
    clock = Clock()
    old = DbLock(engine, "retrain:x", ttl_s=10, clock=clock)
    new = DbLock(engine, "retrain:x", ttl_s=10, clock=clock)
    assert old.acquire()
    clock.t += 5
    assert not new.acquire()           # still alive
    assert old.heartbeat()             # extends to t=1015
    clock.t += 9
    assert not new.acquire()
    clock.t += 2                       # t=1016 > expires 1015
    assert new.acquire()
    assert not old.heartbeat() and not old.held
    old.release()                      # must not free the new holder's lease
    assert new.current_holder()[0] == new.holder


def test_reacquire_by_the_same_holder_and_context_manager(engine):
    a = DbLock(engine, "j")
    assert a.acquire() and a.acquire()
    with pytest.raises(LockHeld, match="'j' is held"):
        with DbLock(engine, "j"):
            pass
    a.release()
    with DbLock(engine, "j") as b:
        assert b.held
    assert DbLock(engine, "j").current_holder() is None


def test_heartbeat_thread_keeps_the_lease_and_reports_loss(engine):
    lock = DbLock(engine, "hb", ttl_s=0.3)
    assert lock.acquire()
    with Heartbeat(lock) as hb:
        time.sleep(0.7)
        assert lock.current_holder()[1] > time.time()  # renewed past the original ttl
        assert not hb.lost.is_set()
        with engine.begin() as conn:  # someone steals it
            conn.execute(JobLock.__table__.update().values(holder="thief"))
        deadline = time.time() + 3
        while not hb.lost.is_set() and time.time() < deadline:
            time.sleep(0.05)
        assert hb.lost.is_set()


def test_bad_arguments(engine):
    with pytest.raises(ValueError):
        DbLock(engine, "")
    with pytest.raises(ValueError):
        DbLock(engine, "x", ttl_s=0)
