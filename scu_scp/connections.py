"""Connections at the DICOM edge: how long a peer may take, and how many it may hold.

pynetdicom gives every accepted connection a thread at once, counts it against
``maximum_associations`` before it has asked for anything, and reads each PDU with blocking,
timeout-less ``recv`` calls for as many bytes as its header declares. A peer that connects
and says nothing, or sends a header and stops, therefore held a slot for 30 s or for ever.
Here:

- every accepted socket is a :class:`GuardedSocket` (or :class:`GuardedSSLSocket`) that
  follows the PDU boundaries in what pynetdicom reads: the first PDU (the A-ASSOCIATE-RQ)
  must be complete ``associate_request_timeout`` after the connection was accepted, every
  later PDU ``pdu_timeout`` after its first byte, and a header declaring more than
  ``max_pdu_length`` is refused before its body is read; sends get ``pdu_timeout`` too;
- :class:`AssociationSlots` counts only associations whose A-ASSOCIATE-RQ has arrived
  against ``scp.max_associations``;
- :class:`AddressCounts` caps the connections one address holds open at once.

Both counts hold across the SCP's receiver processes (``scp.processes``): they are lock
files in the spool's ``state/`` folder.

Logs carry peer addresses only.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

__all__ = [
    "PDU_HEADER_BYTES",
    "AddressCounts",
    "AssociationSlots",
    "ConnectionLimits",
    "GuardedSSLSocket",
    "GuardedSocket",
    "PduClock",
    "PduTooLongError",
    "guard_accepted",
]

LOGGER = logging.getLogger(__name__)

PDU_HEADER_BYTES = 6  # PDU type, reserved, 4-byte length (PS3.8 9.3.1)
_RETIME_SLACK = 0.05  # seconds a deadline may overrun to save a settimeout per recv


@dataclass(frozen=True)
class ConnectionLimits:
    """How long an accepted connection may take, and how large a PDU it may declare.

    ``max_connections_per_address`` 0 means no per-address cap.
    """

    associate_request_timeout: float = 5.0
    pdu_timeout: float = 60.0
    max_pdu_length: int = 1_048_576 + PDU_HEADER_BYTES  # StorageSCP sets it from its own
    max_connections_per_address: int = 0

    def __post_init__(self) -> None:
        if self.associate_request_timeout <= 0:
            raise ValueError("associate_request_timeout must be > 0")
        if self.pdu_timeout <= 0:
            raise ValueError("pdu_timeout must be > 0")
        if self.max_pdu_length < PDU_HEADER_BYTES:
            raise ValueError(f"max_pdu_length must be >= {PDU_HEADER_BYTES}")
        if self.max_connections_per_address < 0:
            raise ValueError("max_connections_per_address must be >= 0 (0 = no limit)")


class PduTooLongError(ConnectionError):
    """A PDU header declared more bytes than the receiver accepts; its body is not read."""


class PduClock:
    """Deadlines and the length check for the PDUs read on one accepted connection.

    pynetdicom reads a PDU as its 6-byte header, then exactly the length the header
    declares, so the bytes ``recv`` returns mark where each PDU begins and ends.
    """

    def __init__(
        self, limits: ConnectionLimits, peer: str, on_gone: Callable[[], None] | None = None
    ) -> None:
        self.limits = limits
        self.peer = peer
        self._on_gone = on_gone  # gives back the address's connection count, once
        self._deadline = time.monotonic() + limits.associate_request_timeout
        self._header = bytearray()
        self._body_left = 0
        self.pdus = 0
        self.received = 0
        self.peer_closed = False
        self.dropped = False  # we gave up on the peer (timeout, PDU too long): logged

    def handshake_timeout(self) -> float:
        """Seconds left for a TLS handshake: it is part of the wait for the A-ASSOCIATE-RQ."""
        return max(0.001, self._deadline - time.monotonic())

    def recv_timeout(self) -> float:
        """Seconds the next ``recv`` may block; raises TimeoutError once the PDU is overdue."""
        now = time.monotonic()
        if self.pdus and not self._header and not self._body_left:
            self._deadline = now + self.limits.pdu_timeout  # a new PDU starts with this read
        left = self._deadline - now
        if left <= 0:
            self.timed_out()
            raise TimeoutError(f"PDU from {self.peer} not complete in time")
        return left

    def timed_out(self) -> None:
        """Log (once) that the peer did not finish its PDU within the bound."""
        if self.dropped:
            return
        self.dropped = True
        if self.pdus == 0:
            LOGGER.warning(
                "connection from %s dropped: no complete A-ASSOCIATE-RQ within %g s "
                "(scp.associate_request_timeout_seconds)",
                self.peer,
                self.limits.associate_request_timeout,
            )
        else:
            LOGGER.warning(
                "connection from %s dropped: PDU not complete within %g s "
                "(scp.pdu_timeout_seconds)",
                self.peer,
                self.limits.pdu_timeout,
            )
        self.gone()

    def feed(self, data: bytes) -> None:
        """Account for bytes read; refuse a header that declares too long a PDU."""
        if not data:
            self.peer_closed = True
            self.gone()
            return
        self.received += len(data)
        if len(data) < self._body_left:  # the common case: more of a large PDU's body
            self._body_left -= len(data)
            return
        view = memoryview(data)
        while view:
            if self._body_left == 0:  # inside a header
                take = min(PDU_HEADER_BYTES - len(self._header), len(view))
                self._header += view[:take]
                view = view[take:]
                if len(self._header) < PDU_HEADER_BYTES:
                    continue
                length = int.from_bytes(self._header[2:6], "big")
                self._header.clear()
                if length > self.limits.max_pdu_length:
                    self.dropped = True
                    LOGGER.warning(
                        "connection from %s dropped: PDU declares %d bytes, over the %d accepted",
                        self.peer,
                        length,
                        self.limits.max_pdu_length,
                    )
                    self.gone()
                    raise PduTooLongError(f"PDU of {length} bytes from {self.peer} refused")
                self._body_left = length
                if length == 0:
                    self.pdus += 1
            else:
                take = min(self._body_left, len(view))
                self._body_left -= take
                view = view[take:]
                if self._body_left == 0:
                    self.pdus += 1

    def closed(self) -> None:
        """The socket is closed: say why when the peer never sent an A-ASSOCIATE-RQ."""
        if not self.dropped and self.pdus == 0:
            if self.peer_closed or self.received:
                LOGGER.debug("connection from %s closed before associating", self.peer)
            else:
                LOGGER.warning(
                    "connection from %s closed: idle, no A-ASSOCIATE-RQ within %g s "
                    "(scp.associate_request_timeout_seconds)",
                    self.peer,
                    self.limits.associate_request_timeout,
                )
        self.gone()

    def gone(self) -> None:
        on_gone, self._on_gone = self._on_gone, None
        if on_gone is not None:
            on_gone()


class _Guarded:
    """recv/send/close of an accepted socket, timed and checked by its :class:`PduClock`.

    The acceptor's socket (``scu_scp/reactor.py``) asks for a PDU's header, then for what
    is left of its body, so the guard costs a few checks per system call.
    """

    clock: PduClock | None = None
    _timeout_set: float | None = None

    def _retime(self, seconds: float) -> None:
        current = self._timeout_set
        if current is None or abs(current - seconds) > _RETIME_SLACK:
            self.settimeout(seconds)  # type: ignore[attr-defined]
            self._timeout_set = seconds

    def recv(self, bufsize: int = 1024, flags: int = 0, /) -> bytes:
        """Bytes read within the PDU's deadline; b"" (end of stream) once the peer is dropped.

        An end of stream, rather than an exception, lets pynetdicom close the connection
        without logging a traceback per dropped peer; :class:`PduClock` has logged why.
        """
        clock = self.clock
        if clock is None:
            return super().recv(bufsize, flags)  # type: ignore[misc, no-any-return]
        if clock.dropped:
            return b""
        try:
            self._retime(clock.recv_timeout())
            data: bytes = super().recv(bufsize, flags)  # type: ignore[misc]
        except TimeoutError:
            clock.timed_out()
            return b""
        try:
            clock.feed(data)
        except PduTooLongError:
            return b""
        return data

    def send(self, data: Any, flags: int = 0) -> int:
        clock = self.clock
        if clock is not None:
            self._retime(clock.limits.pdu_timeout)
        return super().send(data, flags)  # type: ignore[misc, no-any-return]

    def close(self) -> None:
        clock, self.clock = self.clock, None
        if clock is not None:
            clock.closed()
        super().close()  # type: ignore[misc]


class GuardedSocket(_Guarded, socket.socket):
    """An accepted plain-TCP connection under a :class:`PduClock`."""


class GuardedSSLSocket(_Guarded, ssl.SSLSocket):
    """An accepted DICOM TLS connection under a :class:`PduClock` (``sslsocket_class``)."""


def guard_accepted(
    client: socket.socket, ssl_context: ssl.SSLContext | None
) -> GuardedSocket | GuardedSSLSocket:
    """The accepted ``client`` as a guarded socket, TLS-wrapped (handshake not yet done).

    Its :class:`PduClock` is attached by the server once the connection is admitted.
    """
    plain = GuardedSocket(client.family, client.type, client.proto, fileno=client.detach())
    if ssl_context is None:
        return plain
    ssl_context.sslsocket_class = GuardedSSLSocket
    wrapped = ssl_context.wrap_socket(plain, server_side=True, do_handshake_on_connect=False)
    assert isinstance(wrapped, GuardedSSLSocket)
    return wrapped


class _LockFiles:
    """``count`` lock files in ``folder``, each held by whoever ``flock``s it: counts shared
    by every process of the SCP, given back by a process that dies with it."""

    def __init__(self, folder: Path, count: int) -> None:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._paths = [folder / f"{n}.lock" for n in range(count)]

    def take(self) -> BinaryIO | None:
        """A held lock file (close it to give it back), or None when all are held."""
        start = secrets.randbelow(len(self._paths))  # processes rarely try the same file
        for n in range(len(self._paths)):
            handle = self._open(self._paths[(start + n) % len(self._paths)])
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            return handle
        return None

    def held(self) -> int:
        """How many are held now, by any process (this one included)."""
        held = 0
        for path in self._paths:
            with self._open(path) as handle:
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    held += 1
        return held

    @staticmethod
    def _open(path: Path) -> BinaryIO:
        return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600), "wb")


class AddressCounts:
    """Connections open per peer address, capped at ``limit`` (0: no cap), across every
    process of the SCP (lock files under ``folder``, one folder per address)."""

    def __init__(self, limit: int, folder: Path) -> None:
        self.limit = limit
        self._folder = folder
        self._files: dict[str, _LockFiles] = {}
        self._lock = threading.Lock()

    def _of(self, address: str) -> _LockFiles:
        with self._lock:
            files = self._files.get(address)
            if files is None:  # a folder name whatever the address looks like (IPv6, scope)
                name = hashlib.sha256(address.encode()).hexdigest()[:32]
                files = self._files[address] = _LockFiles(self._folder / name, self.limit)
            return files

    def take(self, address: str) -> Callable[[], None] | None:
        """A callable that gives the connection back, or None when ``address`` is at the cap."""
        if not self.limit:
            return lambda: None
        handle = self._of(address).take()
        if handle is None:
            return None
        given_back = threading.Event()

        def give_back() -> None:
            if given_back.is_set():
                return
            given_back.set()
            handle.close()  # closing the file releases its lock

        return give_back

    def open_from(self, address: str) -> int:
        return self._of(address).held() if self.limit else 0


class AssociationSlots:
    """Associations whose A-ASSOCIATE-RQ has arrived, capped at ``scp.max_associations``.

    Counted across every process of the SCP: each slot is a lock file in ``folder``, held
    (``flock``) by the association that took it until it ends. A process that dies gives
    its slots back with it. Connections still waiting for their request do not count:
    they are bounded in time by :class:`PduClock` instead.
    """

    def __init__(self, maximum: int, folder: Path) -> None:
        if maximum < 1:
            raise ValueError(f"max_associations must be >= 1, got {maximum}")
        self.maximum = maximum
        self._files = _LockFiles(folder, maximum)
        self._held: dict[Any, BinaryIO] = {}
        self._lock = threading.Lock()

    def take(self, assoc: Any) -> bool:
        """Hold a slot for ``assoc`` (an acceptor Association) unless every slot is held."""
        with self._lock:
            for gone in [a for a in self._held if not a.is_alive()]:
                self._held.pop(gone).close()
            handle = self._files.take()
            if handle is None:
                return False
            self._held[assoc] = handle
            return True

    def give_back(self, assoc: Any) -> None:
        """The association ended (released, aborted, connection closed)."""
        with self._lock:
            handle = self._held.pop(assoc, None)
        if handle is not None:
            handle.close()  # closing the file releases its lock

    def held(self) -> int:
        """Slots held by this process's associations."""
        with self._lock:
            return sum(1 for a in self._held if a.is_alive())
