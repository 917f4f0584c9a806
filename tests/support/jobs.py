"""Jobs in tests: studies sealed in a spool as the SCP leaves them, a fake PACS, databases."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from scu_scp.models import DeliveryError, DeliveryResult, DicomNode, InstanceResult, SpooledStudy
from scu_scp.spool import Spool
from worker.config import Settings, load_settings
from worker.jobs.dispatch import Dispatcher
from worker.jobs.store import Job, JobStore
from worker.run.processing import Runtime

POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


class FakePacs:
    """Records what it receives; can be told to be down or to refuse instances."""

    def __init__(self) -> None:
        self.received: list[tuple[str, str]] = []
        self.down = False
        self.refuse = False

    def __call__(self, node: DicomNode, datasets: Sequence[Dataset]) -> DeliveryResult:
        if self.down:
            raise DeliveryError(f"cannot reach {node.host}:{node.port}: connection refused")
        status = 0xA700 if self.refuse else 0x0000
        results = tuple(
            InstanceResult(ds.SOPInstanceUID, ds.SOPClassUID, status, "out of resources")
            for ds in datasets
        )
        if not self.refuse:
            self.received += [(node.ae_title, ds.SOPInstanceUID) for ds in datasets]
        return DeliveryResult(node.ae_title, results)


def make_settings(tmp_path: Path, **extra: Any) -> Settings:
    return load_settings(
        None,
        data_dir=tmp_path / "data",
        destinations={"pacs": {"ae_title": "ORTHANC", "host": "127.0.0.1", "port": 4242}},
        **extra,
    )


class FakeRedis:
    """Queue lengths by key, or a broker that is down (``llen`` is all the monitor asks)."""

    def __init__(self, lists: dict[str, int], *, down: bool = False) -> None:
        self.lists = lists
        self.down = down

    def llen(self, key: str) -> int:
        if self.down:
            raise redis.ConnectionError("connection refused")
        return self.lists.get(key, 0)


def store_instances(spool: Spool, datasets: Sequence[Dataset], calling_ae: str = "PACS") -> None:
    """Store the datasets in the spool as the SCP would (still receiving, not sealed)."""
    for ds in datasets:
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        spool.store(
            buf.getvalue(),
            study_uid=ds.StudyInstanceUID,
            series_uid=ds.SeriesInstanceUID,
            sop_uid=ds.SOPInstanceUID,
            calling_ae=calling_ae,
            calling_host="127.0.0.1",
        )


def spool_study(rt: Runtime, datasets: Sequence[Dataset], calling_ae: str = "ORTHANC") -> str:
    """Store the datasets as the SCP would, seal the study and record its job; return its id."""
    store_instances(rt.spool, datasets, calling_ae)
    study = rt.spool.seal(datasets[0].StudyInstanceUID)
    assert study is not None
    return Dispatcher(rt.store, rt.spool, lambda _id: None).dispatch(study).id


def _instance_bytes(study_uid: str, series_uid: str, sop_uid: str) -> bytes:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
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


def postgres_url() -> Iterator[str]:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed")
    name = f"pa_test_{uuid.uuid4().hex[:8]}"
    try:
        admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as exc:
        pytest.skip(f"no PostgreSQL answers on 127.0.0.1:5432: {exc.orig}")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def settings_only_bundle(root: Path) -> Path:
    """A bundle directory that passes the settings check (config and weights present) and
    is never loaded: for tests of routing, queues and settings."""
    (root / "configs").mkdir(parents=True)
    (root / "configs" / "inference.json").write_text("{}")
    (root / "models").mkdir()
    (root / "models" / "model.pt").write_bytes(b"")
    return root


def create_job(store: JobStore, job_id: str, **fields: Any) -> Job:
    """A job row as the dispatcher records it, ``fields`` overriding the placeholders."""
    values: dict[str, Any] = {
        "study_uid": "1.2.3",
        "accession_number": "A1",
        "calling_ae": "PACS",
        "spool_path": "/nonexistent",
        "instance_count": 1,
        "received_at": datetime.now(UTC),
    }
    values.update(fields)
    return store.create(job_id=job_id, **values)


def delivered_study(spool: Spool, store: JobStore, finished_ago: timedelta) -> SpooledStudy:
    """A sealed study whose job is done and finished ``finished_ago`` (for retention)."""
    study = sealed_study(spool)
    store.create(
        job_id=study.batch_id,
        study_uid=study.study_uid,
        accession_number="A1",
        calling_ae="PACS",
        spool_path=str(study.path),
        instance_count=study.instance_count,
        received_at=datetime.now(UTC),
    )
    store.mark_done(study.batch_id, delivered=[])
    with store.engine.begin() as conn:
        conn.execute(
            text("UPDATE jobs SET finished_at = :t WHERE id = :id"),
            {"t": datetime.now(UTC) - finished_ago, "id": study.batch_id},
        )
    return study
