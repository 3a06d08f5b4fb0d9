"""The pipelined consumer: the sink thread stores batch k while batch k+1 is scored.

What must hold (at least once, exactly one row): a batch's records are committed only after the
store of that batch and of every batch polled before it returned; stops and outages leave the
unstored tail uncommitted; a graceful stop drains the sink and commits everything it stored.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from inference.consumer import InferenceConsumer
from inference.telemetry import ConsumerMetrics
from ingest.bus.memory import MemoryBus, MemoryConsumer
from lineinspect.errors import ServiceUnavailable
from lineinspect.settings import Settings
from storage.memory_cache import MemoryCache
from storage.store import ResultStore
from tests.inference.test_consumer import FakeEngine, publish

FRAMES_TOPIC = "frames"


class Journal:
    """A thread-safe, ordered log of what the consumer did: infer, store begin/end, commit."""

    def __init__(self) -> None:
        self.events: list[tuple] = []
        self._lock = threading.Lock()

    def add(self, *event: object) -> None:
        with self._lock:
            self.events.append(event)

    def kinds(self) -> list[str]:
        with self._lock:
            return [e[0] for e in self.events]


class RecordingBus(MemoryConsumer):
    """A memory-bus member that journals commits and fails if it is touched from two threads."""

    def __init__(self, bus: MemoryBus, settings: Settings, journal: Journal) -> None:
        super().__init__(bus, settings.topic_frames, "g", settings.topic_dlq)
        self.journal = journal
        self.threads: set[str] = set()

    def poll_batch(self, max_records: int, max_wait_ms: int):
        self.threads.add(threading.current_thread().name)
        return super().poll_batch(max_records, max_wait_ms)

    def commit(self, records) -> None:
        self.threads.add(threading.current_thread().name)
        self.journal.add("commit", {(r.partition, r.offset) for r in records})
        super().commit(records)


class SlowStore:
    """Wraps a real store: journals each save, sleeps ``delay_s``, fails while ``down`` is set."""

    def __init__(self, real: ResultStore, journal: Journal, delay_s: float = 0.03) -> None:
        self.real, self.journal, self.delay_s = real, journal, delay_s
        self.down = threading.Event()
        self.fail_after: int | None = None  # calls that succeed before the store goes down for good
        self.calls = 0
        self.saved: Counter[tuple[str, int]] = Counter()
        self.db_engine = real.db_engine  # lets the consumer build its specimen fuser like on a real store

    def save_results(self, rows):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            self.down.set()
        if self.down.is_set():
            raise ServiceUnavailable("postgresql", "postgresql://db", "connection refused")
        self.journal.add("store_begin", len(rows))
        time.sleep(self.delay_s)
        out = self.real.save_results(rows)
        self.saved.update((r.camera, r.frame_id) for r in rows)
        self.journal.add("store_end", {(r.camera, r.frame_id) for r in rows})
        return out

    def record_consumer_stat(self, **kw) -> None:
        self.real.record_consumer_stat(**kw)


class JournalEngine(FakeEngine):
    def __init__(self, journal: Journal) -> None:
        super().__init__()
        self.journal = journal

    def infer(self, product, images):
        self.journal.add("infer", len(images))
        return super().infer(product, images)


def make(settings: Settings, bus: MemoryBus, store, journal: Journal, engine=None, **kw) -> InferenceConsumer:
    return InferenceConsumer(settings, RecordingBus(bus, settings, journal), engine or JournalEngine(journal), store,
                             MemoryCache(), ConsumerMetrics(settings), backoff_initial_s=0.01, backoff_max_s=0.05,
                             stat_interval_s=3600, **kw)


def offsets_to_keys(bus: MemoryBus) -> dict[tuple[int, int], tuple[str, int]]:
    """(partition, offset) -> (camera, frame_id) of every frame on the topic."""
    import json

    out = {}
    for r in bus.records(FRAMES_TOPIC):
        meta = json.loads(dict(r.headers)["li-meta"])
        out[(r.partition, r.offset)] = (meta["camera"], meta["frame_id"])
    return out


def committed_keys(bus: MemoryBus) -> set[tuple[str, int]]:
    """The frames covered by the group's committed offsets (everything before them, per partition)."""
    done = bus.committed("g", FRAMES_TOPIC)
    return {key for (p, off), key in offsets_to_keys(bus).items() if off < done.get(p, 0)}


