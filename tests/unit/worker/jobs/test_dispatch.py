from __future__ import annotations

from pathlib import Path

import pytest

from scu_scp.spool import Spool
from tests.support.jobs import sealed_study
from worker.jobs.dispatch import Dispatcher
from worker.jobs.store import JobState, JobStore


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool")


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    return JobStore(f"sqlite:///{tmp_path / 'jobs.sqlite3'}")


def test_dispatch_records_and_queues_once(spool: Spool, store: JobStore) -> None:
    queued: list[str] = []
    dispatcher = Dispatcher(store, spool, queued.append)
    study = sealed_study(spool)
    job = dispatcher.dispatch(study)
    assert job.state is JobState.QUEUED
    assert (job.study_uid, job.accession_number, job.calling_ae) == (
        study.study_uid,
        "ACC42",
        "ORTHANC",
    )
    assert job.instance_count == 2
    dispatcher.dispatch(study)  # e.g. the SCP retrying its callback
    assert queued == [job.id]


def test_broker_down_leaves_job_received_and_recover_queues_it(
    spool: Spool, store: JobStore
) -> None:
    def broker_down(_job_id: str) -> None:
        raise ConnectionError("redis is down")

    study = sealed_study(spool)
    with pytest.raises(ConnectionError):
        Dispatcher(store, spool, broker_down).dispatch(study)
    assert store.get(study.batch_id).state is JobState.RECEIVED

    queued: list[str] = []
    assert Dispatcher(store, spool, queued.append).recover() == 1
    assert queued == [study.batch_id]
    assert store.get(study.batch_id).state is JobState.QUEUED
    assert Dispatcher(store, spool, queued.append).recover() == 0


def test_recover_finds_sealed_study_without_job(spool: Spool, store: JobStore) -> None:
    # The process died between sealing the study and recording its job.
    study = sealed_study(spool)
    queued: list[str] = []
    assert Dispatcher(store, spool, queued.append).recover() == 1
    assert store.get(study.batch_id).study_uid == study.study_uid
