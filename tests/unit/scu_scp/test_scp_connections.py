"""Connections that never associate, or stop mid-PDU, against the running SCP (real sockets).

Each test holds connections the way a flood or a broken NAT would, then checks that a
proper caller still gets in and that the bad connection is dropped, logged by address.
"""

from __future__ import annotations

import logging
import socket
import ssl
import struct
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from scu_scp.connections import ConnectionLimits
from scu_scp.security import AllowedCaller, ServerTls
from tests.support.edge import (
    AE_TITLE,
    Pki,
    ScpFactory,
    association_rq_bytes,
    dcmtk,
    pki,
    recv_exactly,
    start_scp,
)
from tests.support.storescp import wait_for

__all__ = ["pki", "start_scp"]  # fixtures

HANG_GUARD = 30.0  # seconds a client waits before calling the SCP hung (bounds are far lower)
TWO_GB = struct.pack(">BBI", 0x04, 0x00, 2**31)  # P-DATA-TF header declaring 2 GiB
SHORT = ConnectionLimits(associate_request_timeout=0.5, pdu_timeout=0.5)

Opener = Callable[[], socket.socket]


def _echo(port: int, calling: str = "PACS", *options: str) -> int:
    args = [*options, "-aet", calling, "-aec", AE_TITLE, "127.0.0.1", str(port)]
    return dcmtk("echoscu", *args, timeout=60).returncode


def _dropped(conn: socket.socket) -> bool:
    """Whether the SCP closed ``conn`` (reads end or fail) rather than leaving it hanging."""
    conn.settimeout(HANG_GUARD)
    try:
        while conn.recv(65536):
            pass
    except TimeoutError:
        return False
    except OSError:  # reset, or a TLS socket torn down without close_notify
        return True
    return True


def _plain(port: int) -> Opener:
    return lambda: socket.create_connection(("127.0.0.1", port), timeout=HANG_GUARD)


def _associate_raw(conn: socket.socket) -> None:
    """Send a real A-ASSOCIATE-RQ on ``conn`` and read the A-ASSOCIATE-AC."""
    conn.sendall(association_rq_bytes(AE_TITLE))
    header = recv_exactly(conn, 6)
    assert header[:1] == b"\x02", f"not accepted: {header!r}"
    recv_exactly(conn, struct.unpack(">I", header[2:6])[0])


@contextmanager
def _held(opener: Opener, count: int) -> Iterator[list[socket.socket]]:
    with ExitStack() as stack:
        yield [stack.enter_context(opener()) for _ in range(count)]


def _addresses(caplog: pytest.LogCaptureFixture, words: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if words in r.getMessage()]


# -- waiting for the A-ASSOCIATE-RQ -----------------------------------------------------


def test_idle_connections_do_not_block_an_allowed_caller(start_scp: ScpFactory) -> None:
    scp = start_scp(max_associations=2, allowed_callers=[AllowedCaller("PACS")])
    with _held(_plain(scp.port), 5):  # more silent connections than slots
        assert _echo(scp.port, "PACS") == 0


def test_connections_closed_at_once_hold_no_slot(start_scp: ScpFactory) -> None:
    scp = start_scp(max_associations=1)
    for _ in range(5):
        socket.create_connection(("127.0.0.1", scp.port)).close()
    assert _echo(scp.port) == 0


