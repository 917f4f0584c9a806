"""Acceptor associations whose threads wait for work instead of polling.

pynetdicom runs every association as two threads that poll: the DUL thread sleeps 1 ms
whenever its event queue is empty, then checks the socket (``select`` with no timeout) and
its outgoing queue; the association thread sleeps 1 ms, then checks for a complete DIMSE
message, a release or an abort. One C-STORE waits for up to three of those sleeps (the
DUL noticing the data, the association noticing the message, the DUL noticing the
response), and every idle association costs two threads waking 1000 times a second: with
16 senders, 32 threads spend much of the one interpreter lock polling.

Here the same loops block until there is something to do:

- the DUL thread waits in ``select`` on its socket and a wake-up socket pair, which every
  queue another thread puts work on writes to (outgoing primitives, events, a kill);
- the association thread waits on an event set when a DIMSE message, an indication
  (release, abort) or the DUL's end arrives.

Both wake at least every :data:`IDLE_CHECK_SECONDS` to check the timers (ARTIM, network
idle) and kill flags exactly as pynetdicom's loops do. The loops are pynetdicom's own
(3.0), with only the sleep replaced; ``tests/unit/scu_scp/test_pynetdicom_contract.py``
fails when the pinned pynetdicom's versions of them change, so a new release is
re-ported, never silently mixed.

Three more per-association costs go with it (bench/ingest.py measures the sum):

- a PDU body is read with as few ``recv`` calls as the kernel allows, not 4 KiB each;
- the acceptor's copy of the server's presentation contexts is made without ``deepcopy``
  (which re-validated about 2,000 UIDs, some 40 ms per association);
- pynetdicom's standard logging handlers (under the AE-wide lock, for every PDU and
  message) are bound only while its logger is at DEBUG: below it they wrote one INFO
  line per instance, "Received Store Request", and nothing else.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import queue
import select
import socket
import ssl
import threading
from datetime import datetime
from typing import Any, cast

from pynetdicom import evt
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom._handlers import (
    standard_dimse_recv_handler,
    standard_dimse_sent_handler,
    standard_pdu_recv_handler,
    standard_pdu_sent_handler,
)
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import AssociationSocket, RequestHandler

__all__ = ["IDLE_CHECK_SECONDS", "WaitingAssociation", "WaitingDUL", "WaitingRequestHandler"]

# pynetdicom's own loggers, for the messages of its loops
DUL_LOGGER = logging.getLogger("pynetdicom.dul")
ASSOCIATION_LOGGER = logging.getLogger("pynetdicom.association")

_STANDARD_LOG_HANDLERS = (
    (evt.EVT_DIMSE_RECV, standard_dimse_recv_handler),
    (evt.EVT_DIMSE_SENT, standard_dimse_sent_handler),
    (evt.EVT_PDU_RECV, standard_pdu_recv_handler),
    (evt.EVT_PDU_SENT, standard_pdu_sent_handler),
)

#: Longest a reactor thread blocks without looking at its timers and kill flags.
IDLE_CHECK_SECONDS = 0.05


class _WakingQueue(queue.Queue):  # type: ignore[type-arg]
    """A queue that calls ``wake`` after every put."""

    def __init__(self, wake: Any) -> None:
        super().__init__()
        self._wake = wake

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._wake()


class _WakeUp:
    """A socket pair the DUL thread's ``select`` waits on besides the peer's socket.

    A socket pair rather than a pipe: once closed, its socket objects refuse to write
    (``OSError``) instead of writing to whatever file reuses the descriptor number.
    """

    def __init__(self) -> None:
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)
        self._owner: int | None = None  # the DUL thread: it never needs waking by itself

    def fileno(self) -> int:
        return self._reader.fileno()

    def set(self) -> None:
        if threading.get_ident() == self._owner:
            return
        with contextlib.suppress(OSError):  # full (already awake) or closed (thread ended)
            self._writer.send(b"\0")

    def drain(self) -> None:
        try:
            while self._reader.recv(4096):
                pass
        except OSError:
            pass

    def close(self) -> None:
        self._reader.close()
        self._writer.close()


class _BulkSocket(AssociationSocket):  # type: ignore[misc]
    """pynetdicom's association socket, reading what a PDU still needs in one call.

    pynetdicom asks the socket for 4 KiB at a time: 128 calls for a 512 KiB image.
    """

    def recv(self, nr_bytes: int) -> bytearray:
        sock = cast(socket.socket, self.socket)
        data = bytearray()
        while len(data) < nr_bytes:
            chunk = sock.recv(nr_bytes - len(data))
            if not chunk:  # end of stream: what was read, as pynetdicom returns it
                break
            data += chunk
        return data


class WaitingDUL(DULServiceProvider):  # type: ignore[misc]
    """pynetdicom's DUL service provider, blocking in ``select`` when it has no work."""

    def __init__(self, assoc: Association, assoc_wake: threading.Event) -> None:
        super().__init__(assoc)
        self._wake_up = _WakeUp()
        self.to_provider_queue = _WakingQueue(self._wake_up.set)
        self.event_queue = _WakingQueue(self._wake_up.set)
        self.to_user_queue = _WakingQueue(assoc_wake.set)
        self._assoc_wake = assoc_wake

    def kill_dul(self) -> None:
        super().kill_dul()
        self._wake_up.set()

    def stop_dul(self) -> bool:
        """As pynetdicom's: stop the reactor if in ``Sta1``, waiting for the thread to end."""
        if self.state_machine.current_state == "Sta1":
            self._kill_thread = True
            self._wake_up.set()
            if self.is_alive() and threading.current_thread() is not self:
                self.join()
            return True
        return False

    def _wait_for_work(self) -> None:
        """Block until the socket has data, another thread queued work, or the next
        timer check is due (what pynetdicom's 1 ms sleep stood for)."""
        timeout = IDLE_CHECK_SECONDS
        artim = self.artim_timer
        if artim._start_time is not None and artim._end_time is None:  # running
            timeout = max(0.0, min(timeout, artim.remaining))
        watched: list[Any] = [self._wake_up]
        transport = self.socket
        sock = transport.socket if transport is not None else None
        if sock is not None and sock.fileno() >= 0:
            if isinstance(sock, ssl.SSLSocket) and sock.pending():
                return  # TLS bytes already decrypted: select would not see them
            watched.append(sock)
        try:
            select.select(watched, [], [], timeout)
        except (OSError, ValueError):
            return  # closed meanwhile: the loop's own checks see it
        self._wake_up.drain()

    def run_reactor(self) -> None:
        """pynetdicom 3.0's ``DULServiceProvider.run_reactor``, waiting instead of
        sleeping; wakes the association thread when it ends."""
        self._wake_up._owner = threading.get_ident()
        try:
            self._run_reactor_loop()
        finally:
            self._wake_up.close()
            self._assoc_wake.set()

    def _run_reactor_loop(self) -> None:
        # Main DUL loop
        self._idle_timer.start()
        self.socket = cast("AssociationSocket", self.socket)
        sleep = False

        while True:
            # Let the assoc reactor off the leash
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
                sleep = True

            if sleep:
                self._wait_for_work()

            if self._kill_thread:
                break

            # Check the ARTIM timer first so its event is placed on the queue
            #   ahead of any other events this loop
            if self.artim_timer.expired:
                self.event_queue.put("Evt18")

            # Check the connection for incoming data
            try:
                # We can either encode and send a primitive **OR**
                #   receive and decode a PDU per loop of the reactor
                if self._process_recv_primitive():  # encode (sent by state machine)
                    pass
                elif self._is_transport_event():  # receive and decode PDU
                    self._idle_timer.restart()
            except Exception as exc:
                DUL_LOGGER.error("Exception in DUL.run(), aborting association")
                DUL_LOGGER.exception(exc)
                # Bypass the state machine and send an A-ABORT
                abort_pdu = A_ABORT_RQ()
                abort_pdu.source = 0x02
                abort_pdu.reason_diagnostic = 0x00
                self.socket.send(abort_pdu.encode())
                self.assoc.is_aborted = True
                self.assoc.is_established = False
                # Hard shutdown of the Association and DUL reactors
                self.assoc._kill = True
                self._kill_thread = True
                return

            # Check the event queue to see if there is anything to do
            try:
                event = self.event_queue.get(block=False)
            # If the queue is empty, return to the start of the loop
            except queue.Empty:
                sleep = True
                continue

            self.state_machine.do_action(event)
            sleep = False