def assert_commits_follow_stores(journal: Journal, bus: MemoryBus) -> None:
    """Replay the journal: at every commit, each record up to the committed offset is already stored."""
    where = offsets_to_keys(bus)
    stored: set[tuple[str, int]] = set()
    high: dict[int, int] = {}
    for kind, *rest in journal.events:
        if kind == "store_end":
            stored |= rest[0]
        elif kind == "commit":
            for p, off in rest[0]:
                high[p] = max(high.get(p, 0), off + 1)
            covered = {key for (p, off), key in where.items() if off < high.get(p, 0)}
            assert covered <= stored, f"committed before stored: {sorted(covered - stored)[:5]}"


def cameras_bus(settings: Settings, partitions: int, cameras: int, frames: int) -> MemoryBus:
    """A bus holding ``frames`` frames from each of ``cameras`` cameras (cam-0, cam-1, ...)."""
    bus = MemoryBus(partitions=partitions)
    for cam in range(cameras):
        publish(bus, settings, frames, camera=f"cam-{cam}")
    return bus


def wait_until(cond, timeout_s: float = 5.0, poll_s: float = 0.01) -> None:
    """Poll ``cond`` until it holds or ``timeout_s`` passes (the caller asserts what it needs)."""
    deadline = time.monotonic() + timeout_s
    while not cond() and time.monotonic() < deadline:
        time.sleep(poll_s)


def test_commits_follow_the_store_in_order_while_scoring_overlaps(settings: Settings, store: ResultStore) -> None:
    journal = Journal()
    bus = cameras_bus(settings, 2, 3, 8)
    c = make(settings, bus, SlowStore(store, journal, delay_s=0.05), journal)
    assert c.run(max_frames=24, idle_timeout_s=2) == 24
    c.close()
    assert store.count_results() == 24 and len(committed_keys(bus)) == 24
    assert_commits_follow_stores(journal, bus)
    # the point of the sink: the engine ran while a store was in progress
    depth, overlapped = 0, False
    for kind in journal.kinds():
        depth += {"store_begin": 1, "store_end": -1}.get(kind, 0)
        overlapped |= kind == "infer" and depth > 0
    assert overlapped
    assert c.bus.threads == {threading.current_thread().name}  # poll and commit on the polling thread only


def test_serial_mode_never_overlaps(settings: Settings, store: ResultStore) -> None:
    journal = Journal()
    bus = MemoryBus(partitions=1)
    publish(bus, settings, 12)
    c = make(settings, bus, SlowStore(store, journal, delay_s=0.01), journal, pipelined=False)
    assert c.run(max_frames=12, idle_timeout_s=2) == 12
    c.close()
    kinds = [k for k in journal.kinds() if k != "commit"]
    assert kinds == ["infer", "store_begin", "store_end"] * 3
    assert store.count_results() == 12


def test_store_outage_commits_nothing_then_everything_once_it_recovers(settings: Settings, store: ResultStore) -> None:
    journal = Journal()
    bus = MemoryBus(partitions=2)
    publish(bus, settings, 6, camera="cam-1")
    publish(bus, settings, 6, camera="cam-2")
    slow = SlowStore(store, journal, delay_s=0.0)
    slow.down.set()
    c = make(settings, bus, slow, journal)
    done: dict[str, int] = {}
    t = threading.Thread(target=lambda: done.update(n=c.run(max_frames=12)))
    t.start()
    wait_until(lambda: slow.calls >= 5)
    assert slow.calls >= 5  # retried with backoff...
    assert bus.committed("g", FRAMES_TOPIC) == {} and store.count_results() == 0  # ...committing nothing
    assert len(c.bus.bus.records(FRAMES_TOPIC)) == 12
    slow.down.clear()
    t.join(10)
    assert not t.is_alive() and done["n"] == 12
    c.close()
    assert store.count_results() == 12 and len(committed_keys(bus)) == 12
    assert max(slow.saved.values()) == 1
    assert_commits_follow_stores(journal, bus)


