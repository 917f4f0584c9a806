"""The acceptor's reactor threads wait for work instead of polling (``scu_scp/reactor.py``).

A real StorageSCP and real pynetdicom/dcmtk peers: the threads must answer at once when
work arrives (stores, release, abort, the peer vanishing) and sleep otherwise.
"""

from __future__ import annotations

import gc
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import UID
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from scu_scp.reactor import IDLE_CHECK_SECONDS, WaitingAssociation, WaitingDUL
from scu_scp.scp import StorageSCP
from scu_scp.security import TlsHandshakeServer
from tests.support.edge import ScpFactory, start_scp
from tests.support.studies import write_series_study

__all__ = ["start_scp"]  # fixture


class _Counting:
    """Counts the reactor loops' waits, per thread kind, while installed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.dul = 0
        self.assoc = 0
        dul_wait = WaitingDUL._wait_for_work
        assoc_wait = WaitingAssociation._wait_for_work

        def counted_dul(dul: WaitingDUL) -> None:
            self.dul += 1
            dul_wait(dul)

        def counted_assoc(assoc: WaitingAssociation) -> None:
            self.assoc += 1
            assoc_wait(assoc)

        monkeypatch.setattr(WaitingDUL, "_wait_for_work", counted_dul)
        monkeypatch.setattr(WaitingAssociation, "_wait_for_work", counted_assoc)


@pytest.fixture
def scp(start_scp: ScpFactory) -> StorageSCP:
    return start_scp()


def _associate(port: int) -> Association:
    ae = AE(ae_title="PACS")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="ANNOTATOR")
    assert assoc.is_established
    return assoc


def test_an_idle_association_wakes_a_few_times_a_second_not_a_thousand(
    start_scp: ScpFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    counts = _Counting(monkeypatch)
    scp = start_scp()
    assoc = _associate(scp.port)
    try:
        time.sleep(0.2)  # negotiation settles
        dul_before, assoc_before = counts.dul, counts.assoc
        time.sleep(1.0)
        dul_wakes, assoc_wakes = counts.dul - dul_before, counts.assoc - assoc_before
    finally:
        assoc.release()
    # pynetdicom's loops sleep 1 ms: about 1000 wake-ups a second each.
    limit = 3 / IDLE_CHECK_SECONDS  # 60 for 0.05 s
    assert 0 < dul_wakes <= limit, dul_wakes
    assert 0 < assoc_wakes <= limit, assoc_wakes


def test_stores_release_and_abort_are_answered_through_the_waiting_loops(
    scp: StorageSCP, tmp_path: Path
) -> None:
    study, (files,) = write_series_study(tmp_path / "study", series=1, slices=12)
    ae = AE(ae_title="PACS")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="ANNOTATOR")
    assert isinstance(scp._server, TlsHandshakeServer)
    acceptors = _server(scp).active_associations
    assert acceptors and all(isinstance(a, WaitingAssociation) for a in acceptors)
    assert all(isinstance(a.dul, WaitingDUL) for a in acceptors)
    statuses = [assoc.send_c_store(path).Status for path in files]
    assoc.release()
    assert statuses == [0x0000] * len(files)
    assert assoc.is_released
    assert len(list((scp.spool.incoming / study).rglob("*.dcm"))) == len(files)

    aborted = ae.associate("127.0.0.1", scp.port, ae_title="ANNOTATOR")
    assert aborted.send_c_store(files[0]).Status == 0x0000
    aborted.abort()
    _wait_until(lambda: not _server(scp).active_associations, "aborted acceptor ended")


def test_a_peer_that_vanishes_ends_both_threads(scp: StorageSCP, tmp_path: Path) -> None:
    """The socket closing (no release, no abort) wakes the DUL, whose end wakes the
    association thread."""
    assoc = _associate(scp.port)
    acceptor = _server(scp).active_associations[0]
    assert assoc.dul.socket is not None
    sock = assoc.dul.socket.socket
    assert isinstance(sock, socket.socket)
    sock.shutdown(socket.SHUT_RDWR)  # the acceptor reads the end of the stream
    _wait_until(lambda: not acceptor.is_alive() and not acceptor.dul.is_alive(), "ended")
    assoc.kill()


def test_acceptor_contexts_are_copies_the_negotiation_cannot_leak_into(
    scp: StorageSCP,
) -> None:
    assoc = _associate(scp.port)
    try:
        acceptor = _server(scp).active_associations[0]
        theirs = acceptor.acceptor.supported_contexts
        ours = _server(scp).contexts
        assert len(theirs) == len(ours)
        for mine, copy in zip(ours, theirs, strict=True):
            assert copy is not mine
            assert copy.abstract_syntax == mine.abstract_syntax
            assert copy.transfer_syntax == mine.transfer_syntax
            assert copy._transfer_syntax is not mine._transfer_syntax
        theirs[0]._transfer_syntax.append(UID("1.2.3"))
        assert "1.2.3" not in ours[0].transfer_syntax
    finally:
        assoc.release()


@pytest.mark.parametrize(("level", "logged"), [(logging.INFO, False), (logging.DEBUG, True)])
def test_pynetdicom_message_logs_only_when_its_logger_is_at_debug(
    scp: StorageSCP,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    level: int,
    logged: bool,
) -> None:
    _, (files,) = write_series_study(tmp_path / "study", series=1, slices=1)
    caplog.set_level(level, logger="pynetdicom")
    assoc = _associate(scp.port)
    acceptor = _server(scp).active_associations[0]
    assert assoc.send_c_store(files[0]).Status == 0x0000
    assoc.release()
    _wait_until(lambda: not acceptor.is_alive(), "acceptor ended")
    # Only the acceptor receives a request; the requestor here logs "Sending ...".
    received = [r for r in caplog.records if r.getMessage() == "Received Store Request"]
    assert bool(received) is logged


def test_the_accept_loop_collects_garbage_at_most_once_per_interval(
    monkeypatch: pytest.MonkeyPatch, scp: StorageSCP
) -> None:
    server = scp._server
    assert isinstance(server, TlsHandshakeServer)
    calls: list[float] = []

    def collect(*_: object) -> int:
        calls.append(time.monotonic())
        return 0

    monkeypatch.setattr(gc, "collect", collect)
    server._collected_at = time.monotonic()
    for _ in range(500):  # pynetdicom collects every 60 calls
        server.service_actions()
    assert calls == []
    server._collected_at -= server.gc_interval
    server.service_actions()
    server.service_actions()
    assert len(calls) == 1


def _server(scp: StorageSCP) -> TlsHandshakeServer:
    server = scp._server
    assert isinstance(server, TlsHandshakeServer)
    return server


def _wait_until(condition: object, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for: {what}")


@pytest.fixture(autouse=True)
def _no_leftover_threads() -> Iterator[None]:
    yield
    _wait_until(
        lambda: not any(t.is_alive() and "AcceptorThread" in t.name for t in threading.enumerate()),
        "no acceptor thread left running",
    )
