from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid

import pytest

from lineinspect.errors import ServiceUnavailable
from lineinspect.settings import Settings
from storage import open_cache
from storage.cache import Cache, CacheUnavailable
from storage.memory_cache import MemoryCache, minute_of, minute_window
from storage.redis_cache import RedisCache
from tests.storage.conftest import make_row


def _redis(url: str, **kw) -> RedisCache:
    return RedisCache(url, prefix=f"test:{uuid.uuid4().hex}:", **kw)


def _drop_keys(cache: RedisCache) -> None:
    keys = list(cache._r.scan_iter(match=cache.prefix + "*"))
    if keys:
        cache._r.delete(*keys)


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.integration)])
def make_cache(request):
    """A factory so a test can choose ttl / stream length; Redis keys are removed afterwards."""
    made: list = []

    def factory(**kw) -> Cache:
        c = MemoryCache(**kw) if request.param == "memory" else _redis(request.getfixturevalue("redis_url"), **kw)
        made.append(c)
        return c

    yield factory
    for c in made:
        if isinstance(c, RedisCache):
            _drop_keys(c)
        c.close()


def _res(frame_id: int, verdict: str = "ok", **kw) -> dict:
    return make_row(frame_id, verdict, **kw).cache_dict()


def test_implements_the_protocol(make_cache):
    assert isinstance(make_cache(), Cache)


def test_redelivery_does_not_double_count(make_cache):
    cache = make_cache()
    batch = [_res(i, "defect" if i % 3 == 0 else "ok") for i in range(9)]  # defects: 0, 3, 6
    cache.record_results(batch)
    first = cache.counters("bolt", "L1", minutes=2)
    cache.record_results(batch)
    cache.record_results(batch[4:])
    assert cache.counters("bolt", "L1", minutes=2) == first
    assert sum(c[1] for c in first) == 9 and sum(c[2] for c in first) == 3
    assert [a["frame_id"] for a in cache.anomalies()] == [6, 3, 0]


def test_latest_only_moves_forward_in_capture_time(make_cache):
    cache = make_cache()
    now = time.time()
    cache.record_results([_res(2, captured_at=now), _res(1, captured_at=now - 5)])  # late arrival of an older frame
    got = cache.latest("cam1")
    assert got["frame_id"] == 2 and got["captured_at"] == pytest.approx(now) and got["verdict"] == "ok"
    cache.record_results([_res(3, "defect", captured_at=now + 1)])
    assert cache.latest("cam1")["frame_id"] == 3
    assert cache.latest("nope") is None


def test_counters_are_per_product_line_and_minute(make_cache):
    cache = make_cache()
    now = time.time()
    cache.record_results([_res(1, captured_at=now), _res(2, "defect", captured_at=now - 60),
                          _res(3, captured_at=now, line="L2"), _res(4, captured_at=now, product="nut")])
    window = cache.counters("bolt", "L1", minutes=3)
    assert [m for m, _, _ in window] == minute_window(now, 3)
    by_minute = {m: (i, d) for m, i, d in window}
    assert by_minute[minute_of(now)] == (1, 0) and by_minute[minute_of(now - 60)] == (1, 1)
    assert by_minute[minute_of(now - 120)] == (0, 0)
    assert sum(i for _, i, _ in cache.counters("bolt", "L2", 1)) == 1
    assert sum(i for _, i, _ in cache.counters("nut", "L1", 1)) == 1


def test_anomaly_stream_is_newest_first_and_capped(make_cache):
    cache = make_cache(stream_maxlen=5)
    cache.record_results([_res(i, "defect") for i in range(300)])
    newest = cache.anomalies(3)
    assert [a["frame_id"] for a in newest] == [299, 298, 297]
    assert newest[0]["score"] == pytest.approx(0.9) and newest[0]["product"] == "bolt"
    assert len(cache.anomalies(1000)) < 300  # trimmed (approximately, for Redis)
    assert cache.anomalies(0) == []