def test_stop_during_an_outage_commits_only_the_stored_prefix(settings: Settings, store: ResultStore) -> None:
    journal = Journal()
    bus = MemoryBus(partitions=1)
    publish(bus, settings, 16)
    slow = SlowStore(store, journal, delay_s=0.0)
    slow.fail_after = 1  # the first batch is stored, then the database goes away
    c = make(settings, bus, slow, journal)
    t = threading.Thread(target=c.run)
    t.start()
    wait_until(lambda: slow.calls >= 4)
    c.request_stop()
    t.join(5)
    assert not t.is_alive()
    c.close()
    assert bus.committed("g", FRAMES_TOPIC) == {0: 4}  # exactly the stored batch
    assert committed_keys(bus) == set(slow.saved)
    assert_commits_follow_stores(journal, bus)
    slow.down.clear()
    slow.fail_after = None
    c2 = make(settings, bus, slow, journal)
    assert c2.run(idle_timeout_s=0.3) == 12  # the rest is redelivered
    c2.close()
    assert store.count_results() == 16 and len(committed_keys(bus)) == 16


def test_graceful_stop_drains_the_sink_and_commits_what_it_stored(settings: Settings, store: ResultStore) -> None:
    journal = Journal()
    bus = cameras_bus(settings, 3, 4, 10)
    slow = SlowStore(store, journal, delay_s=0.04)
    c = make(settings, bus, slow, journal)
    t = threading.Thread(target=c.run)
    t.start()
    wait_until(lambda: "commit" in journal.kinds(), poll_s=0.005)
    c.request_stop()  # batches are in the sink now: they must be stored and committed before run returns
    t.join(5)
    assert not t.is_alive()
    c.close()
    stored_at_stop = set(slow.saved)
    assert 0 < len(stored_at_stop) < 40
    assert committed_keys(bus) == stored_at_stop  # all stored batches committed, nothing unstored
    assert_commits_follow_stores(journal, bus)
    c2 = make(settings, bus, slow, journal)
    assert c2.run(idle_timeout_s=0.3) == 40 - len(stored_at_stop)
    c2.close()
    # a graceful stop redelivers nothing: every frame was saved exactly once, none lost
    assert len(slow.saved) == 40 and max(slow.saved.values()) == 1
    assert store.count_results() == 40 and len(committed_keys(bus)) == 40


class BadMapEngine(FakeEngine):
    """Defect frames get a 3-D map, which the row's mask encoding rejects (a bug, not an outage)."""

    def infer(self, product, images):
        out = super().infer(product, images)
        if out.scores.max() > 0.5 and len(self.calls) > 1:
            out.maps = out.maps[:, None]
        return out


def test_a_sink_error_is_raised_and_nothing_after_it_is_committed(settings: Settings, store: ResultStore) -> None:
    journal = Journal()
    bus = MemoryBus(partitions=1)
    publish(bus, settings, 12, defect_every=3)
    c = make(settings, bus, SlowStore(store, journal, delay_s=0.0), journal, engine=BadMapEngine())
    with pytest.raises(ValueError, match="2-D"):
        c.run(max_frames=12, idle_timeout_s=1)
    c.close()
    assert bus.committed("g", FRAMES_TOPIC) == {0: 4}  # the first batch only
    assert store.count_results() == 4
    assert_commits_follow_stores(journal, bus)


