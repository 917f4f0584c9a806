"""A study is complete once its associations are released, or its sender has been quiet."""

from __future__ import annotations

import pytest

from scu_scp.completion import AssociationEnd, CompletionTracker, Reason


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


# -- release of the associations that carried a study ------------------------------------

GRACE = 5.0
QUIET = 30.0


def release_tracker(clock: FakeClock) -> CompletionTracker:
    return CompletionTracker(quiet_seconds=QUIET, clock=clock, release_grace_seconds=GRACE)


def test_one_association_study_due_grace_after_release() -> None:
    clock = FakeClock()
    tracker = release_tracker(clock)
    tracker.touch("1.2.3", carrier="a")
    clock.now += 1
    tracker.touch("1.2.3", carrier="a")
    clock.now += 20  # the association stays open: the study is still arriving
    assert tracker.due() == []
    tracker.association_ended("a", AssociationEnd.RELEASED)
    clock.now += GRACE - 0.5
    assert tracker.due() == []
    clock.now += 0.5
    assert tracker.due_with_reasons() == [("1.2.3", Reason.RELEASED)]
    assert tracker.pending() == {}
    assert tracker.open_associations() == 0


def test_a_new_association_for_the_study_restarts_the_grace() -> None:
    clock = FakeClock()
    tracker = release_tracker(clock)
    tracker.touch("1.2.3", carrier="series-1")
    tracker.association_ended("series-1", AssociationEnd.RELEASED)
    clock.now += GRACE - 1
    tracker.touch("1.2.3", carrier="series-2")  # the next series, within the grace
    clock.now += GRACE
    assert tracker.due() == []  # series-2 is still open
    tracker.association_ended("series-2", AssociationEnd.RELEASED)
    clock.now += GRACE - 0.5
    assert tracker.due() == []
    clock.now += 0.5
    assert tracker.due() == ["1.2.3"]


def test_instance_without_an_association_after_the_release_means_quiet_period() -> None:
    """An instance from a quiet-only sender after a release: the quiet period decides."""
    clock = FakeClock()
    tracker = release_tracker(clock)
    tracker.touch("1.2.3", carrier="a")
    tracker.association_ended("a", AssociationEnd.RELEASED)
    clock.now += GRACE - 1
    tracker.touch("1.2.3")
    clock.now += GRACE
    assert tracker.due() == []
    clock.now += QUIET - GRACE
    assert tracker.due_with_reasons() == [("1.2.3", Reason.QUIET)]


def test_study_waits_for_every_association_that_carried_it() -> None:
    clock = FakeClock()
    tracker = release_tracker(clock)
    tracker.touch("1.2.3", carrier="a")
    tracker.touch("1.2.3", carrier="b")
    tracker.touch("1.2.4", carrier="b")
    tracker.association_ended("a", AssociationEnd.RELEASED)
    clock.now += GRACE + 1
    assert tracker.due() == []
    tracker.association_ended("b", AssociationEnd.RELEASED)
    clock.now += GRACE
    assert tracker.due() == ["1.2.3", "1.2.4"]


def test_interleaved_associations_complete_each_study_on_its_own_release() -> None:
    clock = FakeClock()
    tracker = release_tracker(clock)
    for _ in range(3):
        tracker.touch("1.2.3", carrier="a")
        tracker.touch("1.2.4", carrier="b")
        clock.now += 1
    tracker.association_ended("a", AssociationEnd.RELEASED)
    clock.now += GRACE
    assert tracker.due() == ["1.2.3"]
    tracker.touch("1.2.4", carrier="b")
    clock.now += 10
    assert tracker.due() == []
    tracker.association_ended("b", AssociationEnd.RELEASED)
    clock.now += GRACE
    assert tracker.due() == ["1.2.4"]
    assert tracker.open_associations() == 0


@pytest.mark.parametrize("end", [AssociationEnd.ABORTED, AssociationEnd.CLOSED])
def test_aborted_or_dropped_association_falls_back_to_the_quiet_period(
    end: AssociationEnd,
) -> None:
    clock = FakeClock()
    tracker = release_tracker(clock)
    tracker.touch("1.2.3", carrier="a")
    tracker.association_ended("a", end)
    clock.now += GRACE
    tracker.touch("1.2.3", carrier="resend")
    tracker.association_ended("resend", AssociationEnd.RELEASED)
    clock.now += QUIET - 0.5
    assert tracker.due() == []  # the aborted association's data may still be resent
    clock.now += 0.5
    assert tracker.due_with_reasons() == [("1.2.3", Reason.QUIET)]


def test_release_reported_after_the_closed_connection_still_counts() -> None:
    """pynetdicom may signal the closed connection before the release (two threads)."""
    clock = FakeClock()
    tracker = release_tracker(clock)
    tracker.touch("1.2.3", carrier="a")
    tracker.association_ended("a", AssociationEnd.CLOSED)
    clock.now += 0.01
    tracker.association_ended("a", AssociationEnd.RELEASED)
    clock.now += GRACE
    assert tracker.due() == ["1.2.3"]


def test_close_after_release_changes_nothing_and_abort_is_never_undone() -> None:
    clock = FakeClock()
    tracker = release_tracker(clock)
    tracker.touch("1.2.3", carrier="a")
    tracker.touch("1.2.4", carrier="b")
    tracker.association_ended("a", AssociationEnd.RELEASED)
    tracker.association_ended("a", AssociationEnd.CLOSED)
    tracker.association_ended("b", AssociationEnd.ABORTED)
    tracker.association_ended("b", AssociationEnd.RELEASED)
    tracker.association_ended("unknown", AssociationEnd.RELEASED)  # carried nothing: ignored
    clock.now += GRACE
    assert tracker.due() == ["1.2.3"]


def test_without_carrier_or_grace_only_the_quiet_period_counts() -> None:
    clock = FakeClock()
    tracker = release_tracker(clock)
    tracker.touch("1.2.3", carrier="a")
    tracker.touch("1.2.3")  # e.g. resumed from the spool after a restart
    tracker.association_ended("a", AssociationEnd.RELEASED)
    off = CompletionTracker(quiet_seconds=QUIET, clock=clock)
    off.touch("1.2.3", carrier="a")
    off.association_ended("a", AssociationEnd.RELEASED)
    clock.now += QUIET - 0.5
    assert tracker.due() == [] and off.due() == []
    clock.now += 0.5
    assert tracker.due() == ["1.2.3"] and off.due() == ["1.2.3"]


def test_quiet_period_applies_while_an_association_stays_open() -> None:
    """The fallback is never later than before: an idle open association seals by quiet."""
    clock = FakeClock()
    tracker = release_tracker(clock)
    tracker.touch("1.2.3", carrier="a")
    clock.now += QUIET
    assert tracker.due_with_reasons() == [("1.2.3", Reason.QUIET)]
    assert tracker.open_associations() == 0  # forgotten with its only study
    tracker.touch("1.2.3", carrier="a")  # more over the same association: a new batch
    tracker.association_ended("a", AssociationEnd.RELEASED)
    clock.now += GRACE
    assert tracker.due() == ["1.2.3"]


def test_force_beats_an_open_association() -> None:
    clock = FakeClock()
    tracker = release_tracker(clock)
    tracker.touch("1.2.3", carrier="a")
    tracker.force("1.2.3")
    assert tracker.due_with_reasons() == [("1.2.3", Reason.FORCED)]
    tracker.association_ended("a", AssociationEnd.RELEASED)  # after its study: ignored
    assert tracker.open_associations() == 0


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_invalid_release_grace_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="release_grace_seconds"):
        CompletionTracker(quiet_seconds=30, release_grace_seconds=bad)
