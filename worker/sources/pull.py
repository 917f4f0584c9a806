"""Pulling studies from DICOMweb sources: fetch by WADO-RS into the spool and queue a job.

:func:`pull_study` is what the poller calls, and :func:`annotate_from_source` what the CLI
(``annotate --source``) and the admin API call: the study lands in the spool with the
durability of a received one (fsynced, then sealed) and becomes a job exactly like a study
the SCP completed.
"""

from __future__ import annotations

import logging
import secrets
import shutil
from urllib.parse import urlsplit

from scu_scp.dicomweb import FetchError, fetch_study
from scu_scp.models import SpooledStudy
from scu_scp.redact import redact_credentials
from scu_scp.spool import Spool, validate_uid
from worker.config import Settings
from worker.delivery.senders import web_endpoint
from worker.jobs.broker import EnqueueError
from worker.jobs.dispatch import Dispatcher
from worker.jobs.store import Job, JobStore
from worker.run.celery_app import job_enqueuer

log = logging.getLogger(__name__)

#: Folder under the spool root where fetched studies are staged until complete.
STAGING_DIR = "pulls"

__all__ = ["PullError", "annotate_from_source", "fetch_into_spool", "pull_study"]


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
                    f"{redact_credentials(where.url)} answered study {study_uid} with an "
                    f"instance of study {instance.study_uid!r} ({instance.sop_uid})"
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


def annotate_from_source(settings: Settings, source_name: str, study_uid: str) -> Job:
    """What ``annotate --source`` and the admin API do: pull one study and queue its job.

    The broker is ``broker_url``, else the embedded one a running ``up`` published. If it
    cannot be reached the job stays "received" and the service queues it when it recovers.
    """
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = JobStore(settings.effective_database_url)
    try:
        spool = Spool(settings.spool_dir)
        enqueue = job_enqueuer(settings, spool)
        sealed = fetch_into_spool(settings, source_name, study_uid, spool=spool)
        try:
            return Dispatcher(store, spool, enqueue).dispatch(sealed)
        except (EnqueueError, OSError) as exc:
            log.warning("job %s recorded but not queued yet: %s", sealed.batch_id, exc)
            return store.get(sealed.batch_id)
    finally:
        store.close()
