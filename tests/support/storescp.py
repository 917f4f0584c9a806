"""dcmtk in tests: finding its binaries, a running storescp, and small waits on DICOM files."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.dsutils import split_dataset
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from tests.support.processes import free_port, stop_process


def dcmtk_tool(name: str) -> str:
    """Path of the dcmtk binary ``name``; skips when absent.

    Not plain ``shutil.which``: the venv's pynetdicom installs Python scripts with the same
    names (echoscu, storescu...) that shadow dcmtk when the venv is activated.
    """
    for directory in os.get_exec_path():
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            with candidate.open("rb") as fh:
                if fh.read(2) != b"#!":
                    return str(candidate)
    pytest.skip(f"dcmtk '{name}' not installed (Debian package dcmtk)")


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def dataset_bytes(path: Path) -> bytes:
    """The encoded dataset of a Part 10 file, without preamble and file meta."""
    _, offset = split_dataset(path)
    with path.open("rb") as fh:
        fh.seek(offset)
        return fh.read()


def ct_files(ct_dir: Path) -> list[Path]:
    files = sorted(ct_dir.glob("*.dcm"))
    assert len(files) == 41
    return files


@dataclass
class StoreSCP:
    """A dcmtk storescp started by a test."""

    port: int
    ae_title: str
    out_dir: Path
    process: subprocess.Popen[bytes]

    def received(self) -> list[Path]:
        return sorted(p for p in self.out_dir.rglob("*") if p.is_file())


def start_storescp(tmp_path: Path, *extra: str) -> Iterator[StoreSCP]:
    binary = dcmtk_tool("storescp")
    out_dir = tmp_path / "storescp-out"
    out_dir.mkdir()
    port = free_port()
    # TCP_NODELAY=1: dcmtk receivers otherwise stall ~45 ms per instance (Nagle).
    env = {**os.environ, "TCP_NODELAY": "1"}
    process = subprocess.Popen(
        [binary, "-aet", "STORESCP", "-od", str(out_dir), *extra, str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def listening() -> bool:
        # A real association, not a bare TCP probe: storescp mishandles an empty
        # connection and may then drop the next association.
        ae = AE(ae_title="PROBE")
        ae.add_requested_context(Verification)
        ae.acse_timeout = ae.network_timeout = 2
        assoc = ae.associate("127.0.0.1", port, ae_title="STORESCP")
        ready = bool(assoc.is_established or assoc.is_rejected)
        if assoc.is_established:
            assoc.release()
        return ready

    try:
        if not wait_for(listening, timeout=10, interval=0.1):
            pytest.fail(f"storescp did not start listening on port {port}")
        yield StoreSCP(port, "STORESCP", out_dir, process)
    finally:
        stop_process(process)
