"""What scu_scp assumes of pynetdicom beyond its documented API; pyproject pins the range.

``TlsHandshakeServer`` takes over the TLS wrap from ``get_request`` and does the handshake
in the connection thread, and ``StorageSCP.start`` registers its server in the AE's
private list as ``AE.start_server`` does (the server's ``shutdown`` removes it from there).
The connection guards (``scu_scp/connections.py``) assume how the DUL reads and sends PDUs,
how the acceptor waits for its A-ASSOCIATE-RQ, and what pynetdicom's own association limit
counts.
The SCP also receives datasets to files (``STORE_RECV_CHUNKED_DATASET``, below). If a
pynetdicom release moves any of this, these fail before the receiver breaks.
"""

from __future__ import annotations

import hashlib
import inspect
import re
import socketserver
from pathlib import Path

import pynetdicom
import pytest
from pynetdicom import AE, _config, evt
from pynetdicom.acse import ACSE
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.dul import DULServiceProvider
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.timer import Timer
from pynetdicom.transport import (
    AssociationServer,
    AssociationSocket,
    RequestHandler,
    ThreadedAssociationServer,
)

from scu_scp.reactor import WaitingAssociation, WaitingDUL
from scu_scp.security import TlsHandshakeServer


def test_pynetdicom_wraps_tls_in_get_request_only() -> None:
    assert "wrap_socket" in inspect.getsource(AssociationServer.get_request)
    for name in ("process_request", "finish_request", "verify_request"):
        method = getattr(AssociationServer, name, None)
        if method is not None and name in AssociationServer.__dict__:
            assert "wrap_socket" not in inspect.getsource(method), name


def test_handshake_server_overrides_the_hooks_it_relies_on() -> None:
    assert issubclass(TlsHandshakeServer, ThreadedAssociationServer)
    assert issubclass(ThreadedAssociationServer, socketserver.ThreadingMixIn)
    assert "get_request" in TlsHandshakeServer.__dict__
    assert "process_request_thread" in TlsHandshakeServer.__dict__


def test_make_server_takes_a_server_class() -> None:
    assert "server_class" in inspect.signature(AE.make_server).parameters


def test_a_server_registers_in_the_ae_list_that_its_shutdown_empties() -> None:
    assert "_servers.append" in inspect.getsource(AE.start_server)
    assert "_servers.remove" in inspect.getsource(AssociationServer.shutdown)
    assert AE(ae_title="PROBE")._servers == []


# -- receiving C-STORE datasets to a file (STORE_RECV_CHUNKED_DATASET) ------------------
# scu_scp.scp turns it on (it is module-level in pynetdicom) while a StorageSCP runs;
# scu_scp.received and the handler rely on what follows.


def test_chunked_receive_writes_each_fragment_to_a_file_as_it_arrives() -> None:
    assert _config.STORE_RECV_CHUNKED_DATASET in (False, True)
    source = inspect.getsource(DIMSEMessage.decode_msg)
    assert "_config.STORE_RECV_CHUNKED_DATASET" in source
    assert "NamedTemporaryFile(delete=False" in source  # in TMPDIR, mode 0600 (mkstemp)
    assert "write_file_meta_info" in source  # a Part 10 file: preamble and meta first
    assert "self._data_set_file.write(data[1:])" in source
    assert ".flush()" in source  # written through, so our fsync of another fd covers it


def test_chunked_receive_deletes_the_file_after_the_handler_forgiving_a_moved_one() -> None:
    source = inspect.getsource(StorageServiceClass.SCP)
    handler_at = source.index("evt.EVT_C_STORE")
    unlink_at = source.index("os.unlink(req._dataset_file.name)")
    assert handler_at < unlink_at
    assert "except OSError" in source[unlink_at:]  # our rename away is not an error


def test_an_unfinished_dataset_stays_on_the_dimse_providers_message() -> None:
    # scu_scp.received.discard_partial_dataset deletes it after an abort or a drop.
    source = inspect.getsource(DIMSEServiceProvider.receive_primitive)
    assert "self.message = DIMSEMessage()" in source
    assert "self.message._data_set_path = None" in source  # reset only once complete


def test_event_dataset_still_decodes_in_chunked_mode_but_encoded_dataset_does_not() -> None:
    # Handlers must read event.dataset_path: encoded_dataset() returns the (empty)
    # in-memory DataSet when datasets go to a file.
    assert "dcmread(self.dataset_path)" in inspect.getsource(Event.__dict__["dataset"].fget)
    assert "request.DataSet" in inspect.getsource(Event.encoded_dataset)
    assert isinstance(Event.__dict__["dataset_path"], property)


def test_data_recv_is_triggered_with_each_raw_pdu_before_decoding() -> None:
    # scu_scp.received.SizeGuard counts dataset bytes from it; notification handlers
    # get the non-blocking abort, so aborting from one cannot deadlock the DUL thread.
    source = inspect.getsource(DULServiceProvider._decode_pdu)
    assert source.index("EVT_DATA_RECV") < source.index("pdu.decode(")
    assert "_abort_nonblocking" in inspect.getsource(evt.trigger)


