"""Polling DICOMweb sources by QIDO-RS: each matching study with no job yet is pulled once."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from datetime import date, timedelta

from scu_scp.dicomweb import FetchError, search_studies
from scu_scp.spool import Spool
from worker.config import DicomwebSource, PollSettings, Settings
from worker.delivery.senders import web_endpoint
from worker.jobs.broker import EnqueueError
from worker.jobs.dispatch import Dispatcher
from worker.jobs.store import Job, JobStore
from worker.sources.pull import PullError, pull_study

log = logging.getLogger(__name__)

__all__ = ["StudyPoller", "qido_filters"]


def qido_filters(poll: PollSettings, today: date) -> dict[str, str]:
    """The QIDO-RS search of one poll: modality, study date window, extra filters."""
    filters: dict[str, str] = {}
    if poll.modality:
        filters["ModalitiesInStudy"] = poll.modality
    if poll.study_date_days is not None:
        first = today - timedelta(days=poll.study_date_days)
        filters["StudyDate"] = f"{first:%Y%m%d}-{today:%Y%m%d}"
    filters.update(poll.filters)
    return filters


class StudyPoller:
    """Polls every source with ``poll`` set and pulls each new study once.

    "New" means no job in the job store has that Study Instance UID yet, whichever way it
    came (pulled, or pushed by C-STORE), so the poller needs no state of its own and a
    restart does not queue anything twice.
    """

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        spool: Spool,
        dispatcher: Dispatcher,
        *,
        today: Callable[[], date] = date.today,
    ) -> None:
        self._settings = settings
        self._store = store
        self._spool = spool
        self._dispatcher = dispatcher
        self._today = today
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.rounds = 0  # polls done by the threads, for monitoring and tests

    @property
    def polled(self) -> Mapping[str, DicomwebSource]:
        return {n: s for n, s in self._settings.sources.items() if s.poll is not None}

    def poll_once(self, name: str) -> list[Job]:
        """One QIDO-RS search of source ``name``; pulls and queues the studies not seen yet."""
        source = self._settings.sources[name]
        assert source.poll is not None
        where = web_endpoint(source, self._settings.delivery.timeout_seconds)
        uids = search_studies(where, qido_filters(source.poll, self._today()))
        new = [uid for uid in uids if not self._store.list(study_uid=uid, limit=1)]
        log.info("poll of %s: %d matching studies, %d new", name, len(uids), len(new))
        jobs = []
        for uid in new:
            try:
                jobs.append(
                    pull_study(
                        self._settings, name, uid, spool=self._spool, dispatcher=self._dispatcher
                    )
                )
            except PullError as exc:
                log.warning("poll of %s: %s; will try again next round", name, exc)
            except (EnqueueError, OSError) as exc:
                # The job is recorded as received; the service's recovery queues it.
                log.warning("poll of %s: study %s not queued yet (%s)", name, uid, exc)
        return jobs

    def _run(self, name: str, interval: float) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once(name)
            except FetchError as exc:
                log.warning("poll of %s failed: %s; will try again", name, exc)
            except (EnqueueError, OSError) as exc:  # spool disk or broker: keep polling
                log.error("poll of %s failed: %s; will try again", name, exc)
            self.rounds += 1
            self._stop.wait(interval)

    def start(self) -> None:
        for name, source in self.polled.items():
            assert source.poll is not None
            thread = threading.Thread(
                target=self._run,
                args=(name, source.poll.interval_seconds),
                name=f"poll-{name}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)
            log.info("polling %s every %.0f s", name, source.poll.interval_seconds)

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
        self._threads.clear()