def test_consumers_crashing_and_stopping_lose_and_duplicate_nothing(settings: Settings, store: ResultStore) -> None:
    journal = Journal()
    bus = cameras_bus(settings, 4, 6, 10)
    slow = SlowStore(store, journal, delay_s=0.005)
    a, b = make(settings, bus, slow, journal), make(settings, bus, slow, journal)
    a.run(max_frames=12)
    a.bus.poll_batch(4, 50)
    a.close()  # a crash with a fetched, unprocessed batch: its partitions move to b
    assert b.run(idle_timeout_s=0.5) == 60 - 12
    b.close()
    assert store.count_results() == 60 and len(committed_keys(bus)) == 60
    assert_commits_follow_stores(journal, bus)
    rows = store.results_for_camera("cam-0")
    assert sorted(r["frame_id"] for r in rows) == list(range(1000, 1010))


def test_decode_pool_gives_the_same_rows_as_serial_decoding(tmp_path: Path, settings: Settings) -> None:
    rows = {}
    for threads in (1, 3):
        s = ResultStore.open(f"sqlite:///{tmp_path / f'd{threads}.sqlite'}")
        bus = MemoryBus(partitions=2)
        publish(bus, settings, 9)
        c = InferenceConsumer(settings, MemoryConsumer(bus, FRAMES_TOPIC, "g", settings.topic_dlq), FakeEngine(), s,
                              decode_threads=threads, stat_interval_s=3600)
        assert c.run(max_frames=9, idle_timeout_s=1) == 9
        c.close()
        rows[threads] = [(r["frame_id"], r["score"], r["verdict"], r["defect_area_px"]) for r in s.results_for_camera("cam-1")]
        s.close()
    assert rows[1] == rows[3] and len(rows[1]) == 9


def test_bad_pipeline_settings_are_refused(settings: Settings, store: ResultStore) -> None:
    with pytest.raises(ValueError, match="sink_depth"):
        InferenceConsumer(settings, MemoryConsumer(MemoryBus(1), FRAMES_TOPIC, "g"), FakeEngine(), store, sink_depth=0)
    with pytest.raises(ValueError, match="decode_threads"):
        InferenceConsumer(settings, MemoryConsumer(MemoryBus(1), FRAMES_TOPIC, "g"), FakeEngine(), store,
                          decode_threads=0)
    with pytest.raises(ValueError, match="decode_threads"):
        Settings(decode_threads=0)


def test_decode_threads_default_to_the_settings(settings: Settings, store: ResultStore) -> None:
    """Two decoders by default (camera-scale frames); the settings choose, an explicit argument wins."""
    assert Settings().decode_threads == 2
    make = partial(InferenceConsumer, bus=MemoryConsumer(MemoryBus(1), FRAMES_TOPIC, "g"), engine=FakeEngine(), store=store)
    assert make(settings).decode_threads == settings.decode_threads
    assert make(settings.model_copy(update={"decode_threads": 3})).decode_threads == 3
    assert make(settings, decode_threads=1).decode_threads == 1


def journal_decodes(c: InferenceConsumer, journal: Journal) -> None:
    start = c._start_decode

    def started(records):
        journal.add("decode", len(records))
        return start(records)

    c._start_decode = started  # type: ignore[method-assign]


def test_decode_ahead_starts_the_next_batch_before_this_one_is_scored(settings: Settings, store: ResultStore) -> None:
    journal = Journal()
    bus = MemoryBus(partitions=1)
    publish(bus, settings, 12)
    c = make(settings, bus, SlowStore(store, journal, delay_s=0), journal, decode_ahead=True)
    journal_decodes(c, journal)
    assert c.run(max_frames=12, idle_timeout_s=1) == 12
    c.close()
    # batch 0 and 1 decoding, 0 scored while 1 decodes, 2 decoding, 1 scored, then 2 (nothing more came)
    assert [k for k in journal.kinds() if k in ("decode", "infer")] == ["decode", "decode", "infer", "decode", "infer", "infer"]
    assert store.count_results() == 12 and len(committed_keys(bus)) == 12
    assert_commits_follow_stores(journal, bus)


