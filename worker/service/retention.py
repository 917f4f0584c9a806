"""The purge on a schedule inside ``up``/``scp``, and early under disk pressure.

The SCP must never be the one to find the disk full: free space is looked at every second
(a statvfs call), and below ``retention.pressure_free_bytes`` the purge runs at once (it
then also removes delivered data before it expires, oldest first). While the disk stays
short, the worker frees each job's received images the moment it is delivered
(``Purger.release_delivered_inputs``), so room reaches a backlog without waiting for the
next look here. Otherwise it runs every
``retention.purge_interval_seconds``. It runs in a thread of its own, so a long removal
never delays the SCP process's controls or its recovery loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from sqlalchemy.exc import SQLAlchemyError

from scu_scp.admission import free_disk_bytes
from worker.config import Settings
from worker.jobs.retention import PurgeReport

log = logging.getLogger(__name__)

#: How often free space is compared with the pressure threshold.
PRESSURE_CHECK_SECONDS = 1.0
#: Under pressure with nothing left to free, the purge is tried again this often, not more.
PRESSURE_RETRY_SECONDS = 30.0


class RunsPurge(Protocol):
    def run(self, *, dry_run: bool = False, actor: str = "purge") -> PurgeReport: ...


class PurgeSchedule:
    """Decides when the purge runs; ``step`` is one look (tests call it with their clock)."""

    def __init__(
        self,
        purger: RunsPurge,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.monotonic,
        free_bytes: Callable[[Path], int] = free_disk_bytes,
    ) -> None:
        self._purger = purger
        self._interval = settings.retention.purge_interval_seconds
        self._threshold = settings.retention.effective_pressure_free_bytes(
            settings.scp.min_free_disk_bytes
        )
        self._spool_dir = settings.spool_dir
        self._clock = clock
        self._free_bytes = free_bytes
        self._last_run: float | None = None
        self._last_check = float("-inf")
        self.short_of_space = False  # under pressure after the last purge: nothing to free

    def _under_pressure(self, now: float) -> bool:
        if not self._threshold or now - self._last_check < PRESSURE_CHECK_SECONDS:
            return False
        self._last_check = now
        return self._free_bytes(self._spool_dir) < self._threshold

    def due(self) -> bool:
        now = self._clock()
        if self._last_run is None:
            return bool(self._interval) or self._under_pressure(now)
        since = now - self._last_run
        if self._interval and since >= self._interval:
            return True
        retry = PRESSURE_RETRY_SECONDS if self.short_of_space else PRESSURE_CHECK_SECONDS
        return since >= retry and self._under_pressure(now)

    def step(self) -> PurgeReport | None:
        """Run the purge if it is due; a failure is logged and tried again next time."""
        if not self.due():
            return None
        self._last_run = self._clock()
        try:
            report = self._purger.run(actor="scheduled purge")
        except (OSError, SQLAlchemyError) as exc:
            log.warning("purge failed (%s: %s); will try again", type(exc).__name__, exc)
            return None
        free = report.free_bytes
        self.short_of_space = bool(report.pressure and free is not None and self._threshold)
        if self.short_of_space:
            freed = sum(i.bytes for i in report.items)
            if free is not None and free + freed < self._threshold:
                log.warning(
                    "disk pressure: %d bytes free after the purge, %d wanted; the rest is "
                    "held by data the purge may not remove (see the dashboard)",
                    free + freed,
                    self._threshold,
                )
            else:
                self.short_of_space = False
        return report

    def run_until(self, stop: threading.Event, tick: float = 1.0) -> None:
        while not stop.is_set():
            self.step()
            stop.wait(tick)


def start_purge_thread(schedule: PurgeSchedule, stop: threading.Event) -> threading.Thread:
    """The schedule in a daemon thread (a removal in progress never holds up shutdown)."""
    thread = threading.Thread(target=schedule.run_until, args=(stop,), name="purge", daemon=True)
    thread.start()
    return thread
