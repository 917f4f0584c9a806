"""C-STORE handler failure paths that a well-behaved client cannot provoke."""

from __future__ import annotations

import errno
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from scu_scp.completion import CompletionTracker
from scu_scp.scp import _Receiver, handle_store
from scu_scp.spool import Spool

RAW = b"\x00" * 128 + b"DICM" + b"not really a dataset"


class FakeEvent:
    """Just what handle_store reads from a pynetdicom Event: the file pynetdicom wrote."""

    def __init__(self, path: Path) -> None:
        self.assoc = SimpleNamespace(requestor=SimpleNamespace(ae_title="PACS", address="10.1.1.1"))
        self.context = SimpleNamespace(transfer_syntax=ExplicitVRLittleEndian)
        self.dataset_path = path


def _received(tmp_path: Path, data: bytes | None = None) -> Path:
    """A file as pynetdicom writes it (outside the spool), valid unless ``data`` is given."""
    path = tmp_path / "received.dcm"
    if data is not None:
        path.write_bytes(data)
        return path
    ds = Dataset()
    ds.StudyInstanceUID = "1.2.3"
    ds.SeriesInstanceUID = "1.2.3.4"
    ds.SOPInstanceUID = "1.2.3.4.5"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)
    return path


class FullDiskSpool(Spool):
    def store_file(self, received: Path, **kwargs: Any) -> Path:  # type: ignore[override]
        raise OSError(errno.ENOSPC, "No space left on device")


def test_undecodable_dataset_is_quarantined(tmp_path: Path) -> None:
    receiver = _Receiver(Spool(tmp_path), CompletionTracker(1))

    status = handle_store(FakeEvent(_received(tmp_path, RAW)), receiver)

    assert status == 0xC210
    (data,) = (tmp_path / "quarantine").glob("*.dcm")
    assert data.read_bytes() == RAW
    (reason,) = (tmp_path / "quarantine").glob("*.reason.json")
    assert "cannot decode dataset" in json.loads(reason.read_text())["reason"]
    assert receiver.tracker.pending() == {}


def test_disk_failure_answers_out_of_resources(tmp_path: Path) -> None:
    receiver = _Receiver(FullDiskSpool(tmp_path), CompletionTracker(1))

    status = handle_store(FakeEvent(_received(tmp_path)), receiver)

    assert status == 0xA700
    assert receiver.tracker.pending() == {}
    assert list((tmp_path / "quarantine").iterdir()) == []


def test_success_touches_tracker(tmp_path: Path) -> None:
    receiver = _Receiver(Spool(tmp_path), CompletionTracker(1))

    received = _received(tmp_path)
    sent = received.read_bytes()

    status = handle_store(FakeEvent(received), receiver)

    assert status == 0x0000
    assert list(receiver.tracker.pending()) == ["1.2.3"]
    assert (tmp_path / "incoming/1.2.3/1.2.3.4/1.2.3.4.5.dcm").read_bytes() == sent
    assert not received.exists()  # moved into the spool, not copied