def test_without_decode_ahead_each_batch_is_decoded_then_scored(settings: Settings, store: ResultStore) -> None:
    journal = Journal()
    bus = MemoryBus(partitions=1)
    publish(bus, settings, 12)
    c = make(settings, bus, store, journal, decode_ahead=False, decode_threads=2)
    journal_decodes(c, journal)
    assert c.run(max_frames=12, idle_timeout_s=1) == 12
    c.close()
    assert [k for k in journal.kinds() if k in ("decode", "infer")] == ["decode", "infer"] * 3


def test_decode_ahead_waits_for_nothing_when_no_more_frames_are_fetched(settings: Settings, store: ResultStore) -> None:
    """A batch in hand is scored as soon as a poll finds nothing already fetched: the poll behind it does
    not wait (batch_max_wait_ms) for frames that are not there."""
    waits: list[int] = []
    journal = Journal()
    bus = MemoryBus(partitions=1)
    publish(bus, settings, 4)
    c = make(settings, bus, store, journal, decode_ahead=True)
    poll = c.bus.poll_batch

    def recorded(max_records: int, max_wait_ms: int):
        waits.append(max_wait_ms)
        return poll(max_records, max_wait_ms)

    c.bus.poll_batch = recorded  # type: ignore[method-assign]
    assert c.run(max_frames=8, idle_timeout_s=0.3) == 4
    c.close()
    assert waits[:2] == [settings.batch_max_wait_ms, 0] and store.count_results() == 4


def test_decode_ahead_gives_the_same_rows_dead_letters_and_commits(tmp_path: Path, settings: Settings) -> None:
    from ingest.bus.memory import MemoryPublisher

    got = {}
    for ahead in (False, True):
        s = ResultStore.open(f"sqlite:///{tmp_path / f'r{ahead}.sqlite'}")
        journal = Journal()
        bus = MemoryBus(partitions=2)
        publish(bus, settings, 7)
        raw = MemoryPublisher(bus, settings.topic_frames)
        raw.publish(b"cam-1", b"not an image", [("li-v", b"2")])  # poison between good frames
        publish(bus, settings, 6, camera="cam-2", first=1)
        publish(bus, settings, 2, camera="cam-9", product="unknown-thing", first=1)
        c = make(settings, bus, SlowStore(s, journal, delay_s=0), journal, decode_ahead=ahead)
        assert c.run(max_frames=16, idle_timeout_s=1) == 16
        c.close()
        rows = sorted((cam, r["frame_id"], r["score"], r["verdict"]) for cam in ("cam-1", "cam-2")
                      for r in s.results_for_camera(cam))
        s.close()
        reasons = sorted(dict(r.headers)["li-dlq-reason"].decode() for r in bus.records(settings.topic_dlq))
        assert len(rows) == 13 and reasons == ["bad_envelope", "unknown_product", "unknown_product"]
        assert sum(bus.committed("g", FRAMES_TOPIC).values()) == 16
        got[ahead] = rows
    assert got[True] == got[False]


def test_graceful_stop_with_a_batch_decoding_ahead_stores_it(settings: Settings, store: ResultStore) -> None:
    journal = Journal()
    bus = cameras_bus(settings, 1, 2, 20)
    slow = SlowStore(store, journal, delay_s=0.03)
    c = make(settings, bus, slow, journal, decode_ahead=True)
    t = threading.Thread(target=c.run)
    t.start()
    wait_until(lambda: "commit" in journal.kinds(), poll_s=0.005)
    c.request_stop()
    t.join(5)
    assert not t.is_alive()
    c.close()
    stored = set(slow.saved)
    assert committed_keys(bus) == stored and 0 < len(stored) < 40  # the batch in hand was scored and stored
    assert_commits_follow_stores(journal, bus)
    c2 = make(settings, bus, slow, journal, decode_ahead=True)
    assert c2.run(idle_timeout_s=0.3) == 40 - len(stored)
    c2.close()
    assert len(slow.saved) == 40 and max(slow.saved.values()) == 1


