"""Decides when a study is complete: no new instance for a quiet period.

DICOM has no "end of study" message, so a study is complete once the sender has been quiet
for ``quiet_seconds``. Pure bookkeeping (no threads, no I/O) so it is easy to test with a
fake clock; the SCP polls ``due()``.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

__all__ = ["CompletionTracker"]


class CompletionTracker:
    """Remembers the last activity time of each open study; thread-safe."""

    def __init__(self, quiet_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        if not math.isfinite(quiet_seconds) or quiet_seconds < 0:
            raise ValueError(f"quiet_seconds must be a finite number >= 0, got {quiet_seconds!r}")
        self.quiet_seconds = float(quiet_seconds)
        self._clock = clock
        self._last: dict[str, float] = {}
        self._forced: set[str] = set()
        self._lock = threading.Lock()

    def touch(self, study_uid: str, at: float | None = None) -> None:
        """Record activity on ``study_uid`` at ``at`` (clock time, default now)."""
        when = self._clock() if at is None else at
        with self._lock:
            previous = self._last.get(study_uid)
            # Never move a study's activity backwards (e.g. a late seed at start-up).
            self._last[study_uid] = when if previous is None else max(previous, when)

    def force(self, study_uid: str) -> None:
        """Make ``study_uid`` due at the next ``due()`` call, quiet or not."""
        with self._lock:
            self._last.setdefault(study_uid, self._clock())
            self._forced.add(study_uid)

    def due(self, now: float | None = None) -> list[str]:
        """Return and forget studies quiet for at least ``quiet_seconds``, oldest first."""
        current = self._clock() if now is None else now
        with self._lock:
            ready = [
                uid
                for uid, last in self._last.items()
                if uid in self._forced or current - last >= self.quiet_seconds
            ]
            ready.sort(key=lambda uid: self._last[uid])
            for uid in ready:
                del self._last[uid]
                self._forced.discard(uid)
        return ready

    def pending(self) -> dict[str, float]:
        """Study UID -> last activity (clock time) of every study not yet due."""
        with self._lock:
            return dict(self._last)
