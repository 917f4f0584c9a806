"""Receiving to a file as data arrives: memory bound, size limits on the inflated size,
re-sent instances with different content, private file modes. Real sockets throughout."""

from __future__ import annotations

import logging
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from scu_scp.models import DicomNode
from scu_scp.scu import send_files
from tests.support.big_instances import peak_rss_bytes, scp_process, write_big_ct
from tests.support.edge import AE_TITLE, ScpFactory, ct_files, dcmtk, spooled, start_scp
from tests.support.processes import stop_process
from tests.support.storescp import dcmtk_tool, wait_for

__all__ = ["start_scp"]  # fixture

MIB = 1 << 20
LIMIT = 10 * MIB
# What the SCP may grow by while refusing an instance far over LIMIT: LIMIT held at most
# once (it is not: the file takes it), a PDU or two, an inflate buffer, thread stacks.
ALLOWED_GROWTH = 48 * MIB


def _associate(port: int, *syntaxes: str) -> object:
    ae = AE(ae_title="PACS")
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage, list(syntaxes) or [ExplicitVRLittleEndian])
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 120
    assoc = ae.associate("127.0.0.1", port, ae_title=AE_TITLE)
    assert assoc.is_established
    return assoc


def _send_as_stored(port: int, path: Path, syntax: str) -> Dataset:
    """C-STORE a file's bytes as they are (pynetdicom's chunked send: no decode)."""
    assoc = _associate(port, syntax)
    try:
        status: Dataset = assoc.send_c_store(path)  # type: ignore[attr-defined]
    finally:
        assoc.release()  # type: ignore[attr-defined]
    return status


@pytest.fixture
def chunked_send(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)


@pytest.fixture
def warm_scp(tmp_path: Path) -> Iterator[tuple[int, int, Path]]:
    """(pid, port, TMPDIR) of an SCP process with max_instance_bytes 10 MiB that has
    already received one small instance, so its code paths are loaded."""
    if not Path("/proc/self/status").is_file():
        pytest.skip("needs Linux /proc to read the SCP process's peak RSS (VmHWM)")
    with scp_process(tmp_path / "spool", LIMIT) as scp:
        small = ct_files(tmp_path / "small", count=1)
        assert send_files(DicomNode(AE_TITLE, "127.0.0.1", scp.port), small, calling_ae="PACS").ok
        yield scp.pid, scp.port, scp.tmpdir


def test_a_200_mb_instance_is_stopped_while_arriving_in_bounded_memory(
    warm_scp: tuple[int, int, Path], tmp_path: Path
) -> None:
    pid, port, tmpdir = warm_scp
    big = tmp_path / "big.dcm"
    write_big_ct(big, 200 * MIB)
    before = peak_rss_bytes(pid)

    sent = dcmtk("storescu", "-aet", "PACS", "-aec", AE_TITLE, "127.0.0.1", str(port), str(big))

    growth = peak_rss_bytes(pid) - before
    assert sent.returncode != 0 or "0xa700" in (sent.stdout + sent.stderr).lower()
    assert growth < ALLOWED_GROWTH, f"SCP peak RSS grew by {growth / MIB:.0f} MiB"
    assert len(spooled(tmp_path / "spool")) == 1  # only the warm-up instance
    assert list(tmpdir.iterdir()) == []  # the cut-off dataset's file is gone
    # The SCP still answers.
    assert dcmtk("echoscu", "-aec", AE_TITLE, "127.0.0.1", str(port)).returncode == 0


def test_a_deflate_bomb_is_refused_by_its_inflated_size_in_bounded_memory(
    warm_scp: tuple[int, int, Path], tmp_path: Path, chunked_send: None
) -> None:
    pid, port, _ = warm_scp
    bomb = tmp_path / "bomb.dcm"
    write_big_ct(bomb, 128 * MIB, deflated=True)
    assert bomb.stat().st_size < MIB  # small on the wire
    before = peak_rss_bytes(pid)

    status = _send_as_stored(port, bomb, DeflatedExplicitVRLittleEndian)

    growth = peak_rss_bytes(pid) - before
    assert status.Status == 0xA700
    assert "scp.max_instance_bytes" in str(status.get("ErrorComment", ""))
    assert growth < ALLOWED_GROWTH, f"SCP peak RSS grew by {growth / MIB:.0f} MiB"
    assert len(spooled(tmp_path / "spool")) == 1  # only the warm-up instance


def test_a_deflated_instance_within_the_limit_is_stored_as_sent(
    start_scp: ScpFactory, tmp_path: Path, chunked_send: None
) -> None:
    from scu_scp.admission import ScpLimits

    scp = start_scp(limits=ScpLimits(max_instance_bytes=2 * MIB))
    sent = tmp_path / "small-deflated.dcm"
    header = write_big_ct(sent, MIB, deflated=True)

    status = _send_as_stored(scp.port, sent, DeflatedExplicitVRLittleEndian)

    assert status.Status == 0x0000
    (stored,) = spooled(tmp_path / "spool")
    assert stored.name == f"{header.SOPInstanceUID}.dcm"
    assert dcmread(stored).file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian


def _changed_copy(path: Path, target: Path) -> Path:
    """The same instance (same UIDs) with other pixel values: a corrected resend."""
    ds = dcmread(path)
    pixels = bytearray(ds.PixelData)
    pixels[0] ^= 0xFF
    ds.PixelData = bytes(pixels)
    ds.save_as(target, enforce_file_format=True)
    return target


