"""The frame bus: pick Kafka or the in-process bus from ``settings.bus_url``.

``memory://`` needs one :class:`ingest.bus.memory.MemoryBus` shared by the publisher and the
consumer of one process (``lineinspect demo``): pass it as ``memory_bus`` to both factories.
Imports happen inside the factories so ``import ingest.bus`` needs no Kafka client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lineinspect.errors import ConfigError

if TYPE_CHECKING:
    from ingest.bus.base import BatchConsumer, Publisher, Record
    from ingest.bus.memory import MemoryBus
    from lineinspect.settings import Settings

__all__ = ["MessageTooLarge", "check_size", "dlq_headers", "message_size", "open_consumer", "open_publisher"]


class MessageTooLarge(ValueError):
    """A message over ``max_message_bytes``: refused before it reaches the bus, never retried."""


def message_size(key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]] | None) -> int:
    """Bytes a record carries (key + value + header names and values), as checked against the limit."""
    return len(key or b"") + len(value or b"") + sum(len(k.encode()) + len(v or b"") for k, v in (headers or []))


def check_size(key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]] | None, limit: int) -> None:
    n = message_size(key, value, headers)
    if n > limit:
        raise MessageTooLarge(
            f"message of {n} bytes exceeds max_message_bytes={limit} (LINEINSPECT_MAX_MESSAGE_BYTES); "
            "publish JPEG instead of PNG, or downscale the frames")


def dlq_headers(record: Record, reason: str, detail: str) -> list[tuple[str, bytes]]:
    """Headers added to a dead-lettered record: why, and where it came from (original headers kept)."""
    return [
        ("li-dlq-reason", reason.encode()),
        ("li-dlq-detail", detail[:1000].encode("utf-8", "replace")),
        ("li-src-topic", record.topic.encode()),
        ("li-src-partition", str(record.partition).encode()),
        ("li-src-offset", str(record.offset).encode()),
    ]


def _memory_bus(settings: Settings, memory_bus: MemoryBus | None) -> MemoryBus:
    if memory_bus is None:
        raise ConfigError("bus_url memory:// works inside one process only: pass the shared MemoryBus "
                          "(use LINEINSPECT_BUS_URL=kafka://host:port for separate processes)")
    return memory_bus


def open_publisher(settings: Settings, memory_bus: MemoryBus | None = None) -> Publisher:
    """A publisher for ``settings.topic_frames`` on the bus the settings name."""
    if settings.bus_url.startswith("memory://"):
        from ingest.bus.memory import MemoryPublisher

        return MemoryPublisher(_memory_bus(settings, memory_bus), settings.topic_frames, settings.max_message_bytes)
    from ingest.bus.kafka import KafkaPublisher

    return KafkaPublisher(settings)


def open_consumer(settings: Settings, memory_bus: MemoryBus | None = None, group: str | None = None) -> BatchConsumer:
    """A batch consumer of ``settings.topic_frames`` in ``group`` (default ``settings.consumer_group``)."""
    group = group or settings.consumer_group
    if settings.bus_url.startswith("memory://"):
        from ingest.bus.memory import MemoryConsumer

        return MemoryConsumer(_memory_bus(settings, memory_bus), settings.topic_frames, group, dlq_topic=settings.topic_dlq)
    from ingest.bus.kafka import KafkaBatchConsumer

    return KafkaBatchConsumer(settings, group=group)
