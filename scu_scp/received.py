"""A C-STORE dataset as pynetdicom wrote it to a file: its size and UIDs, read cheaply.

The SCP runs pynetdicom with ``STORE_RECV_CHUNKED_DATASET``: each dataset goes to a file
as its P-DATA fragments arrive, so an association holds at most one PDU in memory. The
handler then reads only what it needs from that file: the dataset's size (inflated, for
the deflated transfer syntax, counted in bounded chunks so a deflate bomb never expands
in memory) and the three UIDs that file it (the header up to them, never the pixels).

:class:`SizeGuard` stops an instance that is already past ``scp.max_instance_bytes``
while it is still arriving: it counts the dataset bytes of each association's current
C-STORE from the raw PDUs (EVT_DATA_RECV) and aborts the association once they pass the
limit, so neither memory nor disk holds more than the limit and one PDU.
"""

from __future__ import annotations

import contextlib
import logging
import struct
import threading
import zlib
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any
from weakref import WeakKeyDictionary

from pydicom.filereader import read_dataset, read_partial
from pydicom.tag import BaseTag, Tag
from pydicom.uid import DeflatedExplicitVRLittleEndian

__all__ = [
    "INFLATE_CHUNK",
    "Received",
    "SizeGuard",
    "TooLargeError",
    "discard_partial_dataset",
    "read_received",
]

LOGGER = logging.getLogger(__name__)

INFLATE_CHUNK = 1 << 20  # bytes inflated at a time: the bound on memory for a deflated dataset
_HEAD_BYTES = 4 << 20  # inflated bytes kept to read the UIDs of a deflated dataset
_UID_TAGS: list[BaseTag | int] = [Tag(0x0008, 0x0018), Tag(0x0020, 0x000D), Tag(0x0020, 0x000E)]
_LAST_UID_TAG = 0x0020000E
_P_DATA_TF = 0x04
_PREFIX = 132  # preamble and "DICM"
_GROUP_LENGTH = b"\x02\x00\x00\x00UL"  # (0002,0000) UL, Explicit VR Little Endian


class TooLargeError(Exception):
    """The dataset (inflated, if deflated) is larger than the limit."""


@dataclass(frozen=True)
class Received:
    """What the C-STORE handler needs from a received file."""

    path: Path
    dataset_bytes: int  # as it decodes: the inflated size for deflated transfer syntax
    study_uid: str | None
    series_uid: str | None
    sop_uid: str | None


def _dataset_offset(fh: Any) -> int:
    """Offset of the dataset: after the preamble and the file meta group, whose length
    pynetdicom writes first (File Meta Information Group Length, Explicit VR LE)."""
    head = fh.read(_PREFIX + 12)
    if head[128:132] != b"DICM" or head[132:138] != _GROUP_LENGTH or len(head) < _PREFIX + 12:
        raise ValueError("not a DICOM file with a File Meta Information Group Length")
    (group_length,) = struct.unpack_from("<L", head, _PREFIX + 8)
    offset = _PREFIX + 12 + int(group_length)
    fh.seek(offset)
    return offset


