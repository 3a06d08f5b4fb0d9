"""The bus seam: publish frame envelopes, consume them in batches, commit only after storing.

Two implementations share this interface: :mod:`ingest.bus.kafka` (Apache Kafka through
kafka-python) and :mod:`ingest.bus.memory` (one process, for ``lineinspect demo`` and unit tests).
:func:`ingest.bus.open_publisher` / :func:`ingest.bus.open_consumer` pick one from the URL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@dataclass
class Record:
    """One message as consumed, with where it came from (for commits and the dead-letter topic)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    timestamp_ms: int | None = None


@runtime_checkable
class Publisher(Protocol):
    def publish(self, key: bytes, value: bytes, headers: list[tuple[str, bytes]], topic: str | None = None) -> None:
        """Queue one message (asynchronously); raises on a message the bus can never accept."""

    def flush(self, timeout_s: float | None = None) -> None:
        """Block until every queued message is acknowledged by the bus."""

    def close(self) -> None: ...


@runtime_checkable
class BatchConsumer(Protocol):
    def poll_batch(self, max_records: int, max_wait_ms: int) -> list[Record]:
        """Up to ``max_records`` records, waiting at most ``max_wait_ms`` for the batch to fill."""

    def commit(self, records: list[Record]) -> None:
        """Mark ``records`` (and everything before them in their partitions) as processed."""

    def dead_letter(self, record: Record, reason: str, detail: str = "") -> None:
        """Copy ``record`` to the dead-letter topic with headers saying why and where from."""

    def lag(self) -> dict[int, int]:
        """Per-partition lag: end offset minus committed offset (for metrics)."""

    def keep_alive(self, timeout_s: float) -> None:
        """Take part in the group for up to ``timeout_s`` without taking records (a consumer waiting out an
        outage calls this instead of sleeping, so a rebalance never waits for it)."""

    def close(self) -> None: ...
