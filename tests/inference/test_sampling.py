"""inference.sampling.IntervalSampler: which clearly normal frames become training samples."""

from __future__ import annotations

import pytest

from inference.sampling import IntervalSampler


def test_one_admission_per_key_per_interval_on_the_events_clock() -> None:
    s = IntervalSampler(1.0)
    got = [s.admit("cam-1", t) for t in (100.0, 100.1, 100.99, 101.0, 101.5, 102.2)]
    assert got == [True, False, False, True, False, True]


def test_keys_are_independent() -> None:
    s = IntervalSampler(5.0)
    assert s.admit(("widget", "cam-1"), 10.0)
    assert s.admit(("widget", "cam-2"), 10.0)
    assert s.admit(("gear", "cam-1"), 10.0)
    assert not s.admit(("widget", "cam-1"), 12.0)
    assert len(s) == 3


def test_a_clock_that_steps_back_by_an_interval_is_admitted_again() -> None:
    s = IntervalSampler(1.0)
    assert s.admit("cam", 1000.0)
    assert not s.admit("cam", 999.5)      # within the interval either way
    assert s.admit("cam", 900.0)          # a replayed backlog or a reset camera clock
    assert not s.admit("cam", 900.5)


def test_zero_interval_admits_everything() -> None:
    s = IntervalSampler(0.0)
    assert all(s.admit("cam", 5.0) for _ in range(10))
    assert len(s) == 0


def test_key_table_is_bounded_least_recently_admitted_dropped() -> None:
    s = IntervalSampler(10.0, max_keys=2)
    assert s.admit("a", 0.0) and s.admit("b", 0.0) and s.admit("c", 0.0)
    assert len(s) == 2
    assert s.admit("a", 1.0)              # "a" was dropped: admitted again
    assert not s.admit("c", 1.0)          # "c" is still remembered


@pytest.mark.parametrize("bad", [-1.0, float("nan")])
def test_refuses_a_negative_or_nan_interval(bad: float) -> None:
    with pytest.raises(ValueError, match="every_s"):
        IntervalSampler(bad)
