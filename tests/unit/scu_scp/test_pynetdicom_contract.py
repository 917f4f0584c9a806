"""What scu_scp assumes of pynetdicom beyond its documented API; pyproject pins the range.

``TlsHandshakeServer`` takes over the TLS wrap from ``get_request`` and does the handshake
in the connection thread, and ``StorageSCP.start`` registers its server in the AE's
private list as ``AE.start_server`` does (the server's ``shutdown`` removes it from there).
If a pynetdicom release moves either, these fail before the receiver breaks.
"""

from __future__ import annotations

import inspect
import socketserver

from pynetdicom import AE
from pynetdicom.transport import AssociationServer, ThreadedAssociationServer

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
