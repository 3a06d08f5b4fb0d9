"""KafkaBatchConsumer.keep_alive: services the group without consuming anything (fake client, no broker)."""

from __future__ import annotations

from collections import namedtuple
from typing import Any

from kafka import TopicPartition

from ingest.bus.kafka import KafkaBatchConsumer
from lineinspect.settings import Settings

Msg = namedtuple("Msg", "topic partition offset")


class FakeKafka:
    """The KafkaConsumer calls keep_alive makes; a rebalance during the poll adds partition 2, which
    (not paused) returns two records that must be given back."""

    def __init__(self) -> None:
        self.assigned = {TopicPartition("t", 0), TopicPartition("t", 1)}
        self._paused: set[TopicPartition] = set()
        self.polled_while_paused: set[TopicPartition] = set()
        self.seeks: dict[TopicPartition, int] = {}
        self.log: list[str] = []

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def paused(self) -> set[TopicPartition]:
        return set(self._paused)

    def pause(self, *tps: TopicPartition) -> None:
        self._paused |= set(tps)
        self.log.append("pause")

    def resume(self, *tps: TopicPartition) -> None:
        self._paused -= set(tps)
        self.log.append("resume")

    def poll(self, timeout_ms: int = 0, max_records: Any = None) -> dict:
        self.log.append("poll")
        self.polled_while_paused = set(self._paused)
        new = TopicPartition("t", 2)
        self.assigned.add(new)  # the rebalance this poll took part in
        return {new: [Msg("t", 2, 7), Msg("t", 2, 8)]}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks[tp] = offset


def test_keep_alive_polls_paused_and_gives_back_anything_it_got() -> None:
    c = KafkaBatchConsumer.__new__(KafkaBatchConsumer)
    c.settings, c.group, c.topic = Settings(), "g", "t"
    c._rebalancing_since, c._warned_rebalance = None, False
    fake = FakeKafka()
    c._consumer = fake  # type: ignore[assignment]
    c.keep_alive(0.1)
    assert fake.log == ["pause", "poll", "resume"]
    assert fake.polled_while_paused == {TopicPartition("t", 0), TopicPartition("t", 1)}
    assert fake.paused() == set()  # nothing stays paused after the wait
    assert fake.seeks == {TopicPartition("t", 2): 7}  # the next poll_batch hands out offsets 7 and 8


def test_kafka_python_verifies_record_crcs_with_the_c_crc32c() -> None:
    """Without the ``crc32c`` package kafka-python checks every fetched record batch's CRC in pure Python
    (~0.3 s of CPU per MiB here), all inside ``poll()``: a consumer of multi-MiB frames then polls late."""
    import crc32c
    from kafka.record import util

    assert util._crc32c is crc32c.crc32c
    assert util.calc_crc32c(memoryview(b"123456789")) == 0xE3069283  # the CRC-32C check value


def test_partitions_kept_across_an_eager_rebalance_stay_fetchable() -> None:
    """dpkp/kafka-python#3131 ("partitions assigned but never fetched after a rebalance", 3.0.7-3.0.9): the
    revocation gate set while ``on_partitions_revoked`` runs stayed on partitions the member got back, so
    they were never fetched again. Fixed upstream (#3132) in the pinned client; this guards the pin, so no
    fetch watchdog is needed in ingest/bus/kafka.py. Fails on an affected kafka-python."""
    from kafka.consumer.subscription_state import SubscriptionState

    tp0, tp1 = TopicPartition("t", 0), TopicPartition("t", 1)
    s = SubscriptionState()
    s.subscribe(topics=["t"])
    s.assign_from_subscribed([tp0, tp1])
    for tp in (tp0, tp1):
        s.seek(tp, 5)
    assert set(s.fetchable_partitions()) == {tp0, tp1}
    s.mark_pending_revocation({tp0, tp1})  # EAGER: the listener is told everything is revoked
    assert s.fetchable_partitions() == []
    s.assign_from_subscribed([tp0])         # the new generation gives tp0 back
    assert s.fetchable_partitions() == [tp0]
    assert s.assignment[tp0].position.offset == 5  # and its position survives: no replay, no skip