class WaitingAssociation(Association):  # type: ignore[misc]
    """An acceptor association whose reactor waits for messages instead of polling."""

    def __init__(self, ae: Any, mode: str) -> None:
        super().__init__(ae, mode)
        self._work = threading.Event()
        self.dul = WaitingDUL(self, self._work)
        # The timeouts pynetdicom set on the DUL it made in __init__, on this one.
        self.acse_timeout = self.acse_timeout
        self.network_timeout = self.network_timeout
        self.dimse.msg_queue = _WakingQueue(self._work.set)

    def kill(self) -> None:
        super().kill()
        self._work.set()

    def _wait_for_work(self) -> None:
        """Block until a message, an indication or the DUL's end arrives, or the next
        timer check is due (what pynetdicom's 1 ms sleep stood for)."""
        self._work.wait(IDLE_CHECK_SECONDS)

    def _run_reactor(self) -> None:
        """pynetdicom 3.0's ``Association._run_reactor``, waiting instead of sleeping."""
        self._is_paused = False
        busy = False
        while not self._kill:
            if not busy:
                self._wait_for_work()
            # Cleared before looking, so work queued from now on sets it again.
            self._work.clear()

            # A race condition may occur if the Acceptor uses the send_*()
            #   methods as the received DIMSE message may be taken off the
            #   queue before the send_*() method gets to it, so we allow
            #   the reactor to be paused
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False

            # Check with the DIMSE provider to see if a completely decoded
            #   message is available
            context_id, msg = self.dimse.get_msg(block=False)
            busy = bool(msg)
            if msg:
                self._serve_request(msg, cast(int, context_id))

            # Check for release request from the peer
            if self.is_established and self.acse.is_release_requested():
                # Send A-RELEASE response
                self.acse.send_release(is_response=True)
                ASSOCIATION_LOGGER.info("Association Released")
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return

            # Check for abort from either locally or the peer
            if self.acse.is_aborted():
                log_msg = "Association Aborted"
                if self.acse.is_aborted("a-p-abort"):
                    log_msg += " (A-P-ABORT)"
                ASSOCIATION_LOGGER.info(log_msg)
                # Ensure that EVT_ASCE_RECV fires for subscribers
                self.dul.receive_pdu(wait=False)
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return

            # Check if the DULServiceProvider thread is still running
            if not self.dul.is_alive():
                self.kill()
                return

            # Check if network_timeout has expired
            if self.dul.idle_timer_expired():
                ASSOCIATION_LOGGER.error("Network timeout reached")
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()

                self.kill()
                return