def _inflate(fh: Any, limit: int) -> tuple[int, bytes]:
    """Inflated size of the rest of ``fh`` and its first bytes, in bounded chunks.

    Raises ``TooLargeError`` as soon as more than ``limit`` bytes come out (0: no limit).
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    head = bytearray()
    total = 0
    pending = b""
    while True:
        if not pending:
            pending = fh.read(INFLATE_CHUNK)
            if not pending:
                break
        out = inflater.decompress(pending, INFLATE_CHUNK)
        pending = inflater.unconsumed_tail
        total += len(out)
        if len(head) < _HEAD_BYTES:
            head += out[: _HEAD_BYTES - len(head)]
        if limit and total > limit:
            raise TooLargeError(f"inflates to more than {limit} bytes")
        if inflater.eof:
            break
    total += len(inflater.flush())
    if limit and total > limit:
        raise TooLargeError(f"inflates to more than {limit} bytes")
    return total, bytes(head)


def _past_uids(tag: BaseTag, _vr: str | None, _length: int) -> bool:
    """``stop_when`` for pydicom: the UIDs are read, stop before anything later."""
    return int(tag) > _LAST_UID_TAG


def _uids_from_head(head: bytes) -> tuple[str | None, str | None, str | None]:
    """The UIDs from the start of an inflated Explicit VR Little Endian dataset."""
    ds = read_dataset(
        BytesIO(head),
        is_implicit_VR=False,
        is_little_endian=True,
        stop_when=_past_uids,
        specific_tags=_UID_TAGS,
    )
    return ds.get("StudyInstanceUID"), ds.get("SeriesInstanceUID"), ds.get("SOPInstanceUID")


def read_received(path: Path, transfer_syntax: str, max_bytes: int = 0) -> Received:
    """Size and UIDs of the received Part 10 file at ``path``, decoding no pixel data.

    ``transfer_syntax`` is the presentation context's (pynetdicom writes it into the file
    meta). Raises ``TooLargeError`` when the dataset is (or inflates to) more than
    ``max_bytes`` (0: no limit); any other exception means the data cannot be understood.
    """
    with path.open("rb") as fh:
        offset = _dataset_offset(fh)
        if transfer_syntax == DeflatedExplicitVRLittleEndian:
            size, head = _inflate(fh, max_bytes)
            study, series, sop = _uids_from_head(head)
            return Received(path, size, _str(study), _str(series), _str(sop))
        size = fh.seek(0, 2) - offset
        if max_bytes and size > max_bytes:
            raise TooLargeError(f"{size} bytes")
        fh.seek(0)
        ds = read_partial(fh, stop_when=_past_uids, specific_tags=_UID_TAGS)
    return Received(
        path,
        size,
        _str(ds.get("StudyInstanceUID")),
        _str(ds.get("SeriesInstanceUID")),
        _str(ds.get("SOPInstanceUID")),
    )


def _str(value: object) -> str | None:
    return str(value) if value else None


def discard_partial_dataset(assoc: Any) -> None:
    """Delete the file pynetdicom was writing for a C-STORE that will never complete.

    pynetdicom deletes a received file after the C-STORE handler returns, but a dataset
    cut off by an abort or a dropped connection stays in its DIMSE provider's unfinished
    message (pinned in tests/unit/scu_scp/test_pynetdicom_contract.py).
    """
    message = getattr(getattr(assoc, "dimse", None), "message", None)
    path = getattr(message, "_data_set_path", None)
    if isinstance(path, Path):
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)


class SizeGuard:
    """Aborts an association whose current C-STORE dataset passes ``limit`` bytes.

    Bound to EVT_DATA_RECV, which pynetdicom triggers with each raw PDU before decoding
    it; a C-STORE has no declared size, so the bytes received so far are what we know.
    """

    def __init__(self, limit: int) -> None:
        if limit <= 0:
            raise ValueError("limit must be > 0")
        self.limit = limit
        self._received: WeakKeyDictionary[Any, int] = WeakKeyDictionary()
        self._lock = threading.Lock()

    def on_data(self, event: Any) -> None:
        """EVT_DATA_RECV: count the dataset bytes of each P-DATA-TF PDU."""
        data: bytes = event.data
        if not data or data[0] != _P_DATA_TF:
            return
        assoc = event.assoc
        with self._lock:
            received = self._received.get(assoc, 0)
        offset = 6
        over = False  # past the limit with more to come (a complete one gets 0xA700)
        while offset + 6 <= len(data):
            (length,) = struct.unpack_from(">L", data, offset)
            header = data[offset + 5]
            if header & 1:  # command fragment: a new message starts
                received = 0
            else:
                received += max(0, length - 2)
                if header & 2:  # last dataset fragment
                    received = 0
                else:
                    over = over or received > self.limit
            offset += 4 + length
        with self._lock:
            self._received[assoc] = received
        if over:
            requestor = assoc.requestor
            LOGGER.warning(
                "association from %s@%s aborted: C-STORE dataset passed "
                "scp.max_instance_bytes (%d) while arriving",
                str(requestor.ae_title).strip(),
                requestor.address,
                self.limit,
            )
            assoc.abort()
            discard_partial_dataset(assoc)