def test_the_dul_reads_header_then_declared_length_and_drops_on_a_short_read() -> None:
    """A dropped peer's socket reads as end of stream: a short header or PDU is Evt17."""
    source = inspect.getsource(DULServiceProvider._read_pdu_data)
    assert "self.socket.recv(6)" in source
    assert "self.socket.recv(pdu_length)" in source
    assert "except struct.error" in source
    assert "if len(bytestream) != 6 + pdu_length" in source
    assert source.count('self.event_queue.put("Evt17")') >= 3


def test_the_association_socket_uses_the_wrapped_sockets_recv_send_and_close() -> None:
    recv = inspect.getsource(AssociationSocket.recv)
    assert "self.socket.recv(" in recv
    assert "if not bytes_read:" in recv  # end of stream ends the read
    assert "self.socket.send(" in inspect.getsource(AssociationSocket.send)
    assert "sock.close()" in inspect.getsource(AssociationSocket._shutdown_socket)


def test_the_acceptor_waits_for_its_request_for_acse_timeout() -> None:
    source = inspect.getsource(Association.run_reactor)
    assert "receive_pdu(wait=True, timeout=self.acse_timeout)" in source


def test_pynetdicom_counts_every_acceptor_thread_against_maximum_associations() -> None:
    """Why StorageSCP sets it out of reach and counts requested associations itself."""
    source = inspect.getsource(ACSE._negotiate_as_acceptor)
    assert "active_associations" in source and "maximum_associations" in source
    assert "evt.EVT_REQUESTED" in inspect.getsource(Association.run_reactor)


# -- the waiting reactors (scu_scp/reactor.py) -------------------------------------------
# They are copies of these pynetdicom methods with only the 1 ms sleeps replaced by waits
# (and the acceptor's class, its socket's read size and the context copy changed). A
# pynetdicom release that edits any of them must be ported again, not mixed with ours.

_PORTED_SOURCES = {
    DULServiceProvider.run_reactor: "e3a10eb3a0931e48",
    DULServiceProvider.stop_dul: "28a7e0be126e7b30",
    DULServiceProvider.__init__: "c82dafa9438ddf70",
    Association._run_reactor: "f28838c5559e462a",
    Association.__init__: "eb07516b8009ad8f",
    RequestHandler._create_association: "05c8d12b79863cdb",
    AssociationSocket.recv: "6bc20a33b1b7cfe7",
    AssociationServer.service_actions: "0a0853a3615ac7c5",
    # Read, not ported: the context's private transfer syntax list (copied per acceptor)
    # and the ARTIM timer's start and end (how long the DUL may block).
    PresentationContext.__init__: "37a8842ac07cd8f3",
    Timer.__init__: "0088049875c5d495",
    Timer.remaining.fget: "4556c335c34ee264",
}


@pytest.mark.parametrize("method", list(_PORTED_SOURCES), ids=lambda m: m.__qualname__)
def test_the_methods_the_waiting_reactor_ports_are_unchanged(method: object) -> None:
    digest = hashlib.sha256(inspect.getsource(method).encode()).hexdigest()[:16]  # type: ignore[arg-type]
    assert digest == _PORTED_SOURCES[method], (  # type: ignore[index]
        f"pynetdicom changed {method.__qualname__}: port it again into scu_scp/reactor.py"  # type: ignore[attr-defined]
    )


def test_the_waiting_reactor_replaces_exactly_the_polling_sleeps() -> None:
    assert "time.sleep(self._run_loop_delay)" in inspect.getsource(DULServiceProvider.run_reactor)
    assert "time.sleep(0.001)" in inspect.getsource(Association._run_reactor)
    for source in (
        inspect.getsource(WaitingDUL._run_reactor_loop),
        inspect.getsource(WaitingAssociation._run_reactor),
    ):
        assert "time.sleep" not in source


def test_the_queues_the_reactor_wakes_on_are_the_only_ones_work_arrives_by() -> None:
    """Every put onto a queue in pynetdicom goes to one of the four queues WaitingDUL and
    WaitingAssociation replace with waking ones (``provider_queue`` is the DUL's
    ``to_provider_queue``), or to ``_recv_pdu``, which the DUL thread fills and reads
    itself right before an ``event_queue`` put."""
    package = Path(pynetdicom.__file__).parent
    puts = set()
    for path in package.glob("*.py"):
        puts |= set(re.findall(r"(\w+)\.put\(", path.read_text()))
    waking = {"event_queue", "to_provider_queue", "provider_queue", "to_user_queue", "msg_queue"}
    assert puts <= waking | {"_recv_pdu"}, puts
    assert "def provider_queue" in inspect.getsource(AssociationSocket)
    assert "return self.assoc.dul.to_provider_queue" in inspect.getsource(AssociationSocket)