def test_decode_ahead_defaults_to_the_settings(settings: Settings, store: ResultStore) -> None:
    make_c = partial(InferenceConsumer, bus=MemoryConsumer(MemoryBus(1), FRAMES_TOPIC, "g"), engine=FakeEngine(), store=store)
    assert Settings().decode_ahead is True
    assert make_c(settings).decode_ahead == settings.decode_ahead
    assert make_c(settings.model_copy(update={"decode_ahead": True})).decode_ahead is True
    assert make_c(settings.model_copy(update={"decode_ahead": True}), decode_ahead=False).decode_ahead is False


def test_images_are_not_kept_for_the_sink(settings: Settings, store: ResultStore) -> None:
    """The sink gets shapes and engine outputs, not decoded frames: its queue stays small."""
    bus = MemoryBus(partitions=1)
    publish(bus, settings, 4)
    c = make(settings, bus, store, Journal())
    batch = c._prepare(c.bus.poll_batch(4, 50))
    assert batch.scored and all(not isinstance(getattr(s, "image", None), np.ndarray) for s in batch.scored)
    assert all(s.hw == (64, 64) for s in batch.scored)
    c.close()


class GroupBus(RecordingBus):
    """Kafka's eager rebalance, reduced to what matters here: once another member asks to join, the group
    has no assignment for anyone until *this* member services the group from its polling thread
    (``poll_batch`` or ``keep_alive``); heartbeats from a background thread do not count."""

    def __init__(self, bus: MemoryBus, settings: Settings, journal: Journal) -> None:
        super().__init__(bus, settings, journal)
        self.join_pending = threading.Event()
        self.rebalanced = threading.Event()
        self.serviced_from: set[str] = set()

    def _service(self) -> None:
        self.serviced_from.add(threading.current_thread().name)
        if self.join_pending.is_set():
            self.rebalanced.set()

    def poll_batch(self, max_records: int, max_wait_ms: int):
        self._service()
        return super().poll_batch(max_records, max_wait_ms)

    def keep_alive(self, timeout_s: float) -> None:
        self._service()
        time.sleep(min(timeout_s, 0.01))


@pytest.mark.parametrize("pipelined", [True, False])
def test_a_member_joining_during_a_store_outage_is_not_made_to_wait_for_it(
        settings: Settings, store: ResultStore, pipelined: bool) -> None:
    """The rebalance stall: a consumer that sleeps through an outage never rejoins a rebalance, so a joining
    member gets no partitions until the outage ends. It must keep polling (nothing taken) while it waits."""
    journal = Journal()
    bus = MemoryBus(partitions=2)
    publish(bus, settings, 16)
    slow = SlowStore(store, journal, delay_s=0.0)
    slow.down.set()
    c = InferenceConsumer(settings, GroupBus(bus, settings, journal), JournalEngine(journal), slow, MemoryCache(),
                          ConsumerMetrics(settings), backoff_initial_s=0.05, backoff_max_s=0.2, stat_interval_s=3600,
                          pipelined=pipelined)
    done: dict[str, int] = {}
    t = threading.Thread(target=lambda: done.update(n=c.run(max_frames=16)), name="polling")
    t.start()
    try:
        deadline = time.monotonic() + 10
        while slow.calls < 3 and time.monotonic() < deadline:  # deep in the outage: the store keeps failing
            time.sleep(0.01)
        assert slow.calls >= 3
        c.bus.join_pending.set()  # another consumer joins the group now
        assert c.bus.rebalanced.wait(10), "the consumer never serviced the group during the outage"
        assert slow.down.is_set() and store.count_results() == 0  # ...and it did so while the outage lasted
        assert bus.committed("g", FRAMES_TOPIC) == {}
    finally:
        slow.down.clear()
        t.join(15)
    assert not t.is_alive() and done["n"] == 16
    c.close()
    assert store.count_results() == 16 and max(slow.saved.values()) == 1
    assert c.bus.serviced_from == {"polling"}  # Kafka's client is not thread-safe: never from the sink
    assert_commits_follow_stores(journal, bus)
