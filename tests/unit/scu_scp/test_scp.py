"""StorageSCP against real clients: dcmtk storescu/echoscu and pynetdicom."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from scu_scp.models import DicomNode, SpooledStudy
from scu_scp.scp import StorageSCP
from scu_scp.scu import send_files
from scu_scp.spool import Spool
from tests.conftest import shared_data_path
from tests.support.edge import AE_TITLE, ScpFactory, start_scp
from tests.support.storescp import ct_files, dataset_bytes, dcmtk_tool, wait_for

__all__ = ["start_scp"]  # fixture
CT_STUDY = "1.3.6.1.4.1.14519.5.2.1.9203.8273.319461848560755521018609264462"


class Recorder:
    """on_complete callback that records calls; can fail its first ``fail_first`` calls."""

    def __init__(self, fail_first: int = 0) -> None:
        self.calls: list[SpooledStudy] = []
        self.fail_first = fail_first
        self.lock = threading.Lock()

    def __call__(self, study: SpooledStudy) -> None:
        with self.lock:
            self.calls.append(study)
            if len(self.calls) <= self.fail_first:
                raise RuntimeError("queue unavailable")


@pytest.fixture
def make_scp(start_scp: ScpFactory) -> ScpFactory:
    """An SCP handing sealed studies to ``on_complete``, quiet for 1 s unless told."""

    def factory(on_complete: Callable[[SpooledStudy], None], **kwargs: object) -> StorageSCP:
        return start_scp(on_complete=on_complete, **{"quiet_seconds": 1.0, **kwargs})

    return factory


def storescu(port: int, files: list[Path], *options: str) -> None:
    result = subprocess.run(
        [
            dcmtk_tool("storescu"),
            *options,
            "-aet",
            "PACS",
            "-aec",
            AE_TITLE,
            "127.0.0.1",
            str(port),
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def spooled_files(root: Path) -> dict[str, Path]:
    return {p.stem: p for p in root.rglob("*.dcm") if "quarantine" not in p.parts}


def test_echo_with_echoscu(make_scp: ScpFactory) -> None:
    scp = make_scp(Recorder())
    result = subprocess.run(
        [dcmtk_tool("echoscu"), "-aet", "PACS", "-aec", AE_TITLE, "127.0.0.1", str(scp.port)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_ct_series_from_storescu_is_spooled_and_completed_once(
    make_scp: ScpFactory, ct_series_dir: Path, tmp_path: Path
) -> None:
    recorder = Recorder()
    scp = make_scp(recorder)
    files = ct_files(ct_series_dir)

    storescu(scp.port, files)

    assert wait_for(lambda: bool(recorder.calls), timeout=10)
    assert scp.tracker.pending() == {}  # nothing left that a later poll could hand over
    scp.poll_once()
    assert len(recorder.calls) == 1
    study = recorder.calls[0]
    assert study.study_uid == CT_STUDY
    assert study.instance_count == 41
    assert study.calling_ae == "PACS"
    assert study.calling_host == "127.0.0.1"
    stored = {p.stem: p for p in Spool.instance_paths(study)}
    for source in files:
        original = dcmread(source, stop_before_pixels=True)
        copy = stored[original.SOPInstanceUID]
        assert copy.parent.name == original.SeriesInstanceUID
        # storescu re-encodes sequence lengths, so compare content; bytes: see next test.
        assert dcmread(copy) == dcmread(source)
        meta = dcmread(copy, stop_before_pixels=True).file_meta
        assert meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
        assert meta.MediaStorageSOPInstanceUID == original.SOPInstanceUID
    assert not (tmp_path / "spool" / "incoming" / CT_STUDY).exists()


@pytest.mark.parametrize(
    ("syntax", "option"),
    [(JPEGLSLossless, "-xt"), (JPEG2000Lossless, "-xv"), (RLELossless, "-xr")],
)
def test_compressed_instances_are_stored_as_sent(
    make_scp: ScpFactory, ct_series_dir: Path, tmp_path: Path, syntax: UID, option: str
) -> None:
    recorder = Recorder()
    scp = make_scp(recorder, quiet_seconds=60)
    copies = []
    for n, source in enumerate(ct_files(ct_series_dir)[:2]):
        ds = dcmread(source)
        ds.compress(syntax)  # pydicom 3: a new SOPInstanceUID, as for a real lossy copy
        copy = tmp_path / f"compressed-{n}.dcm"
        ds.save_as(copy, enforce_file_format=True)
        copies.append(copy)

    storescu(scp.port, copies, option)

    stored = spooled_files(tmp_path / "spool")
    assert len(stored) == 2
    for copy in copies:
        sop_uid = dcmread(copy, stop_before_pixels=True).SOPInstanceUID
        assert (
            dcmread(stored[sop_uid], stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax
        )
        received, sent = dcmread(stored[sop_uid]), dcmread(copy)
        assert received == sent
        assert received.PixelData == sent.PixelData
    assert recorder.calls == []


def test_instances_are_stored_byte_for_byte(
    make_scp: ScpFactory, ct_series_dir: Path, tmp_path: Path
) -> None:
    """pynetdicom sends the encoded dataset unchanged: the spool must keep every byte."""
    scp = make_scp(Recorder(), quiet_seconds=60)
    files = (
        ct_files(ct_series_dir)[:5] + sorted(shared_data_path("mr-brain-t1-sag").glob("*.dcm"))[:3]
    )

    result = send_files(DicomNode(AE_TITLE, "127.0.0.1", scp.port), files, calling_ae="PACS")

    assert result.ok, result.failed
    stored = spooled_files(tmp_path / "spool")
    assert len(stored) == len(files)
    for source in files:
        sop_uid = dcmread(source, stop_before_pixels=True).SOPInstanceUID
        assert dataset_bytes(stored[sop_uid]) == dataset_bytes(source)


def test_deflated_transfer_is_stored_decodable(
    make_scp: ScpFactory, ct_series_dir: Path, tmp_path: Path
) -> None:
    scp = make_scp(Recorder(), quiet_seconds=60)
    source = ct_files(ct_series_dir)[0]

    storescu(scp.port, [source], "-xd")

    (stored,) = spooled_files(tmp_path / "spool").values()
    copy = dcmread(stored)
    assert copy.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    assert (copy.pixel_array == dcmread(source).pixel_array).all()


def _ct_like(**uids: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CT"
    for keyword, value in uids.items():
        setattr(ds, keyword, value)
    return ds


def _pynetdicom_store(port: int, ds: Dataset) -> int:
    ae = AE(ae_title="PACS")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title=AE_TITLE)
    assert assoc.is_established
    try:
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
    return int(status.Status)


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
@pytest.mark.parametrize(
    ("uids", "reason"),
    [({}, "missing StudyInstanceUID"), ({"StudyInstanceUID": "../../x"}, "not a valid DICOM UID")],
)
def test_unfileable_dataset_is_quarantined_not_acknowledged(
    make_scp: ScpFactory, tmp_path: Path, uids: dict[str, str], reason: str
) -> None:
    recorder = Recorder()
    scp = make_scp(recorder, quiet_seconds=0.2)

    status = _pynetdicom_store(scp.port, _ct_like(**uids))

    assert status == 0xC210
    quarantine = tmp_path / "spool" / "quarantine"
    (data,) = quarantine.glob("*.dcm")
    (reason_file,) = quarantine.glob("*.reason.json")
    assert reason in reason_file.read_text()
    assert dcmread(data).Modality == "CT"
    assert spooled_files(tmp_path / "spool") == {}
    assert not (tmp_path / "x").exists()
    assert scp.tracker.pending() == {}  # nothing is waiting to complete
    scp.poll_once()
    assert recorder.calls == []


def test_completion_resumes_after_restart(
    make_scp: ScpFactory, ct_series_dir: Path, tmp_path: Path
) -> None:
    first_run = Recorder()
    scp = make_scp(first_run, quiet_seconds=30)
    storescu(scp.port, ct_files(ct_series_dir)[:5])
    scp.stop()
    assert first_run.calls == []

    second_run = Recorder()
    make_scp(second_run, quiet_seconds=1.0)

    assert wait_for(lambda: bool(second_run.calls), timeout=10)
    assert [(s.study_uid, s.instance_count) for s in second_run.calls] == [(CT_STUDY, 5)]


def test_failing_on_complete_is_retried_and_study_kept(
    make_scp: ScpFactory, ct_series_dir: Path
) -> None:
    recorder = Recorder(fail_first=1)
    scp = make_scp(recorder, quiet_seconds=0.2, retry_initial=0.2)
    storescu(scp.port, ct_files(ct_series_dir)[:3])

    assert wait_for(lambda: len(recorder.calls) >= 2, timeout=10)
    first, second = recorder.calls[:2]
    assert first == second
    assert len(Spool.instance_paths(second)) == 3


def test_force_complete_skips_quiet_period(make_scp: ScpFactory, ct_series_dir: Path) -> None:
    recorder = Recorder()
    scp = make_scp(recorder, quiet_seconds=3600)
    storescu(scp.port, ct_files(ct_series_dir)[:2])

    scp.force_complete(CT_STUDY)

    assert wait_for(lambda: bool(recorder.calls), timeout=5)
    assert recorder.calls[0].instance_count == 2


def test_paused_scp_answers_out_of_resources(make_scp: ScpFactory, tmp_path: Path) -> None:
    scp = make_scp(Recorder())
    scp.paused = True

    status = _pynetdicom_store(scp.port, _ct_like(StudyInstanceUID=generate_uid()))

    assert status == 0xA700
    assert spooled_files(tmp_path / "spool") == {}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ae_title": ""}, "ae_title"),
        ({"ae_title": "X" * 17}, "ae_title"),
        ({"port": 70000}, "port"),
        ({"poll_interval": 0}, "poll_interval"),
        ({"quiet_seconds": -1}, "quiet_seconds"),
    ],
)
def test_bad_settings_refused(tmp_path: Path, kwargs: dict[str, object], match: str) -> None:
    options: dict[str, object] = {
        "ae_title": AE_TITLE,
        "host": "127.0.0.1",
        "port": 0,
        "quiet_seconds": 1.0,
    }
    options.update(kwargs)
    with pytest.raises(ValueError, match=match):
        StorageSCP(spool=Spool(tmp_path), on_complete=Recorder(), **options)  # type: ignore[arg-type]
