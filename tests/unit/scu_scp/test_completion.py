"""A study is complete once its sender has been quiet for the configured time."""

from __future__ import annotations

import pytest

from scu_scp.completion import CompletionTracker


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_study_due_only_after_quiet_period() -> None:
    clock = FakeClock()
    tracker = CompletionTracker(quiet_seconds=10, clock=clock)
    tracker.touch("1.2.3")
    clock.now += 9.9
    assert tracker.due() == []
    clock.now += 0.1
    assert tracker.due() == ["1.2.3"]
    assert tracker.due() == []
    assert tracker.pending() == {}


def test_new_activity_restarts_quiet_period() -> None:
    clock = FakeClock()
    tracker = CompletionTracker(quiet_seconds=10, clock=clock)
    tracker.touch("1.2.3")
    clock.now += 8
    tracker.touch("1.2.3")
    clock.now += 8
    assert tracker.due() == []
    clock.now += 2
    assert tracker.due() == ["1.2.3"]


def test_due_returns_oldest_first_and_keeps_others() -> None:
    clock = FakeClock()
    tracker = CompletionTracker(quiet_seconds=5, clock=clock)
    tracker.touch("1.2.2", at=990.0)
    tracker.touch("1.2.1", at=980.0)
    tracker.touch("1.2.3")
    assert tracker.due(now=1000.0) == ["1.2.1", "1.2.2"]
    assert tracker.pending() == {"1.2.3": 1000.0}


def test_explicit_time_never_moves_activity_backwards() -> None:
    clock = FakeClock()
    tracker = CompletionTracker(quiet_seconds=5, clock=clock)
    tracker.touch("1.2.3")
    tracker.touch("1.2.3", at=900.0)
    assert tracker.pending() == {"1.2.3": 1000.0}


def test_force_makes_study_due_now() -> None:
    clock = FakeClock()
    tracker = CompletionTracker(quiet_seconds=3600, clock=clock)
    tracker.touch("1.2.3")
    tracker.touch("1.2.4")
    tracker.force("1.2.3")
    tracker.force("9.9")
    assert sorted(tracker.due()) == ["1.2.3", "9.9"]
    assert tracker.pending() == {"1.2.4": 1000.0}


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_invalid_quiet_seconds_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="quiet_seconds"):
        CompletionTracker(quiet_seconds=bad)
