"""Who gets in: the calling-AE allow-list and DICOM TLS, against dcmtk echoscu/storescu."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from scu_scp.models import DeliveryError, DicomNode
from scu_scp.scu import send_files
from scu_scp.security import AllowedCaller, ClientTls, ServerTls
from tests.support.edge import (
    AE_TITLE,
    Pki,
    ScpFactory,
    ct_files,
    dcmtk,
    pki,
    spooled,
    start_scp,
    storescp_tls,
)
from tests.support.storescp import StoreSCP

__all__ = ["pki", "start_scp"]  # fixtures


def _echo(port: int, calling: str, *options: str) -> int:
    args = [*options, "-aet", calling, "-aec", AE_TITLE, "127.0.0.1", str(port)]
    return dcmtk("echoscu", *args, timeout=60).returncode


def _rejection(port: int, calling: str) -> tuple[int, int, int] | None:
    """(result, source, reason) of the A-ASSOCIATE-RJ, or None if accepted."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 30
    assoc = ae.associate("127.0.0.1", port, ae_title=AE_TITLE)
    if assoc.is_established:
        assoc.release()
        return None
    assert assoc.is_rejected, "neither accepted nor rejected"
    rj = assoc.acceptor.primitive
    return int(rj.result), int(rj.result_source), int(rj.diagnostic)


# -- allow-list -------------------------------------------------------------------------


def test_without_allow_list_every_caller_is_accepted(start_scp: ScpFactory) -> None:
    scp = start_scp()
    assert _echo(scp.port, "ANYONE") == 0


