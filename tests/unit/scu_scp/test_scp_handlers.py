"""C-STORE handler failure paths that a well-behaved client cannot provoke."""

from __future__ import annotations

import errno
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from pydicom.dataset import Dataset

from scu_scp.completion import CompletionTracker
from scu_scp.scp import _Receiver, handle_store
from scu_scp.spool import Spool

RAW = b"\x00" * 128 + b"DICM" + b"not really a dataset"


class FakeEvent:
    """Just what handle_store reads from a pynetdicom Event."""

    def __init__(self, dataset: Any) -> None:
        self.assoc = SimpleNamespace(requestor=SimpleNamespace(ae_title="PACS", address="10.1.1.1"))
        self._dataset = dataset

    @property
    def dataset(self) -> Dataset:
        if isinstance(self._dataset, Exception):
            raise self._dataset
        return self._dataset  # type: ignore[no-any-return]

    def encoded_dataset(self) -> bytes:
        return RAW


def _valid() -> Dataset:
    ds = Dataset()
    ds.StudyInstanceUID = "1.2.3"
    ds.SeriesInstanceUID = "1.2.3.4"
    ds.SOPInstanceUID = "1.2.3.4.5"
    return ds


class FullDiskSpool(Spool):
    def store(self, data: bytes, **kwargs: str) -> Path:  # type: ignore[override]
        raise OSError(errno.ENOSPC, "No space left on device")


def test_undecodable_dataset_is_quarantined(tmp_path: Path) -> None:
    receiver = _Receiver(Spool(tmp_path), CompletionTracker(1))

    status = handle_store(FakeEvent(NotImplementedError("broken element")), receiver)

    assert status == 0xC210
    (data,) = (tmp_path / "quarantine").glob("*.dcm")
    assert data.read_bytes() == RAW
    (reason,) = (tmp_path / "quarantine").glob("*.reason.json")
    assert "cannot decode dataset" in json.loads(reason.read_text())["reason"]
    assert receiver.tracker.pending() == {}


def test_disk_failure_answers_out_of_resources(tmp_path: Path) -> None:
    receiver = _Receiver(FullDiskSpool(tmp_path), CompletionTracker(1))

    status = handle_store(FakeEvent(_valid()), receiver)

    assert status == 0xA700
    assert receiver.tracker.pending() == {}
    assert list((tmp_path / "quarantine").iterdir()) == []


def test_success_touches_tracker(tmp_path: Path) -> None:
    receiver = _Receiver(Spool(tmp_path), CompletionTracker(1))

    status = handle_store(FakeEvent(_valid()), receiver)

    assert status == 0x0000
    assert list(receiver.tracker.pending()) == ["1.2.3"]
    assert (tmp_path / "incoming/1.2.3/1.2.3.4/1.2.3.4.5.dcm").read_bytes() == RAW