def test_bad_results_are_rejected_whole(make_cache):
    cache = make_cache()
    bad = _res(2)
    del bad["camera"]
    with pytest.raises(ValueError, match="camera"):
        cache.record_results([_res(1), bad])
    with pytest.raises(ValueError, match="verdict"):
        cache.record_results([{**_res(3), "verdict": "maybe"}])
    assert cache.latest("cam1") is None
    assert cache.ping() is True


def test_memory_entries_expire(monkeypatch):
    clock = [1_000_000.0]
    monkeypatch.setattr("storage.memory_cache.time.time", lambda: clock[0])
    cache = MemoryCache(ttl_s=10)
    cache.record_results([_res(1, captured_at=clock[0])])
    assert cache.latest("cam1") is not None
    clock[0] += 11
    assert cache.latest("cam1") is None
    cache.record_results([_res(1, captured_at=clock[0] - 11)])  # marker expired: counted again (by design)
    assert cache.latest("cam1")["frame_id"] == 1


@pytest.mark.integration
def test_redis_entries_get_a_ttl(redis_url):
    cache = _redis(redis_url, ttl_s=120)
    try:
        cache.record_results([_res(1, "defect")])
        keys = list(cache._r.scan_iter(match=cache.prefix + "*"))
        ttls = {k.split(":")[2]: cache._r.ttl(k) for k in keys}
        assert set(ttls) == {"seen", "latest", "cnt", "anomalies"}
        assert all(0 < ttls[k] <= 120 for k in ("seen", "latest", "cnt"))
    finally:
        _drop_keys(cache)
        cache.close()


def test_unreachable_redis_is_service_unavailable_without_the_password():
    with pytest.raises(ServiceUnavailable) as info:
        RedisCache("redis://:hunter2pw@127.0.0.1:1/0", timeout_s=1)
    assert isinstance(info.value, CacheUnavailable) and info.value.service == "redis"
    assert "hunter2pw" not in str(info.value)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def private_redis(tmp_path):
    """A throw-away redis-server (memory limits are server-wide, so never on the shared one)."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed")
    port = _free_port()
    proc = subprocess.Popen([exe, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        for _ in range(100):
            try:
                RedisCache(url, timeout_s=0.5).close()
                break
            except CacheUnavailable:
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def test_out_of_memory_is_cache_unavailable_and_changes_nothing(private_redis):
    cache = RedisCache(private_redis)
    cache.record_results([_res(1, "defect"), _res(2)])
    before = (cache.counters("bolt", "L1", 2), cache.anomalies(), cache.latest("cam1"))
    cache._r.config_set("maxmemory", "1")  # every write is now refused (noeviction policy)
    try:
        with pytest.raises(CacheUnavailable, match="redis is out of memory") as info:
            cache.record_results([_res(3, "defect"), _res(4)])
        assert "not reachable" not in str(info.value)  # it answered: say what really happened
        assert (cache.counters("bolt", "L1", 2), cache.anomalies(), cache.latest("cam1")) == before
    finally:
        cache._r.config_set("maxmemory", "0")
    cache.record_results([_res(1, "defect"), _res(3, "defect"), _res(4)])  # redelivery after recovery
    assert sum(i for _, i, _ in cache.counters("bolt", "L1", 2)) == 4
    assert [a["frame_id"] for a in cache.anomalies()] == [3, 1]
    cache.close()


def test_open_cache_picks_the_implementation(monkeypatch, tmp_path):
    s = Settings(home=tmp_path, cache_url="memory://", cache_ttl_s=7, anomaly_stream_maxlen=3)
    c = open_cache(s)
    assert isinstance(c, MemoryCache) and c.ttl_s == 7
    with pytest.raises(ServiceUnavailable):
        open_cache(s.with_overrides(cache_url="redis://127.0.0.1:1/0"))
