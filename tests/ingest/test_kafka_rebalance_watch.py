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
    return c


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
