"""A short soak (benchmarks/bench_soak.py): two consumers, a camera at 80 % of the capacity measured in the
run, and one fault of every kind on a schedule; nothing published may be lost or stored twice."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.bench_soak import FAULT_KINDS, STORABLE_POISON, SoakConfig, run_soak
from tests.reliability.conftest import Services, TinyModel

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]


def test_short_soak_loses_and_duplicates_nothing(fault_services: Services, tiny_model: TinyModel, tmp_path: Path) -> None:
    cfg = SoakConfig(minutes=2.5, fault_every_s=22.0, backlog=160, drain_timeout_s=300)
    res = run_soak(cfg, fault_services, tiny_model, tmp_path, log=lambda _m: None)
    assert res["faults"] == {k: 1 for k in FAULT_KINDS}, res["fault_log"]
    assert res["published_poison"] > 0 and res["published_good"] > cfg.backlog
    assert res["lost"] == 0, res["lost_examples"]
    assert res["duplicated"] == 0
    # stored, not dead-lettered, by design: a product with no model is scored zero-shot; captured_at is a FLOAT
    # column, so timestamps past any SQL TIMESTAMP are still storable. Every other class must be dead-lettered.
    assert set(res["poison_stored_classes"]) <= STORABLE_POISON
    assert res["stored"] == res["published_good"] + res["poison_stored"]
    assert res["drained_in_s"] is not None, "the consumers did not catch up after the camera stopped"
    assert not [f for f in res["fault_log"] if f["kind"] == "consumer_exited"], res["fault_log"]
    assert all(c == 0 for c in res["exit_codes"]), res["exit_codes"]
