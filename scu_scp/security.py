"""Who may talk to the DICOM edge, and over what: calling-AE allow-list and DICOM TLS.

The allow-list and the TLS settings are plain values; the SSL contexts are built from them
when a server starts or an association is opened, so a bad file is reported by the component
that needs it, naming what it tried to load.
"""

from __future__ import annotations

import gc
import ipaddress
import logging
import select
import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pynetdicom.transport import ThreadedAssociationServer

from scu_scp.connections import (
    AddressCounts,
    ConnectionLimits,
    GuardedSocket,
    GuardedSSLSocket,
    PduClock,
    guard_accepted,
)

__all__ = [
    "AllowedCaller",
    "CallerPolicy",
    "ClientTls",
    "ServerTls",
    "TlsConfigError",
    "TlsHandshakeServer",
    "client_ssl_context",
    "server_ssl_context",
]

LOGGER = logging.getLogger(__name__)

#: Seconds a TLS handshake may take on a socket without a PduClock (guarded sockets get
#: what is left of ``scp.associate_request_timeout_seconds``).
HANDSHAKE_TIMEOUT = 30.0

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TlsConfigError(ValueError):
    """A certificate, key or CA file cannot be used; the message names which."""


def parse_network(value: str) -> _Network:
    """An IP address or CIDR network (``10.0.0.0/8``); hostnames are not trusted (DNS)."""
    try:
        return ipaddress.ip_network(value.strip(), strict=False)
    except ValueError as exc:
        raise ValueError(f"not an IP address or network (CIDR): {value!r}") from exc


def _peer_ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # a dual-stack listener sees IPv4 peers as ::ffff:a.b.c.d
    return ip


@dataclass(frozen=True)
class AllowedCaller:
    """A calling AE title that may associate, optionally only from ``host`` (IP or CIDR)."""

    ae_title: str
    host: str | None = None

    def __post_init__(self) -> None:
        if not self.ae_title.strip():
            raise ValueError("allowed caller AE title is empty")
        if self.host is not None:
            parse_network(self.host)

    def matches(self, ae_title: str, address: str) -> bool:
        if ae_title.strip() != self.ae_title.strip():
            return False
        if self.host is None:
            return True
        ip = _peer_ip(address)
        return ip is not None and ip in parse_network(self.host)


@dataclass(frozen=True)
class CallerPolicy:
    """The calling-AE allow-list. Empty accepts every caller (no allow-list configured)."""

    allowed: tuple[AllowedCaller, ...] = ()

    @classmethod
    def of(cls, callers: Sequence[AllowedCaller]) -> CallerPolicy:
        return cls(tuple(callers))

    def allows(self, ae_title: str, address: str) -> bool:
        return not self.allowed or any(c.matches(ae_title, address) for c in self.allowed)


@dataclass(frozen=True)
class ServerTls:
    """TLS for the SCP: our certificate and key, and the CAs client certificates must chain to."""

    certificate: Path
    private_key: Path
    ca_certificates: Path | None = None
    require_client_certificate: bool = False

    def __post_init__(self) -> None:
        if self.require_client_certificate and self.ca_certificates is None:
            raise ValueError("require_client_certificate needs ca_certificates to verify against")


@dataclass(frozen=True)
class ClientTls:
    """TLS for outgoing associations; ``ca_certificates`` None trusts the system store."""

    ca_certificates: Path | None = None
    certificate: Path | None = None
    private_key: Path | None = None
    check_hostname: bool = True

    def __post_init__(self) -> None:
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("a client certificate needs its private key, and the reverse")


def _load_chain(context: ssl.SSLContext, certificate: Path, key: Path, what: str) -> None:
    try:
        context.load_cert_chain(certfile=str(certificate), keyfile=str(key))
    except (OSError, ssl.SSLError) as exc:
        raise TlsConfigError(
            f"{what}: cannot load certificate {certificate} with key {key}: {exc}"
        ) from exc


def _load_cas(context: ssl.SSLContext, cafile: Path, what: str) -> None:
    try:
        context.load_verify_locations(cafile=str(cafile))
    except (OSError, ssl.SSLError) as exc:
        raise TlsConfigError(f"{what}: cannot load CA certificates {cafile}: {exc}") from exc


def server_ssl_context(tls: ServerTls, *, what: str = "scp.tls") -> ssl.SSLContext:
    """An SSL context for the SCP; TLS 1.2 or later (BCP 195, DICOM PS3.15 profiles)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(context, tls.certificate, tls.private_key, what)
    if tls.ca_certificates is not None:
        _load_cas(context, tls.ca_certificates, f"{what}.ca_certificates")
    if tls.require_client_certificate:
        context.verify_mode = ssl.CERT_REQUIRED
    elif tls.ca_certificates is not None:
        context.verify_mode = ssl.CERT_OPTIONAL
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


def client_ssl_context(tls: ClientTls, *, what: str = "tls") -> ssl.SSLContext:
    """An SSL context for C-STORE to a TLS destination; the server certificate is verified."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.ca_certificates is not None:
        _load_cas(context, tls.ca_certificates, f"{what}.ca_certificates")
    context.check_hostname = tls.check_hostname
    if tls.certificate is not None and tls.private_key is not None:
        _load_chain(context, tls.certificate, tls.private_key, what)
    return context


