"""The Kafka consumer says so when a rebalance outlasts two session timeouts (no broker needed)."""

from __future__ import annotations

import logging
import time

import pytest

from ingest.bus.kafka import KafkaBatchConsumer
from lineinspect.settings import Settings


def _bare(settings: Settings) -> KafkaBatchConsumer:
    c = KafkaBatchConsumer.__new__(KafkaBatchConsumer)
    c.settings, c.group = settings, "g"
    c._rebalancing_since, c._warned_rebalance = None, False
    c.topic, c._listener, c._consumer = "frames", object(), _Client()
    return c


class _Client:
    """Records subscription calls: the watch only reports, it never re-subscribes (a stuck join is fixed at its
    cause, ingest.bus.kafka.apply_finished_joins)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple]] = []

    def unsubscribe(self) -> None:
        self.calls.append(("unsubscribe", ()))

    def subscribe(self, topics: list[str], listener: object) -> None:
        self.calls.append(("subscribe", (tuple(topics), listener)))


def test_long_rebalance_is_reported_once(caplog: pytest.LogCaptureFixture) -> None:
    c = _bare(Settings(kafka_max_poll_interval_ms=60_000))
    caplog.set_level(logging.WARNING, logger="ingest.bus.kafka")
    c._check_rebalance()                                   # not rebalancing: silent
    c._rebalancing_since = time.monotonic() - 5
    c._check_rebalance()                                   # a normal rebalance: silent
    c._rebalancing_since = time.monotonic() - 25
    c._check_rebalance()
    c._check_rebalance()
    warned = [r for r in caplog.records if "rebalance is taking long" in r.getMessage()]
    assert len(warned) == 1 and c._warned_rebalance
    c._rebalancing_since = time.monotonic() - 120
    c._check_rebalance()
    assert c._consumer.calls == []


def test_max_poll_interval_bounds_and_default() -> None:
    assert Settings().kafka_max_poll_interval_ms == 60_000
    with pytest.raises(ValueError):
        Settings(kafka_max_poll_interval_ms=1_000)


def test_finished_join_patch_leaves_an_unknown_client_alone(caplog: pytest.LogCaptureFixture) -> None:
    from ingest.bus.kafka import apply_finished_joins

    caplog.set_level(logging.WARNING, logger="ingest.bus.kafka")
    assert apply_finished_joins(object()) is False
    assert any("internals differ" in r.getMessage() for r in caplog.records)
