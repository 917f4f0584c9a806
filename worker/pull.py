"""Pulling studies from DICOMweb sources: fetch by WADO-RS into the spool and queue a job.

One function, :func:`pull_study`, is what the CLI (``annotate --source``), the poller and
the admin API call: the study lands in the spool with the durability of a received one
(fsynced, then sealed) and becomes a job exactly like a study the SCP completed.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import threading
from collections.abc import Callable, Mapping
from datetime import date, timedelta
from urllib.parse import urlsplit

from kombu.exceptions import OperationalError

from scu_scp.dicomweb import FetchError, fetch_study, search_studies
from scu_scp.models import SpooledStudy
from scu_scp.spool import Spool, validate_uid
from worker.delivery_rules import web_endpoint
from worker.dicomweb_settings import DicomwebSource, PollSettings
from worker.dispatch import Dispatcher
from worker.jobs import Job, JobStore
from worker.settings import Settings

log = logging.getLogger(__name__)

#: Folder under the spool root where fetched studies are staged until complete.
STAGING_DIR = "pulls"

__all__ = ["PullError", "StudyPoller", "pull_study", "qido_filters"]


class PullError(Exception):
    """A study could not be pulled: unknown source, bad UID, or the archive refused."""


def pull_study(
    settings: Settings, source_name: str, study_uid: str, *, spool: Spool, dispatcher: Dispatcher
) -> Job:
    """Fetch ``study_uid`` from source ``source_name`` into the spool, seal it, make a job.

    The job's calling AE is the source name, so delivery follows the source's
    ``deliver_to`` (or the delivery rules naming it). Raises :class:`PullError`.
    """
    return dispatcher.dispatch(fetch_into_spool(settings, source_name, study_uid, spool=spool))


def fetch_into_spool(
    settings: Settings, source_name: str, study_uid: str, *, spool: Spool
) -> SpooledStudy:
    """WADO-RS every instance of the study into the spool (fsynced), then seal it.

    Instances are staged in a spool of their own under ``spool/pulls/`` and the sealed batch
    renamed into ``spool/studies/``: the SCP never sees a half-fetched study as received,
    and another process (the CLI) never writes into the SCP's incoming folders.
    """
    source = settings.sources.get(source_name)
    if source is None:
        known = ", ".join(sorted(settings.sources)) or "none configured"
        raise PullError(f"unknown source {source_name!r} (known: {known})")
    try:
        validate_uid(study_uid, "Study Instance UID")
    except ValueError as exc:
        raise PullError(str(exc)) from exc
    where = web_endpoint(source, settings.delivery.timeout_seconds)
    host = urlsplit(where.url).hostname or ""
    staging_root = spool.root / STAGING_DIR / secrets.token_hex(8)
    staging = Spool(staging_root)
    count = 0
    try:
        for instance in fetch_study(where, study_uid):
            if instance.study_uid != study_uid:
                raise PullError(
                    f"{where.url} answered study {study_uid} with an instance of study "
                    f"{instance.study_uid!r} ({instance.sop_uid})"
                )
            staging.store(
                instance.data,
                study_uid=study_uid,
                series_uid=instance.series_uid,
                sop_uid=instance.sop_uid,
                calling_ae=source_name,
                calling_host=host,
            )
            count += 1
        staged = staging.seal(study_uid)
        if staged is None:  # pragma: no cover - fetch_study raises when there is nothing
            raise PullError(f"study {study_uid}: nothing to seal after fetching {count} instances")
        sealed = spool.adopt(staged)
    except FetchError as exc:
        raise PullError(f"source {source_name}: {exc}") from exc
    except ValueError as exc:  # an instance UID unusable as a path: refuse the study
        raise PullError(f"source {source_name}, study {study_uid}: {exc}") from exc
    finally:
        # A failed fetch leaves nothing behind: the study is still in the archive.
        shutil.rmtree(staging_root, ignore_errors=True)
    log.info("pulled study %s from %s: %d instances", study_uid, source_name, count)
    return sealed


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
            except (OperationalError, OSError) as exc:
                # The job is recorded as received; the service's recovery queues it.
                log.warning("poll of %s: study %s not queued yet (%s)", name, uid, exc)
        return jobs

    def _run(self, name: str, interval: float) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once(name)
            except FetchError as exc:
                log.warning("poll of %s failed: %s; will try again", name, exc)
            except (OperationalError, OSError) as exc:  # spool disk or broker: keep polling
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


def annotate_from_source(settings: Settings, source_name: str, study_uid: str) -> Job:
    """What ``annotate --source`` and the admin API do: pull one study and queue its job.

    The broker is ``broker_url``, else the embedded one a running ``up`` published. If it
    cannot be reached the job stays "received" and the service queues it when it recovers.
    """
    from worker.celery_app import job_enqueuer

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = JobStore(settings.effective_database_url)
    try:
        spool = Spool(settings.spool_dir)
        enqueue = job_enqueuer(settings, spool)
        sealed = fetch_into_spool(settings, source_name, study_uid, spool=spool)
        try:
            return Dispatcher(store, spool, enqueue).dispatch(sealed)
        except (OperationalError, OSError) as exc:
            log.warning("job %s recorded but not queued yet: %s", sealed.batch_id, exc)
            return store.get(sealed.batch_id)
    finally:
        store.close()