class TlsHandshakeServer(ThreadedAssociationServer):  # type: ignore[misc]
    """pynetdicom's threaded server, with every accepted connection guarded and bounded.

    pynetdicom wraps the socket in the accept loop, so one client that connects and never
    finishes its TLS handshake would stall every other caller; here the accept loop only
    accepts, and each handshake runs in its connection's thread within the time allowed
    before the A-ASSOCIATE-RQ. Each accepted socket is guarded (``scu_scp/connections.py``:
    deadlines per PDU, the declared PDU length checked), and an address already holding
    ``max_connections_per_address`` connections has the next one closed at once. A failed
    handshake (no or untrusted client certificate) is logged with the peer address only.
    Also a larger listen backlog than socketserver's 5, for PACS that open many
    associations at once.
    """

    request_queue_size = 64
    #: Seconds between the full garbage collections pynetdicom runs from its accept loop.
    gc_interval = 60.0

    def __init__(
        self,
        *args: Any,
        connection_limits: ConnectionLimits | None = None,
        state_folder: Path,
        reuse_port: bool = False,
        **kwargs: Any,
    ) -> None:
        self.connection_limits = connection_limits or ConnectionLimits()
        self.reuse_port = reuse_port
        self.addresses = AddressCounts(
            self.connection_limits.max_connections_per_address, state_folder / "connections"
        )
        self._collected_at = time.monotonic()
        super().__init__(*args, **kwargs)

    def server_bind(self) -> None:
        """With ``reuse_port``, several processes listen on one port and the kernel shares
        the connections out between them (``SO_REUSEPORT``; only processes of the same
        user may join)."""
        if self.reuse_port:
            assert self.socket is not None
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def service_actions(self) -> None:
        """pynetdicom's accept loop runs a full ``gc.collect()`` every 60 accepts or
        half-second polls (for association objects held in reference cycles): under many
        short associations that took a tenth of the process's time. Here it runs at most
        every ``gc_interval`` seconds; Python's own collector runs in between."""
        now = time.monotonic()
        if now - self._collected_at >= self.gc_interval:
            self._collected_at = now
            gc.collect()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        assert self.socket is not None
        client, address = self.socket.accept()
        return guard_accepted(client, self.ssl_context), address

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Admit the connection unless its address is at ``max_connections_per_address``."""
        peer = _address(client_address)
        give_back = self.addresses.take(peer)
        if give_back is None:
            LOGGER.warning(
                "connection from %s refused: %d connections already open from it "
                "(scp.max_connections_per_address)",
                peer,
                self.addresses.limit,
            )
            return False
        if isinstance(request, GuardedSocket | GuardedSSLSocket):
            request.clock = PduClock(self.connection_limits, peer, give_back)
        else:
            give_back()
        return True

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        clock = request.clock if isinstance(request, GuardedSocket | GuardedSSLSocket) else None
        if isinstance(request, ssl.SSLSocket):
            try:
                request.settimeout(clock.handshake_timeout() if clock else HANDSHAKE_TIMEOUT)
                request.do_handshake()
            except (OSError, ssl.SSLError) as exc:
                LOGGER.warning(
                    "TLS handshake with %s failed: %s", _address(client_address), _reason(exc)
                )
                if clock is not None:
                    clock.dropped = True  # logged here; not "idle" when the socket closes
                self.shutdown_request(request)
                return
        if clock is not None and not _readable(request, clock.handshake_timeout()):
            # Silent until the deadline: closed (and logged as idle by its clock) before
            # pynetdicom gives it an association and two reactor threads that poll.
            self.shutdown_request(request)
            return
        super().process_request_thread(request, client_address)


def _readable(request: socket.socket, timeout: float) -> bool:
    """Whether the peer sent something (or closed) within ``timeout`` seconds."""
    if isinstance(request, ssl.SSLSocket) and request.pending():
        return True
    try:
        ready, _, _ = select.select([request], [], [], timeout)
    except (OSError, ValueError):
        return True  # closed meanwhile: pynetdicom sees the end of stream
    return bool(ready)


def _address(client_address: Any) -> str:
    if isinstance(client_address, tuple) and client_address:
        return str(client_address[0])
    return str(client_address)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    return type(exc).__name__ if not str(exc) else str(exc)