def test_an_idle_connection_is_closed_after_the_bound_and_logged(
    start_scp: ScpFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    scp = start_scp(connection_limits=SHORT)
    with _plain(scp.port)() as idle:
        assert _dropped(idle)
    assert wait_for(lambda: bool(_addresses(caplog, "127.0.0.1 closed: idle")), HANG_GUARD)


def test_silent_connections_get_no_pynetdicom_association_until_they_speak(
    start_scp: ScpFactory,
) -> None:
    """pynetdicom's association and DUL threads poll with 1 ms sleeps: a silent connection
    waits in select instead, so a flood of them costs the real senders no CPU."""
    scp = start_scp()
    with _held(_plain(scp.port), 4) as silent:
        time.sleep(0.5)  # accepted by now; before, each had its association thread at once
        assert scp._ae.active_associations == []
        _associate_raw(silent[0])  # once it speaks, it is pynetdicom's
        assert wait_for(lambda: len(scp._ae.active_associations) == 1, HANG_GUARD)


def test_max_associations_counts_only_requested_associations(start_scp: ScpFactory) -> None:
    scp = start_scp(max_associations=1)
    with _held(_plain(scp.port), 3), _plain(scp.port)() as holder:
        _associate_raw(holder)  # the one slot, taken by a real association
        assert _echo(scp.port) != 0  # "local limit exceeded"
    assert wait_for(lambda: _echo(scp.port) == 0, timeout=HANG_GUARD)


# -- a PDU that never completes ----------------------------------------------------------


@pytest.mark.parametrize("associated", [False, True], ids=["before-association", "associated"])
def test_a_header_declaring_2gb_is_refused_at_once_and_the_slot_freed(
    start_scp: ScpFactory, caplog: pytest.LogCaptureFixture, associated: bool
) -> None:
    caplog.set_level(logging.WARNING)
    scp = start_scp(max_associations=1)
    with _plain(scp.port)() as conn:
        if associated:
            _associate_raw(conn)
        conn.sendall(TWO_GB + bytes(100))
        assert _dropped(conn)
    assert _addresses(caplog, "127.0.0.1 dropped: PDU declares 2147483648 bytes")
    assert wait_for(lambda: _echo(scp.port) == 0, timeout=HANG_GUARD)


@pytest.mark.parametrize(
    ("associated", "logged"),
    [
        (False, "127.0.0.1 dropped: no complete A-ASSOCIATE-RQ within 0.5 s"),
        (True, "127.0.0.1 dropped: PDU not complete within 0.5 s"),
    ],
    ids=["association-request", "associated"],
)
def test_a_partial_pdu_is_dropped_after_its_bound_and_the_slot_freed(
    start_scp: ScpFactory, caplog: pytest.LogCaptureFixture, associated: bool, logged: str
) -> None:
    caplog.set_level(logging.WARNING)
    scp = start_scp(max_associations=1, connection_limits=SHORT)
    with _plain(scp.port)() as conn:
        if associated:
            _associate_raw(conn)
            conn.sendall(struct.pack(">BBI", 0x04, 0x00, 1000) + bytes(100))  # 900 never come
        else:
            conn.sendall(association_rq_bytes(AE_TITLE)[:40])  # header and a little, then silence
        assert _dropped(conn)
    assert _addresses(caplog, logged)
    assert wait_for(lambda: _echo(scp.port) == 0, timeout=HANG_GUARD)


# -- the same over DICOM TLS -------------------------------------------------------------


def _tls_opener(port: int, pki: Pki) -> Opener:
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.load_cert_chain(str(pki.client.certificate), str(pki.client.private_key))

    def opener() -> socket.socket:
        raw = socket.create_connection(("127.0.0.1", port), timeout=HANG_GUARD)
        return context.wrap_socket(raw, server_hostname="127.0.0.1")

    return opener


def _tls_echo_options(pki: Pki) -> list[str]:
    return ["+tls", str(pki.client.private_key), str(pki.client.certificate), "+cf", str(pki.ca)]


@pytest.fixture
def tls(pki: Pki) -> ServerTls:
    return ServerTls(
        certificate=pki.server.certificate,
        private_key=pki.server.private_key,
        ca_certificates=pki.ca,
        require_client_certificate=True,
    )


def test_over_tls_a_2gb_header_is_refused_and_the_slot_freed(
    start_scp: ScpFactory, pki: Pki, tls: ServerTls
) -> None:
    scp = start_scp(max_associations=1, tls=tls)
    with _tls_opener(scp.port, pki)() as conn:
        _associate_raw(conn)
        conn.sendall(TWO_GB + bytes(100))
        assert _dropped(conn)
    assert wait_for(lambda: _echo(scp.port, "PACS", *_tls_echo_options(pki)) == 0, HANG_GUARD)


def test_over_tls_a_silent_peer_is_dropped_and_idle_ones_hold_no_slot(
    start_scp: ScpFactory, pki: Pki, tls: ServerTls, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    scp = start_scp(max_associations=1, tls=tls, connection_limits=SHORT)
    opener = _tls_opener(scp.port, pki)
    with _held(opener, 3):  # handshaken, then silent
        assert _echo(scp.port, "PACS", *_tls_echo_options(pki)) == 0
    with opener() as conn:
        _associate_raw(conn)
        conn.sendall(struct.pack(">BBI", 0x04, 0x00, 1000) + bytes(10))
        assert _dropped(conn)
    assert _addresses(caplog, "127.0.0.1 dropped: PDU not complete")


# -- per address -------------------------------------------------------------------------


def _echo_from(port: int, source: str) -> bool:
    ae = AE(ae_title="PACS")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = HANG_GUARD
    assoc = ae.associate("127.0.0.1", port, ae_title=AE_TITLE, bind_address=(source, 0))
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return int(status.Status) == 0


def test_one_address_cannot_take_every_connection(
    start_scp: ScpFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    scp = start_scp(connection_limits=ConnectionLimits(max_connections_per_address=2))
    with _held(_plain(scp.port), 2):
        with _plain(scp.port)() as third:
            assert _dropped(third)  # closed at once: 127.0.0.1 holds its 2
        assert _addresses(caplog, "connection from 127.0.0.1 refused: 2 connections")
        assert _echo_from(scp.port, "127.0.0.2")  # another address is served
    assert wait_for(lambda: _echo_from(scp.port, "127.0.0.1"), timeout=HANG_GUARD)