def test_a_resent_instance_with_different_content_keeps_both_copies(
    start_scp: ScpFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    scp = start_scp()
    node = DicomNode(AE_TITLE, "127.0.0.1", scp.port)
    (first,) = ct_files(tmp_path / "ct", count=1)
    second = _changed_copy(first, tmp_path / "changed.dcm")
    sop = str(dcmread(first, stop_before_pixels=True).SOPInstanceUID)
    caplog.set_level(logging.WARNING)

    assert send_files(node, [first], calling_ae="PACS").ok
    assert send_files(node, [first], calling_ae="PACS").ok  # identical: one copy
    assert list((tmp_path / "spool" / "superseded").rglob("*.dcm")) == []
    assert send_files(node, [second], calling_ae="PACS").ok  # different: both kept

    (filed,) = (tmp_path / "spool" / "incoming").rglob("*.dcm")
    (aside,) = (tmp_path / "spool" / "superseded").rglob("*.dcm")
    assert filed.name == f"{sop}.dcm"
    assert dcmread(filed).PixelData == dcmread(second).PixelData  # the job gets the newest
    assert dcmread(aside).PixelData == dcmread(first).PixelData
    assert aside.name.startswith(sop)
    assert any(
        sop in r.getMessage() and "different content" in r.getMessage() for r in caplog.records
    )


def _modes(root: Path) -> tuple[set[int], set[int]]:
    files, dirs = set(), set()
    for path in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        (dirs if path.is_dir() else files).add(mode)
    return files, dirs


def test_spool_files_are_0600_and_folders_0700_whatever_the_umask(
    start_scp: ScpFactory, tmp_path: Path
) -> None:
    old = os.umask(0)  # the most permissive: every bit is the spool's own choice
    try:
        scp = start_scp()
        node = DicomNode(AE_TITLE, "127.0.0.1", scp.port)
        files = ct_files(tmp_path / "ct", count=2)
        assert send_files(node, files, calling_ae="PACS").ok
        _ = send_files(node, [_changed_copy(files[0], tmp_path / "c.dcm")], calling_ae="PACS")
        scp.force_complete(str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID))
        scp.poll_once()
        scp.spool.quarantine(b"junk", "test", calling_ae="PACS")
    finally:
        os.umask(old)

    file_modes, dir_modes = _modes(tmp_path / "spool")
    assert len(list((tmp_path / "spool" / "studies").rglob("*.dcm"))) == 2
    assert file_modes == {0o600}
    assert dir_modes == {0o700}


def test_a_dataset_cut_off_by_a_dropped_connection_leaves_no_file(tmp_path: Path) -> None:
    big = tmp_path / "big.dcm"
    write_big_ct(big, 200 * MIB)
    with scp_process(tmp_path / "spool", 0) as scp:  # no limit: only the drop stops it
        sender = subprocess.Popen(
            [dcmtk_tool("storescu"), "-aec", AE_TITLE, "127.0.0.1", str(scp.port), str(big)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            arriving = wait_for(lambda: _bytes_in(scp.tmpdir) > MIB, timeout=60)
        finally:
            stop_process(sender, timeout=0)  # SIGKILL: the connection drops mid-dataset
        assert arriving, "the dataset was never written to a file while arriving"
        assert wait_for(lambda: not any(scp.tmpdir.iterdir()), timeout=60)
        assert spooled(tmp_path / "spool") == []
        assert dcmtk("echoscu", "-aec", AE_TITLE, "127.0.0.1", str(scp.port)).returncode == 0


def _bytes_in(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def test_datasets_arriving_on_another_file_system_are_copied_in_with_a_warning(
    start_scp: ScpFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on another file system than the test's tmp_path")
    arriving = Path(tempfile.mkdtemp(dir=shm, prefix="pacs-annotator-test-"))
    monkeypatch.setattr(tempfile, "tempdir", str(arriving))  # where pynetdicom writes
    caplog.set_level(logging.WARNING)
    try:
        scp = start_scp()
        files = ct_files(tmp_path / "ct", count=2)
        assert send_files(DicomNode(AE_TITLE, "127.0.0.1", scp.port), files, calling_ae="PACS").ok
        assert list(arriving.iterdir()) == []
    finally:
        shutil.rmtree(arriving, ignore_errors=True)

    stored = {p.name: p for p in spooled(tmp_path / "spool")}
    for sent in files:
        header = dcmread(sent, stop_before_pixels=True)
        copy = stored[f"{header.SOPInstanceUID}.dcm"]
        assert dcmread(copy).PixelData == dcmread(sent).PixelData
        assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    assert list((tmp_path / "spool" / "tmp").iterdir()) == []
    assert any("TMPDIR" in r.getMessage() for r in caplog.records)


def test_receiving_to_a_file_is_on_only_while_a_storage_scp_runs(start_scp: ScpFactory) -> None:
    """pynetdicom's switch is module-level: once the last SCP stops, another receiver in the
    same process (a tool, a test's own SCP) gets its datasets in memory again."""
    assert _config.STORE_RECV_CHUNKED_DATASET is False
    first, second = start_scp(), start_scp()
    assert _config.STORE_RECV_CHUNKED_DATASET is True
    first.stop()
    assert _config.STORE_RECV_CHUNKED_DATASET is True, "the other SCP still receives"
    second.stop()
    assert _config.STORE_RECV_CHUNKED_DATASET is False
