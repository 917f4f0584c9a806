"""Decides when a study is complete: its associations were released, or its sender went quiet.

DICOM has no "end of study" message. Two signals stand in for one:

- **Release.** A study whose instances all came over associations that have since been
  *released* (A-RELEASE, the sender's "I am done") is complete ``release_grace_seconds``
  after the last of them ended, unless another instance arrives in the meantime (a new
  association carrying it restarts the wait once it ends too). An association that was
  aborted or whose connection dropped does not count as done: the sender will send again,
  so such a study waits for the quiet period.
- **Quiet period** (always, the fallback). A study with no new instance for
  ``quiet_seconds`` is complete whatever its associations do: senders that spread a study
  over many associations, senders whose release means nothing (``touch`` without a
  carrier: the SCP's quiet-only calling AEs), and studies resumed after a restart, whose
  association state is gone.

Pure bookkeeping (no threads, no I/O, no pynetdicom) so it is easy to test with a fake
clock; the SCP reports instances and association ends and polls ``due()``. A *carrier* is
any hashable token for one association (the SCP uses pynetdicom's ``Association``).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from enum import Enum

__all__ = ["AssociationEnd", "CompletionTracker", "Reason"]


class AssociationEnd(Enum):
    """How an association that carried instances ended."""

    RELEASED = "released"  # A-RELEASE: the sender says it is done
    ABORTED = "aborted"  # A-ABORT / A-P-ABORT: it will send again
    CLOSED = "closed"  # connection closed with no release seen (yet): treated as aborted


class Reason(Enum):
    """Why ``due_with_reasons`` found a study complete."""

    FORCED = "forced"
    RELEASED = "released"
    QUIET = "quiet"


def _check_seconds(name: str, value: float) -> float:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


@dataclass
class _Carrier:
    studies: set[str] = field(default_factory=set)
    end: AssociationEnd | None = None  # None: still open
    ended_at: float = 0.0


@dataclass
class _Study:
    last: float
    carriers: set[Hashable] = field(default_factory=set)
    quiet_only: bool = False  # activity without association knowledge: quiet period only
    forced: bool = False


class CompletionTracker:
    """Remembers each open study's last activity and the associations that carried it.

    ``release_grace_seconds=None`` turns the release signal off: every study waits for
    the quiet period. Thread-safe: the SCP's association threads report, its poller asks.
    """

    def __init__(
        self,
        quiet_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        release_grace_seconds: float | None = None,
    ) -> None:
        self.quiet_seconds = _check_seconds("quiet_seconds", quiet_seconds)
        self.release_grace_seconds = (
            None
            if release_grace_seconds is None
            else _check_seconds("release_grace_seconds", release_grace_seconds)
        )
        self._clock = clock
        self._studies: dict[str, _Study] = {}
        self._carriers: dict[Hashable, _Carrier] = {}
        self._lock = threading.Lock()

    # -- reports -------------------------------------------------------------------------

    def touch(
        self, study_uid: str, at: float | None = None, *, carrier: Hashable | None = None
    ) -> None:
        """Record activity on ``study_uid`` at ``at`` (clock time, default now).

        ``carrier`` is the association the instance came over; without one (a study resumed
        from the spool, a sender whose release means nothing) the study completes only by
        the quiet period.
        """
        when = self._clock() if at is None else at
        with self._lock:
            study = self._studies.get(study_uid)
            if study is None:
                study = self._studies[study_uid] = _Study(last=when)
            # Never move a study's activity backwards (e.g. a late seed at start-up).
            study.last = max(study.last, when)
            if carrier is None or self.release_grace_seconds is None:
                study.quiet_only = True
                return
            state = self._carriers.get(carrier)
            if state is None:
                state = self._carriers[carrier] = _Carrier()
            state.studies.add(study_uid)
            study.carriers.add(carrier)

    def association_ended(
        self, carrier: Hashable, end: AssociationEnd, at: float | None = None
    ) -> None:
        """Record the end of association ``carrier``; unknown carriers are ignored.

        An association may be reported more than once (pynetdicom signals the release, then
        the closed connection): a release or abort settles it, a bare close only stands
        until one of them arrives, and an abort is never undone.
        """
        when = self._clock() if at is None else at
        with self._lock:
            state = self._carriers.get(carrier)
            if state is None:
                return
            if state.end is AssociationEnd.ABORTED:
                return
            if state.end is AssociationEnd.RELEASED and end is not AssociationEnd.ABORTED:
                return
            if state.end is None:
                state.ended_at = when
            state.end = end

    def force(self, study_uid: str) -> None:
        """Make ``study_uid`` due at the next ``due()`` call, quiet or not."""
        with self._lock:
            study = self._studies.get(study_uid)
            if study is None:
                study = self._studies[study_uid] = _Study(last=self._clock())
            study.forced = True

    # -- questions -----------------------------------------------------------------------

    def due(self, now: float | None = None) -> list[str]:
        """Return and forget the studies that are complete, oldest activity first."""
        return [uid for uid, _ in self.due_with_reasons(now)]

    def due_with_reasons(self, now: float | None = None) -> list[tuple[str, Reason]]:
        """``due()`` with why each study is complete."""
        current = self._clock() if now is None else now
        with self._lock:
            ready: list[tuple[str, Reason]] = []
            for uid, study in self._studies.items():
                reason = self._reason(study, current)
                if reason is not None:
                    ready.append((uid, reason))
            ready.sort(key=lambda item: self._studies[item[0]].last)
            for uid, _ in ready:
                self._forget(uid)
        return ready

    def pending(self) -> dict[str, float]:
        """Study UID -> last activity (clock time) of every study not yet due."""
        with self._lock:
            return {uid: study.last for uid, study in self._studies.items()}

    def open_associations(self) -> int:
        """Associations that carried instances of a pending study and have not ended."""
        with self._lock:
            return sum(1 for c in self._carriers.values() if c.end is None)

    # -- internals (under the lock) ------------------------------------------------------

    def _reason(self, study: _Study, now: float) -> Reason | None:
        if study.forced:
            return Reason.FORCED
        if now - study.last >= self.quiet_seconds:
            return Reason.QUIET
        grace = self.release_grace_seconds
        if grace is None or study.quiet_only or not study.carriers:
            return None
        ends = [self._carriers[c] for c in study.carriers]
        if any(c.end is not AssociationEnd.RELEASED for c in ends):
            return None  # one still open, aborted, or closed without a release
        quiet_since = max(study.last, *(c.ended_at for c in ends))
        return Reason.RELEASED if now - quiet_since >= grace else None

    def _forget(self, study_uid: str) -> None:
        study = self._studies.pop(study_uid)
        for carrier in study.carriers:
            state = self._carriers[carrier]
            state.studies.discard(study_uid)
            if not state.studies:
                del self._carriers[carrier]
