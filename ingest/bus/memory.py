"""An in-process bus with Kafka's delivery semantics, for ``lineinspect demo`` and unit tests.

What it keeps from Kafka (so code tested against it behaves the same on a broker):
  * topics with N partitions; a record's partition is a stable hash of its key, so one camera's
    frames stay in order;
  * consumer groups with committed offsets; the members of a group get disjoint partitions,
    rebalanced whenever a member joins or leaves;
  * at-least-once delivery: a partition handed to another member restarts at the committed
    offset, so whatever the previous owner fetched but did not commit is delivered again;
  * commits for a partition the member no longer owns are ignored (the new owner decides).
One lock (a condition variable) guards all state; waiting consumers are woken by produce.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import zlib
from dataclasses import dataclass, field

from ingest.bus import check_size, dlq_headers
from ingest.bus.base import Record
from lineinspect.logs import kv

log = logging.getLogger(__name__)


def partition_for(key: bytes | None, partitions: int) -> int:
    """Stable key -> partition (CRC32; Python's ``hash`` is salted per process)."""
    return zlib.crc32(key or b"") % partitions


def assign_range(members: list[str], partitions: int) -> dict[str, list[int]]:
    """Spread partitions over the sorted members, round-robin: disjoint and covering."""
    out: dict[str, list[int]] = {m: [] for m in members}
    ordered = sorted(members)
    if ordered:
        for p in range(partitions):
            out[ordered[p % len(ordered)]].append(p)
    return out


@dataclass
class _Group:
    committed: dict[int, int] = field(default_factory=dict)
    members: list[str] = field(default_factory=list)
    assignment: dict[str, list[int]] = field(default_factory=dict)
    positions: dict[str, dict[int, int]] = field(default_factory=dict)  # member -> partition -> next offset
    generation: int = 0


class MemoryBus:
    """Topics, partitions and consumer groups in memory; thread-safe, one per process."""

    def __init__(self, partitions: int = 6) -> None:
        if partitions <= 0:
            raise ValueError("partitions must be > 0")
        self.partitions = partitions
        self._cv = threading.Condition()
        self._topics: dict[str, list[list[Record]]] = {}
        self._groups: dict[tuple[str, str], _Group] = {}
        self._ids = itertools.count(1)

    # --- topics ------------------------------------------------------------------------
    def _topic(self, name: str) -> list[list[Record]]:
        if name not in self._topics:
            self._topics[name] = [[] for _ in range(self.partitions)]
        return self._topics[name]

    def produce(self, topic: str, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]) -> Record:
        with self._cv:
            parts = self._topic(topic)
            p = partition_for(key, len(parts))
            rec = Record(topic, p, len(parts[p]), key, value, list(headers), int(time.time() * 1000))
            parts[p].append(rec)
            self._cv.notify_all()
            return rec

    def records(self, topic: str) -> list[Record]:
        """Every record of ``topic`` (partition by partition), e.g. to inspect a dead-letter topic."""
        with self._cv:
            return [r for part in self._topic(topic) for r in part]

    def end_offsets(self, topic: str) -> dict[int, int]:
        with self._cv:
            return {p: len(part) for p, part in enumerate(self._topic(topic))}

    # --- groups --------------------------------------------------------------------------
    def new_member_id(self, group: str) -> str:
        return f"{group}-{next(self._ids)}"

    def join(self, group: str, topic: str, member: str) -> None:
        with self._cv:
            g = self._groups.setdefault((group, topic), _Group())
            if member not in g.members:
                g.members.append(member)
                self._rebalance(g, topic)

    def leave(self, group: str, topic: str, member: str) -> None:
        with self._cv:
            g = self._groups.get((group, topic))
            if g and member in g.members:
                g.members.remove(member)
                g.positions.pop(member, None)
                self._rebalance(g, topic)

    def _rebalance(self, g: _Group, topic: str) -> None:
        old = g.assignment
        g.assignment = assign_range(g.members, len(self._topic(topic)))
        g.generation += 1
        for m, parts in g.assignment.items():
            kept = set(old.get(m, ()))
            pos = g.positions.setdefault(m, {})
            for p in list(pos):
                if p not in parts:
                    del pos[p]
            for p in parts:
                if p not in kept:  # newly owned: start where the group committed
                    pos[p] = g.committed.get(p, 0)
        log.debug("memory bus rebalance", extra=kv(topic=topic, generation=g.generation, assignment=g.assignment))
        self._cv.notify_all()

    def assignment(self, group: str, topic: str, member: str) -> list[int]:
        with self._cv:
            g = self._groups.get((group, topic))
            return list(g.assignment.get(member, ())) if g else []

    def fetch(self, group: str, topic: str, member: str, max_records: int, max_wait_ms: int) -> list[Record]:
        """Up to ``max_records`` from the member's partitions, waiting until full or the time is up."""
        deadline = time.monotonic() + max_wait_ms / 1000.0
        out: list[Record] = []
        with self._cv:
            while True:
                g = self._groups.get((group, topic))
                if g is None or member not in g.members:
                    return out
                parts = self._topic(topic)
                pos = g.positions.get(member, {})
                for p in sorted(pos):
                    while len(out) < max_records and pos[p] < len(parts[p]):
                        out.append(parts[p][pos[p]])
                        pos[p] += 1
                remaining = deadline - time.monotonic()
                if len(out) >= max_records or remaining <= 0:
                    return out
                self._cv.wait(remaining)

    def commit(self, group: str, topic: str, member: str, offsets: dict[int, int]) -> dict[int, int]:
        """Commit ``{partition: next offset}`` for partitions the member owns; returns what was committed."""
        done: dict[int, int] = {}
        with self._cv:
            g = self._groups.get((group, topic))
            if g is None:
                return done
            owned = set(g.assignment.get(member, ()))
            for p, off in offsets.items():
                if p in owned:
                    g.committed[p] = max(g.committed.get(p, 0), off)
                    done[p] = g.committed[p]
                else:
                    log.info("commit skipped: partition no longer assigned", extra=kv(topic=topic, partition=p, member=member))
        return done

    def committed(self, group: str, topic: str) -> dict[int, int]:
        with self._cv:
            g = self._groups.get((group, topic))
            return dict(g.committed) if g else {}


