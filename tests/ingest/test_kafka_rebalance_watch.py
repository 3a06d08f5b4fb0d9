"""The Kafka consumer says so when a rebalance outlasts two session timeouts (no broker needed)."""

from __future__ import annotations

import logging
import time

import pytest

from ingest.bus.kafka import REJOIN_AFTER_S, KafkaBatchConsumer
from lineinspect.settings import Settings


def _bare(settings: Settings) -> KafkaBatchConsumer:
    c = KafkaBatchConsumer.__new__(KafkaBatchConsumer)
    c.settings, c.group = settings, "g"
    c._rebalancing_since, c._warned_rebalance = None, False
    c.topic, c._listener, c._consumer = "frames", object(), _Client()
    return c


class _Client:
    """Records the subscription calls a stuck member makes."""

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


def test_max_poll_interval_bounds_and_default() -> None:
    assert Settings().kafka_max_poll_interval_ms == 60_000
    with pytest.raises(ValueError):
        Settings(kafka_max_poll_interval_ms=1_000)


def test_a_member_left_without_an_assignment_rejoins(caplog: pytest.LogCaptureFixture) -> None:
    """A survivor that polls but gets no assignment for REJOIN_AFTER_S after a revocation sends a fresh
    JoinGroup (unsubscribe + subscribe with the same listener), at most once per REJOIN_AFTER_S."""
    c = _bare(Settings(kafka_max_poll_interval_ms=60_000))
    caplog.set_level(logging.WARNING, logger="ingest.bus.kafka")
    c._rebalancing_since = time.monotonic() - (REJOIN_AFTER_S - 5)
    c._check_rebalance()
    assert c._consumer.calls == []                         # a slow rebalance is left alone
    c._rebalancing_since = time.monotonic() - (REJOIN_AFTER_S + 1)
    c._check_rebalance()
    assert c._consumer.calls == [("unsubscribe", ()), ("subscribe", (("frames",), c._listener))]
    assert c._rebalancing_since is not None and time.monotonic() - c._rebalancing_since < 1
    c._check_rebalance()                                   # the clock restarted: no second rejoin at once
    assert len(c._consumer.calls) == 2
    assert any("re-subscribing" in r.getMessage() for r in caplog.records)
