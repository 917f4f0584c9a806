"""Large and hostile C-STORE instances, written in chunks, and a StorageSCP in its own process.

The memory tests measure a separate SCP process's peak RSS (``VmHWM``) around one
instance, so what the test process itself allocates does not count.

Run as ``python -m tests.support.big_instances SPOOL MAX_INSTANCE_BYTES``: an SCP on a
free port that prints the port and serves until its stdin closes.
"""

from __future__ import annotations

import contextlib
import os
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    generate_uid,
)

from tests.support.processes import stop_process

__all__ = ["ScpProcess", "peak_rss_bytes", "scp_process", "write_big_ct"]

_CHUNK = 1 << 20
REPO = Path(__file__).resolve().parents[2]


def _header(rows: int, columns: int) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    return ds


def write_big_ct(path: Path, pixel_bytes: int, *, deflated: bool = False) -> Dataset:
    """A CT instance with ``pixel_bytes`` of zero pixels, never whole in memory.

    ``deflated``: Deflated Explicit VR Little Endian, so a few hundred KB on the wire
    expand to ``pixel_bytes`` (a deflate bomb). Returns the header (UIDs).
    """
    side = int((pixel_bytes // 2) ** 0.5)
    ds = _header(side, pixel_bytes // 2 // side)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian if deflated else ExplicitVRLittleEndian
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, ds)
    pixels = 2 * ds.Rows * ds.Columns
    head = buffer.getvalue() + b"\xe0\x7f\x10\x00OW\x00\x00" + struct.pack("<L", pixels)
    with path.open("wb") as fh:
        fh.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(fh, meta)  # type: ignore[arg-type]
        _write_body(fh, head, pixels, deflated)
    return ds


def _write_body(fh: BinaryIO, head: bytes, zeros: int, deflated: bool) -> None:
    squeeze = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS) if deflated else None

    def out(data: bytes) -> None:
        fh.write(squeeze.compress(data) if squeeze is not None else data)

    out(head)
    block = bytes(_CHUNK)
    for start in range(0, zeros, _CHUNK):
        out(block[: min(_CHUNK, zeros - start)])
    if squeeze is not None:
        fh.write(squeeze.flush())


def peak_rss_bytes(pid: int) -> int:
    """Peak resident set size of a running process so far (Linux ``VmHWM``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


@dataclass(frozen=True)
class ScpProcess:
    pid: int
    port: int
    tmpdir: Path  # where pynetdicom writes datasets while they arrive (TMPDIR)


@contextlib.contextmanager
def scp_process(spool: Path, max_instance_bytes: int) -> Iterator[ScpProcess]:
    """A StorageSCP (AE title ANNOTATOR) in a child process with its own TMPDIR."""
    tmpdir = spool.parent / "scp-tmp"
    tmpdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TMPDIR": str(tmpdir), "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.support.big_instances", str(spool), str(max_instance_bytes)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        cwd=REPO,
    )
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline() or 0)
        if not port:
            raise RuntimeError("the SCP process did not start")
        yield ScpProcess(process.pid, port, tmpdir)
    finally:
        stop_process(process, timeout=30)


def _serve(spool: Path, max_instance_bytes: int) -> None:
    from scu_scp.admission import ScpLimits
    from scu_scp.scp import StorageSCP
    from scu_scp.spool import Spool

    scp = StorageSCP(
        ae_title="ANNOTATOR",
        host="127.0.0.1",
        port=0,
        spool=Spool(spool),
        on_complete=lambda study: None,
        quiet_seconds=86400,
        limits=ScpLimits(max_instance_bytes=max_instance_bytes),
    )
    scp.start()
    print(scp.port, flush=True)
    sys.stdin.read()  # until the parent closes it or stops us
    scp.stop()


if __name__ == "__main__":
    _serve(Path(sys.argv[1]), int(sys.argv[2]))