class MemoryPublisher:
    """:class:`ingest.bus.base.Publisher` on a :class:`MemoryBus` (synchronous, so flush is a no-op)."""

    def __init__(self, bus: MemoryBus, topic: str, max_message_bytes: int = 8 * 1024 * 1024) -> None:
        self.bus = bus
        self.topic = topic
        self.max_message_bytes = max_message_bytes

    def publish(self, key: bytes, value: bytes, headers: list[tuple[str, bytes]], topic: str | None = None) -> None:
        check_size(key, value, headers, self.max_message_bytes)
        self.bus.produce(topic or self.topic, key, value, headers)

    def flush(self, timeout_s: float | None = None) -> None:
        return None

    def close(self) -> None:
        return None


class MemoryConsumer:
    """:class:`ingest.bus.base.BatchConsumer` on a :class:`MemoryBus`; joins its group on creation.

    ``close()`` leaves without committing anything, exactly like a crash: the partitions move to the
    remaining members, which restart at the committed offsets.
    """

    def __init__(self, bus: MemoryBus, topic: str, group: str, dlq_topic: str | None = None) -> None:
        self.bus = bus
        self.topic = topic
        self.group = group
        self.dlq_topic = dlq_topic or f"{topic}.dlq"
        self.member = bus.new_member_id(group)
        self._closed = False
        bus.join(group, topic, self.member)

    def poll_batch(self, max_records: int, max_wait_ms: int) -> list[Record]:
        if self._closed:
            raise RuntimeError("consumer is closed")
        return self.bus.fetch(self.group, self.topic, self.member, max_records, max_wait_ms)

    def commit(self, records: list[Record]) -> None:
        offsets: dict[int, int] = {}
        for r in records:
            if r.topic == self.topic:
                offsets[r.partition] = max(offsets.get(r.partition, 0), r.offset + 1)
        if offsets:
            self.bus.commit(self.group, self.topic, self.member, offsets)

    def dead_letter(self, record: Record, reason: str, detail: str = "") -> None:
        headers = list(record.headers) + dlq_headers(record, reason, detail)
        self.bus.produce(self.dlq_topic, record.key, record.value, headers)

    def assignment(self) -> list[int]:
        return self.bus.assignment(self.group, self.topic, self.member)

    def keep_alive(self, timeout_s: float) -> None:
        """The in-memory group rebalances synchronously, so there is nothing to service: just wait."""
        time.sleep(max(0.0, timeout_s))

    def lag(self) -> dict[int, int]:
        ends = self.bus.end_offsets(self.topic)
        committed = self.bus.committed(self.group, self.topic)
        return {p: ends[p] - committed.get(p, 0) for p in self.assignment()}

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.bus.leave(self.group, self.topic, self.member)

