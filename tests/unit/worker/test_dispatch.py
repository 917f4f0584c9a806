from __future__ import annotations

import io
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from scu_scp.models import SpooledStudy
from scu_scp.spool import Spool
from worker.dispatch import Dispatcher
from worker.jobs import JobState, JobStore


def _instance_bytes(study_uid: str, series_uid: str, sop_uid: str) -> bytes:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.AccessionNumber = "ACC42"
    ds.Modality = "CT"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def sealed_study(spool: Spool, n: int = 2) -> SpooledStudy:
    study, series = generate_uid(), generate_uid()
    for _ in range(n):
        sop = generate_uid()
        spool.store(
            _instance_bytes(study, series, sop),
            study_uid=study,
            series_uid=series,
            sop_uid=sop,
            calling_ae="ORTHANC",
            calling_host="127.0.0.1",
        )
    sealed = spool.seal(study)
    assert sealed is not None
    return sealed


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
