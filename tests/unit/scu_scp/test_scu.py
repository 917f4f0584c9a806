"""send_datasets/send_files against real receivers: dcmtk storescp and pynetdicom."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import JPEGLSLossless, UncompressedTransferSyntaxes
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from scu_scp.models import DeliveryError, DicomNode
from scu_scp.scu import send_datasets, send_files
from tests.conftest import shared_data_path
from tests.support.processes import free_port
from tests.support.storescp import StoreSCP, ct_files


def _sop_uids(paths: list[Path]) -> set[str]:
    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths}


def test_send_datasets_to_storescp(storescp: StoreSCP, ct_series_dir: Path) -> None:
    datasets = [dcmread(p) for p in ct_files(ct_series_dir)[:4]]
    node = DicomNode(storescp.ae_title, "127.0.0.1", storescp.port)

    result = send_datasets(node, datasets, calling_ae="ANNOTATOR")

    assert result.ok, result.failed
    assert result.destination == f"STORESCP@127.0.0.1:{storescp.port}"
    assert [r.sop_instance_uid for r in result.instances] == [d.SOPInstanceUID for d in datasets]
    assert all(r.status == 0 and r.error is None for r in result.instances)
    assert _sop_uids(storescp.received()) == {d.SOPInstanceUID for d in datasets}


def test_send_files_mixed_classes_and_unreadable_file(
    storescp: StoreSCP, ct_series_dir: Path, tmp_path: Path
) -> None:
    mr = sorted(shared_data_path("mr-brain-t1-sag").glob("*.dcm"))[:2]
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom")
    paths = [*ct_files(ct_series_dir)[:2], junk, *mr]
    node = DicomNode(storescp.ae_title, "127.0.0.1", storescp.port)

    result = send_files(node, paths, calling_ae="ANNOTATOR")

    assert [r.ok for r in result.instances] == [True, True, False, True, True]
    (failed,) = result.failed
    assert failed.error is not None and str(junk) in failed.error
    assert _sop_uids(storescp.received()) == _sop_uids([*paths[:2], *mr])


def test_unaccepted_transfer_syntax_fails_that_instance(
    storescp: StoreSCP, ct_series_dir: Path
) -> None:
    """storescp accepts uncompressed syntaxes only by default."""
    plain, compressed = (dcmread(p) for p in ct_files(ct_series_dir)[:2])
    compressed.compress(JPEGLSLossless)
    node = DicomNode(storescp.ae_title, "127.0.0.1", storescp.port)

    result = send_datasets(node, [plain, compressed], calling_ae="ANNOTATOR")

    assert result.instances[0].ok
    failed = result.instances[1]
    assert not failed.ok
    assert failed.sop_instance_uid == compressed.SOPInstanceUID
    assert failed.error is not None and "JPEG-LS" in failed.error


def test_unreachable_port_raises_clear_error(ct_series_dir: Path) -> None:
    port = free_port()
    node = DicomNode("NOBODY", "127.0.0.1", port)

    with pytest.raises(DeliveryError, match=rf"NOBODY@127\.0\.0\.1:{port}.*unreachable"):
        send_files(node, ct_files(ct_series_dir)[:1], calling_ae="ANNOTATOR", timeout=5)


def test_refused_association_raises_clear_error(
    storescp_refusing: StoreSCP, ct_series_dir: Path
) -> None:
    """storescp --refuse closes right after its A-ASSOCIATE-RJ, so pynetdicom may see an abort."""
    node = DicomNode("STORESCP", "127.0.0.1", storescp_refusing.port)

    with pytest.raises(DeliveryError, match=r"STORESCP@127\.0\.0\.1:\d+ \(calling AE ANNOTATOR\)"):
        send_files(node, ct_files(ct_series_dir)[:1], calling_ae="ANNOTATOR", timeout=5)
    assert storescp_refusing.received() == []


def test_rejection_reason_is_reported(ct_series_dir: Path) -> None:
    ae = AE(ae_title="STRICT")
    ae.require_called_aet = True
    ae.add_supported_context(CTImageStorage)
    server = ae.start_server(("127.0.0.1", 0), block=False)
    assert server is not None
    node = DicomNode("WRONG", "127.0.0.1", server.server_address[1])
    try:
        with pytest.raises(DeliveryError, match=r"rejected by WRONG@.*Called AE title not recog"):
            send_files(node, ct_files(ct_series_dir)[:1], calling_ae="ANNOTATOR", timeout=5)
    finally:
        server.shutdown()


@pytest.fixture
def ct_only_scp() -> Iterator[tuple[DicomNode, list[str]]]:
    """pynetdicom SCP that supports CT Image Storage only and refuses one marked instance."""
    received: list[str] = []
    refuse: list[str] = []

    def handle(event: Any) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        if uid in refuse:
            return 0xA700
        received.append(uid)
        return 0x0000

    ae = AE(ae_title="CTONLY")
    ae.add_supported_context(CTImageStorage, [*UncompressedTransferSyntaxes, JPEGLSLossless])
    server = ae.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, handle)]
    )
    assert server is not None
    try:
        yield DicomNode("CTONLY", "127.0.0.1", server.server_address[1]), refuse
    finally:
        server.shutdown()


def test_rejected_sop_class_and_failure_status_reported_per_instance(
    ct_only_scp: tuple[DicomNode, list[str]], ct_series_dir: Path
) -> None:
    node, refuse = ct_only_scp
    ct = [dcmread(p) for p in ct_files(ct_series_dir)[:2]]
    mr = dcmread(sorted(shared_data_path("mr-brain-t1-sag").glob("*.dcm"))[0])
    refuse.append(ct[1].SOPInstanceUID)

    result = send_datasets(node, [ct[0], mr, ct[1]], calling_ae="ANNOTATOR")

    ok, rejected, refused = result.instances
    assert ok.ok
    assert not rejected.ok
    assert rejected.error is not None and "MR Image Storage" in rejected.error
    assert "accepted" in rejected.error
    assert refused.status == 0xA700
    assert refused.error is not None and "0xA700" in refused.error
    assert "Out of Resources" in refused.error


def test_only_unsupported_classes_fail_without_raising(
    ct_only_scp: tuple[DicomNode, list[str]],
) -> None:
    node, _ = ct_only_scp
    mr = dcmread(sorted(shared_data_path("mr-brain-t1-sag").glob("*.dcm"))[0])

    result = send_datasets(node, [mr], calling_ae="ANNOTATOR")

    (failed,) = result.failed
    assert failed.error is not None and "no presentation context accepted" in failed.error


def test_dataset_without_transfer_syntax_fails_alone(
    ct_only_scp: tuple[DicomNode, list[str]],
) -> None:
    node, _ = ct_only_scp
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = "1.2.3.4"

    result = send_datasets(node, [ds], calling_ae="ANNOTATOR")

    (failed,) = result.failed
    assert failed.error is not None and "TransferSyntaxUID" in failed.error


def test_more_than_128_contexts_split_over_associations(
    ct_only_scp: tuple[DicomNode, list[str]], monkeypatch: pytest.MonkeyPatch, ct_series_dir: Path
) -> None:
    """Force a tiny context limit: each (class, syntax) then needs its own association."""
    import scu_scp.scu as scu

    monkeypatch.setattr(scu, "MAX_CONTEXTS", 1)
    node, _ = ct_only_scp
    plain = dcmread(ct_files(ct_series_dir)[0])
    compressed = dcmread(ct_files(ct_series_dir)[1])
    compressed.compress(JPEGLSLossless)
    associations: list[int] = []
    original = scu._send_association

    def counting(*args: Any, **kwargs: Any) -> Any:
        associations.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(scu, "_send_association", counting)

    result = send_datasets(node, [plain, compressed], calling_ae="ANNOTATOR")

    assert len(associations) == 2
    assert result.ok, result.failed
