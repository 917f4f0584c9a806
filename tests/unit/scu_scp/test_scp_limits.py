"""Limits at the SCP: associations, instance and study size, free disk in the spool."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from scu_scp.admission import ScpLimits, free_disk_bytes
from scu_scp.models import DicomNode
from scu_scp.scu import send_files
from tests.support.edge import AE_TITLE, ScpFactory, ct_files, dcmtk, spooled, start_scp

__all__ = ["start_scp"]  # fixture


def _node(port: int) -> DicomNode:
    return DicomNode(AE_TITLE, "127.0.0.1", port)


def _associate(port: int) -> object:
    ae = AE(ae_title="PACS")
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage)
    ae.acse_timeout = ae.network_timeout = 30
    return ae.associate("127.0.0.1", port, ae_title=AE_TITLE)


def test_max_associations_rejects_the_one_too_many(start_scp: ScpFactory) -> None:
    scp = start_scp(max_associations=2)
    held = [_associate(scp.port) for _ in range(2)]
    try:
        assert all(a.is_established for a in held)  # type: ignore[attr-defined]
        extra = _associate(scp.port)
        assert extra.is_rejected  # type: ignore[attr-defined]
        rj = extra.acceptor.primitive  # type: ignore[attr-defined]
        assert (rj.result, rj.result_source, rj.diagnostic) == (2, 3, 2)  # local limit exceeded
    finally:
        for assoc in held:
            assoc.release()  # type: ignore[attr-defined]
    again = _associate(scp.port)
    assert again.is_established  # type: ignore[attr-defined]
    again.release()  # type: ignore[attr-defined]


def test_instance_over_max_instance_bytes_is_refused_with_a_reason(
    start_scp: ScpFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    files = ct_files(tmp_path / "ct", count=2)
    size = max(p.stat().st_size for p in files)
    scp = start_scp(limits=ScpLimits(max_instance_bytes=size // 2))
    caplog.set_level(logging.WARNING)

    result = send_files(_node(scp.port), files, calling_ae="PACS")

    assert [i.status for i in result.instances] == [0xA700, 0xA700]
    assert "scp.max_instance_bytes" in (result.instances[0].error or "")
    assert spooled(tmp_path / "spool") == []
    assert any("max_instance_bytes" in r.getMessage() for r in caplog.records)
    # The SCP is still fine, and a small enough instance goes through.
    assert dcmtk("echoscu", "-aec", AE_TITLE, "127.0.0.1", str(scp.port)).returncode == 0


def test_instance_within_max_instance_bytes_is_stored(
    start_scp: ScpFactory, tmp_path: Path
) -> None:
    files = ct_files(tmp_path / "ct", count=2)
    size = max(p.stat().st_size for p in files)
    scp = start_scp(limits=ScpLimits(max_instance_bytes=size))
    assert send_files(_node(scp.port), files, calling_ae="PACS").ok
    assert len(spooled(tmp_path / "spool")) == 2


def test_study_over_max_study_bytes_refuses_the_rest(start_scp: ScpFactory, tmp_path: Path) -> None:
    files = ct_files(tmp_path / "ct", count=4)
    size = max(p.stat().st_size for p in files)
    scp = start_scp(limits=ScpLimits(max_study_bytes=int(size * 2.5)))

    first = send_files(_node(scp.port), files[:2], calling_ae="PACS")
    again = send_files(_node(scp.port), files[:2], calling_ae="PACS")  # a resend replaces
    rest = send_files(_node(scp.port), files[2:], calling_ae="PACS")

    assert first.ok and again.ok, (first.failed, again.failed)
    assert [i.status for i in rest.instances] == [0xA700, 0xA700]
    assert "scp.max_study_bytes" in (rest.instances[0].error or "")
    stored = {p.stem for p in spooled(tmp_path / "spool")}
    assert stored == {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files[:2]}
    # Another study is not held back by the full one.
    other = ct_files(tmp_path / "other", count=1, seed=5)
    assert send_files(_node(scp.port), other, calling_ae="PACS").ok


def test_study_size_counts_what_an_earlier_run_left_in_the_spool(
    start_scp: ScpFactory, tmp_path: Path
) -> None:
    files = ct_files(tmp_path / "ct", count=3)
    size = max(p.stat().st_size for p in files)
    limits = ScpLimits(max_study_bytes=int(size * 2.5))
    first = start_scp(limits=limits)
    assert send_files(_node(first.port), files[:2], calling_ae="PACS").ok
    first.stop()

    second = start_scp(limits=limits)  # same spool, fresh process state
    rest = send_files(_node(second.port), files[2:], calling_ae="PACS")
    assert [i.status for i in rest.instances] == [0xA700]


def test_associations_are_refused_while_spool_disk_is_below_the_threshold(
    start_scp: ScpFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "spool").mkdir()
    threshold = free_disk_bytes(tmp_path / "spool") + 10**15  # more than the disk can have
    scp = start_scp(limits=ScpLimits(min_free_disk_bytes=threshold))
    caplog.set_level(logging.WARNING)
    files = ct_files(tmp_path / "ct", count=1)

    assoc = _associate(scp.port)
    assert assoc.is_rejected  # type: ignore[attr-defined]
    rj = assoc.acceptor.primitive  # type: ignore[attr-defined]
    assert (rj.result, rj.result_source, rj.diagnostic) == (2, 3, 1)  # transient: congestion
    stored = dcmtk(
        "storescu", "-aet", "PACS", "-aec", AE_TITLE, "127.0.0.1", str(scp.port), *map(str, files)
    )
    assert stored.returncode != 0
    assert spooled(tmp_path / "spool") == []
    assert any("min_free_disk_bytes" in r.getMessage() for r in caplog.records)


def test_associations_are_accepted_with_enough_free_disk(
    start_scp: ScpFactory, tmp_path: Path
) -> None:
    (tmp_path / "spool").mkdir()
    threshold = max(1, free_disk_bytes(tmp_path / "spool") // 100)
    scp = start_scp(limits=ScpLimits(min_free_disk_bytes=threshold))
    files = ct_files(tmp_path / "ct", count=1)
    assert send_files(_node(scp.port), files, calling_ae="PACS").ok
