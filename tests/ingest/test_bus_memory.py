"""MemoryBus: partitions by key, groups with disjoint assignments, commits, redelivery, DLQ."""

from __future__ import annotations

import threading

import pytest

from ingest.bus import MessageTooLarge
from ingest.bus.memory import MemoryBus, MemoryConsumer, MemoryPublisher, assign_range, partition_for


def _fill(bus: MemoryBus, n: int, cameras: int = 4, topic: str = "t") -> None:
    pub = MemoryPublisher(bus, topic)
    for i in range(n):
        pub.publish(f"cam{i % cameras}".encode(), str(i).encode(), [("i", str(i).encode())])


def test_same_key_same_partition_in_order() -> None:
    bus = MemoryBus(partitions=4)
    _fill(bus, 40)
    recs = bus.records("t")
    by_key: dict[bytes, set[int]] = {}
    for r in recs:
        by_key.setdefault(r.key, set()).add(r.partition)
        assert r.partition == partition_for(r.key, 4)
    assert all(len(p) == 1 for p in by_key.values())
    for key in by_key:
        vals = [int(r.value) for r in recs if r.key == key]
        assert vals == sorted(vals)


def test_assign_range_is_disjoint_and_covering() -> None:
    a = assign_range(["b", "a", "c"], 7)
    parts = sorted(p for ps in a.values() for p in ps)
    assert parts == list(range(7))
    assert assign_range([], 3) == {}


def test_group_members_get_disjoint_partitions_and_every_record_once() -> None:
    bus = MemoryBus(partitions=6)
    c1, c2 = MemoryConsumer(bus, "t", "g"), MemoryConsumer(bus, "t", "g")
    assert set(c1.assignment()).isdisjoint(c2.assignment())
    assert sorted(c1.assignment() + c2.assignment()) == list(range(6))
    _fill(bus, 60, cameras=12)
    seen = []
    for c in (c1, c2):
        while batch := c.poll_batch(7, 10):
            assert {r.partition for r in batch} <= set(c.assignment())
            seen += [int(r.value) for r in batch]
            c.commit(batch)
    assert sorted(seen) == list(range(60))
    assert sum(c1.lag().values()) + sum(c2.lag().values()) == 0


def test_uncommitted_records_are_redelivered_after_a_crash() -> None:
    bus = MemoryBus(partitions=2)
    _fill(bus, 20, cameras=5)
    c1 = MemoryConsumer(bus, "t", "g")
    first = c1.poll_batch(8, 10)
    c1.commit(first[:3])
    c1.close()  # crash: the rest of the batch was never committed
    c2 = MemoryConsumer(bus, "t", "g")
    got = []
    while batch := c2.poll_batch(50, 10):
        got += batch
        c2.commit(batch)
    committed_vals = {int(r.value) for r in first[:3]}
    redelivered = {int(r.value) for r in got}
    assert redelivered | committed_vals == set(range(20))
    assert {int(r.value) for r in first[3:]} <= redelivered


def test_commit_for_a_revoked_partition_is_ignored() -> None:
    bus = MemoryBus(partitions=2)
    _fill(bus, 10, cameras=4)
    c1 = MemoryConsumer(bus, "t", "g")
    batch = c1.poll_batch(10, 10)
    c2 = MemoryConsumer(bus, "t", "g")  # rebalance: c1 loses one partition
    lost = set(c2.assignment())
    c1.commit(batch)
    committed = bus.committed("g", "t")
    assert not lost & set(committed)
    # c2 re-reads its partition from the start (nothing was committed there)
    again = c2.poll_batch(10, 10)
    assert {r.partition for r in again} <= lost and len(again) == sum(1 for r in batch if r.partition in lost)


def test_groups_are_independent_and_poll_waits_for_data() -> None:
    bus = MemoryBus(partitions=3)
    g1, g2 = MemoryConsumer(bus, "t", "g1"), MemoryConsumer(bus, "t", "g2")
    threading.Timer(0.05, lambda: _fill(bus, 3)).start()
    got = g1.poll_batch(3, 2000)
    assert len(got) == 3
    assert len(g2.poll_batch(3, 1000)) == 3
    assert g1.poll_batch(3, 20) == []


def test_dead_letter_keeps_message_and_adds_reason_headers() -> None:
    bus = MemoryBus(partitions=1)
    _fill(bus, 1)
    c = MemoryConsumer(bus, "t", "g", dlq_topic="t.dlq")
    rec = c.poll_batch(1, 10)[0]
    c.dead_letter(rec, "undecodable", "bad bytes")
    (dlq,) = bus.records("t.dlq")
    h = dict(dlq.headers)
    assert dlq.key == rec.key and dlq.value == rec.value and h["i"] == b"0"
    assert h["li-dlq-reason"] == b"undecodable" and h["li-dlq-detail"] == b"bad bytes"
    assert (h["li-src-topic"], h["li-src-partition"], h["li-src-offset"]) == (b"t", b"0", b"0")


def test_oversized_messages_are_refused() -> None:
    pub = MemoryPublisher(MemoryBus(), "t", max_message_bytes=100)
    with pytest.raises(MessageTooLarge):
        pub.publish(b"k", b"x" * 200, [])
