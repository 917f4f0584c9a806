"""From a sealed study to a queued job: the SCP's completion callback."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import pydicom
from pydicom.errors import InvalidDicomError

from scu_scp.models import SpooledStudy
from scu_scp.spool import Spool
from worker.jobs.store import Job, JobState, JobStore

log = logging.getLogger(__name__)


def read_accession_number(spool: Spool, study: SpooledStudy) -> str:
    """The accession number of the first readable instance ('' if none carries one)."""
    for path in spool.instance_paths(study):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["AccessionNumber"])
        except (InvalidDicomError, OSError, ValueError):
            continue
        return str(ds.get("AccessionNumber", "") or "")
    return ""


class Dispatcher:
    """Records a job for each sealed study and queues it; both steps are idempotent."""

    def __init__(self, store: JobStore, spool: Spool, enqueue: Callable[[str], None]) -> None:
        self._store = store
        self._spool = spool
        self._enqueue = enqueue
        # The SCP's completion thread and the recovery loop may dispatch the same study at
        # once; one at a time, or both see "received" and queue it twice.
        self._lock = threading.RLock()

    def dispatch(self, study: SpooledStudy) -> Job:
        with self._lock:
            return self._dispatch(study)

    def _dispatch(self, study: SpooledStudy) -> Job:
        job = self._store.create(
            job_id=study.batch_id,
            study_uid=study.study_uid,
            accession_number=read_accession_number(self._spool, study),
            calling_ae=study.calling_ae,
            spool_path=str(study.path),
            instance_count=study.instance_count,
            received_at=study.last_received,
        )
        if job.state is JobState.RECEIVED:
            # If this raises (broker down), the job stays "received" and recover() queues it.
            self._enqueue(job.id)
            job = self._store.mark_queued(job.id)
            log.info(
                "job %s queued: study %s, accession %s, %d instances from %s",
                job.id,
                job.study_uid,
                job.accession_number,
                job.instance_count,
                job.calling_ae,
            )
        return job

    def recover(self) -> int:
        """Queue sealed studies that have no queued job yet (after a crash or broker outage)."""
        count = 0
        with self._lock:
            for study in self._spool.sealed():
                job = self._store.find(study.batch_id)
                if job is None or job.state is JobState.RECEIVED:
                    self._dispatch(study)
                    count += 1
        if count:
            log.info("recovered %d sealed studies without a queued job", count)
        return count