def test_unknown_caller_is_rejected_at_association_and_logged(
    start_scp: ScpFactory, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    scp = start_scp(allowed_callers=[AllowedCaller("PACS"), AllowedCaller("CT_SCANNER")])
    caplog.set_level(logging.INFO)

    assert _echo(scp.port, "PACS") == 0
    assert _echo(scp.port, "CT_SCANNER") == 0
    assert _rejection(scp.port, "INTRUDER") == (1, 1, 3)  # permanent, calling AE not recognised
    files = ct_files(tmp_path / "ct", count=2)
    result = dcmtk(
        "storescu",
        "-aet",
        "INTRUDER",
        "-aec",
        AE_TITLE,
        "127.0.0.1",
        str(scp.port),
        *map(str, files),
    )
    assert result.returncode != 0
    assert spooled(tmp_path / "spool") == []

    rejected = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
    assert rejected, "no log line for the rejected caller"
    assert all("INTRUDER@127.0.0.1" in m for m in rejected)
    assert not any("PACS@" in m for m in rejected)


def test_host_check_binds_an_ae_title_to_its_network(start_scp: ScpFactory) -> None:
    scp = start_scp(
        allowed_callers=[
            AllowedCaller("PACS", host="10.20.0.0/16"),
            AllowedCaller("LOCAL_PACS", host="127.0.0.1"),
        ]
    )
    assert _rejection(scp.port, "PACS") == (1, 1, 3)  # right AE title, wrong address
    assert _rejection(scp.port, "LOCAL_PACS") is None


# -- TLS at the SCP ---------------------------------------------------------------------


def _tls_scp(start_scp: ScpFactory, pki: Pki, *, require: bool) -> int:
    tls = ServerTls(
        certificate=pki.server.certificate,
        private_key=pki.server.private_key,
        ca_certificates=pki.ca,
        require_client_certificate=require,
    )
    return start_scp(tls=tls).port


def _client_tls(pki: Pki, which: str = "client") -> list[str]:
    pem = getattr(pki, which)
    return ["+tls", str(pem.private_key), str(pem.certificate), "+cf", str(pki.ca)]


def test_storescu_over_tls_with_client_certificate_is_stored(
    start_scp: ScpFactory, pki: Pki, tmp_path: Path
) -> None:
    port = _tls_scp(start_scp, pki, require=True)
    files = ct_files(tmp_path / "ct", count=3)

    assert _echo(port, "PACS", *_client_tls(pki)) == 0
    result = dcmtk(
        "storescu",
        *_client_tls(pki),
        "-aet",
        "PACS",
        "-aec",
        AE_TITLE,
        "127.0.0.1",
        str(port),
        *map(str, files),
    )

    assert result.returncode == 0, result.stderr
    assert len(spooled(tmp_path / "spool")) == 3


def test_tls_refuses_clients_without_a_trusted_certificate(
    start_scp: ScpFactory, pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = _tls_scp(start_scp, pki, require=True)
    caplog.set_level(logging.WARNING)
    files = ct_files(tmp_path / "ct", count=1)

    anonymous = ["+tla", "+cf", str(pki.ca)]  # TLS, but no client certificate
    assert _echo(port, "PACS", *anonymous) != 0
    assert _echo(port, "PACS", *_client_tls(pki, "rogue")) != 0  # certificate of another CA
    assert _echo(port, "PACS") != 0  # no TLS at all
    stored = dcmtk(
        "storescu",
        *anonymous,
        "-aet",
        "PACS",
        "-aec",
        AE_TITLE,
        "127.0.0.1",
        str(port),
        *map(str, files),
    )
    assert stored.returncode != 0
    assert spooled(tmp_path / "spool") == []
    handshakes = [r.getMessage() for r in caplog.records if "TLS handshake" in r.getMessage()]
    assert len(handshakes) >= 3, handshakes
    # ...and the SCP still serves a proper client afterwards.
    assert _echo(port, "PACS", *_client_tls(pki)) == 0


def test_tls_without_required_client_certificate_accepts_anonymous_clients(
    start_scp: ScpFactory, pki: Pki
) -> None:
    port = _tls_scp(start_scp, pki, require=False)
    assert _echo(port, "PACS", "+tla", "+cf", str(pki.ca)) == 0
    assert _echo(port, "PACS", *_client_tls(pki, "rogue")) != 0  # presented, untrusted


def test_a_silent_tls_client_does_not_block_other_callers(start_scp: ScpFactory, pki: Pki) -> None:
    port = _tls_scp(start_scp, pki, require=True)
    with socket.create_connection(("127.0.0.1", port)):  # connects, never says hello
        assert _echo(port, "PACS", *_client_tls(pki)) == 0


# -- TLS for outgoing C-STORE -----------------------------------------------------------


@pytest.fixture
def tls_storescp(tmp_path: Path, pki: Pki) -> Iterator[StoreSCP]:
    """storescp over TLS that requires a client certificate from the test CA."""
    key, cert = pki.server.private_key, pki.server.certificate
    with storescp_tls(tmp_path, pki, key, cert, "--require-peer-cert") as server:
        yield server


def test_send_over_tls_to_storescp_requiring_a_client_certificate(
    tls_storescp: StoreSCP, pki: Pki, tmp_path: Path
) -> None:
    files = ct_files(tmp_path / "ct", count=2)
    tls = ClientTls(
        ca_certificates=pki.ca,
        certificate=pki.client.certificate,
        private_key=pki.client.private_key,
    )
    node = DicomNode(tls_storescp.ae_title, "127.0.0.1", tls_storescp.port, tls=tls)

    result = send_files(node, files, calling_ae="PACS_ANNOTATOR")

    assert result.ok, result.failed
    assert len(tls_storescp.received()) == 2


def test_send_over_tls_fails_clearly_without_client_certificate(
    tls_storescp: StoreSCP, pki: Pki, tmp_path: Path
) -> None:
    files = ct_files(tmp_path / "ct", count=1)
    node = DicomNode(
        tls_storescp.ae_title, "127.0.0.1", tls_storescp.port, tls=ClientTls(ca_certificates=pki.ca)
    )
    with pytest.raises(DeliveryError, match="TLS"):
        send_files(node, files, calling_ae="PACS_ANNOTATOR", timeout=20)
    assert tls_storescp.received() == []


def test_send_refuses_a_server_certificate_from_an_unknown_ca(tmp_path: Path, pki: Pki) -> None:
    key, cert = pki.rogue.private_key, pki.rogue.certificate
    with storescp_tls(tmp_path, pki, key, cert, "--ignore-peer-cert") as server:
        files = ct_files(tmp_path / "ct", count=1)
        tls = ClientTls(ca_certificates=pki.ca, check_hostname=False)
        node = DicomNode(server.ae_title, "127.0.0.1", server.port, tls=tls)
        with pytest.raises(DeliveryError):
            send_files(node, files, calling_ae="PACS_ANNOTATOR", timeout=20)
        assert server.received() == []
