"""PduClock and AddressCounts alone: PDU boundaries however recv splits them, counts given back."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from scu_scp.connections import AddressCounts, ConnectionLimits, PduClock, PduTooLongError

LIMITS = ConnectionLimits(max_pdu_length=1000)


def _pdu(length: int, kind: int = 0x04) -> bytes:
    return struct.pack(">BBI", kind, 0, length) + bytes(length)


@pytest.mark.parametrize("chunk", [1, 5, 6, 7, 4096])
def test_pdus_are_counted_whatever_the_chunks(chunk: int) -> None:
    clock = PduClock(LIMITS, "10.0.0.1")
    stream = _pdu(68, 0x01) + _pdu(0, 0x05) + _pdu(1000)
    for start in range(0, len(stream), chunk):
        clock.feed(stream[start : start + chunk])
    assert clock.pdus == 3 and clock.received == len(stream)


def test_a_header_over_the_limit_is_refused_even_when_split() -> None:
    gone: list[bool] = []
    clock = PduClock(LIMITS, "10.0.0.1", lambda: gone.append(True))
    header = struct.pack(">BBI", 0x04, 0, 1001)
    clock.feed(header[:3])
    with pytest.raises(PduTooLongError):
        clock.feed(header[3:])
    assert clock.dropped and gone == [True]


def test_a_closed_peer_gives_its_address_count_back_once(tmp_path: Path) -> None:
    counts = AddressCounts(limit=1, folder=tmp_path)
    give_back = counts.take("10.0.0.1")
    assert give_back is not None and counts.take("10.0.0.1") is None
    clock = PduClock(LIMITS, "10.0.0.1", give_back)
    clock.feed(b"")  # the peer closed
    clock.closed()  # and then the socket
    assert clock.peer_closed and counts.open_from("10.0.0.1") == 0
    assert counts.take("10.0.0.1") is not None and counts.open_from("10.0.0.1") == 1