class WaitingRequestHandler(RequestHandler):  # type: ignore[misc]
    """pynetdicom's request handler, making :class:`WaitingAssociation` acceptors."""

    def _create_association(self) -> Association:
        """pynetdicom 3.0's ``RequestHandler._create_association`` with our class."""
        assoc = WaitingAssociation(self.ae, MODE_ACCEPTOR)
        assoc._server = self.server

        # Set the thread name
        timestamp = datetime.strftime(datetime.now(), "%Y%m%d%H%M%S")
        assoc.name = f"AcceptorThread@{timestamp}"

        sock = _BulkSocket(assoc, client_socket=self.request)
        assoc.set_socket(sock)

        # Association Acceptor object -> local AE
        assoc.acceptor.maximum_length = self.ae.maximum_pdu_size
        assoc.acceptor.ae_title = self.server.ae_title
        assoc.acceptor.address_info = self.local
        assoc.acceptor.implementation_class_uid = self.ae.implementation_class_uid
        assoc.acceptor.implementation_version_name = self.ae.implementation_version_name
        assoc.acceptor.supported_contexts = _copy_contexts(self.server.contexts)

        # Association Requestor object -> remote AE
        assoc.requestor.address_info = self.remote

        # Bind events to handlers
        for event in self.server._handlers:
            # Intervention events
            if event.is_intervention and self.server._handlers[event]:
                assoc.bind(event, *self.server._handlers[event])
            elif isinstance(event, evt.NotificationEvent):
                for handler in self.server._handlers[event]:
                    handler = cast(evt._HandlerBase, handler)
                    assoc.bind(event, handler[0], handler[1])
        if not logging.getLogger("pynetdicom").isEnabledFor(logging.DEBUG):
            # Logging only, under the AE-wide lock, for every PDU and message: below DEBUG
            # they write one INFO line per instance ("Received Store Request") and no more.
            for event, handler in _STANDARD_LOG_HANDLERS:
                assoc.unbind(event, handler)

        return assoc


def _copy_contexts(contexts: list[PresentationContext]) -> list[PresentationContext]:
    """What ``deepcopy`` gives pynetdicom, without rebuilding every UID.

    A context's only mutable part is its transfer syntax list; UIDs are immutable
    strings. ``deepcopy`` re-validated each UID (about 2,000 for the storage contexts)
    and took some 40 ms of one core per association.
    """
    copies = []
    for context in contexts:
        twin = copy.copy(context)
        twin._transfer_syntax = list(context._transfer_syntax)
        copies.append(twin)
    return copies
