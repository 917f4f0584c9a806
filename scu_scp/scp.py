"""Storage SCP: receives studies from the PACS into the durable spool.

Handlers get their dependencies passed in (no globals) and answer with DIMSE statuses:
0x0000 only once the instance is on disk, 0xA700 when it is not (the PACS retries),
0xC210 for data we cannot file (kept in quarantine, never dropped). Each stored instance
and each association's end (released, aborted, connection closed) is reported to the
:class:`CompletionTracker`; a poller thread seals the studies it finds complete and hands
them to ``on_complete``.

Logs carry UIDs, AE titles and counts only: never patient name, ID or birth date.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from pydicom import uid
from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, _config, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from scu_scp.admission import (
    Admission,
    ScpLimits,
    handle_requested,
    refuse_over_limits,
    refused,
)
from scu_scp.completion import AssociationEnd, CompletionTracker
from scu_scp.connections import PDU_HEADER_BYTES, AssociationSlots, ConnectionLimits
from scu_scp.models import SpooledStudy
from scu_scp.reactor import WaitingRequestHandler
from scu_scp.received import SizeGuard, TooLargeError, discard_partial_dataset, read_received
from scu_scp.receivers import ReceiverProcesses, ReceiverSpec
from scu_scp.security import (
    AllowedCaller,
    CallerPolicy,
    ServerTls,
    TlsHandshakeServer,
    server_ssl_context,
)
from scu_scp.spool import Spool, StudyTooLargeError

__all__ = [
    "STATUS_CANNOT_UNDERSTAND",
    "STATUS_OUT_OF_RESOURCES",
    "TRANSFER_SYNTAXES",
    "CompletionReports",
    "StorageSCP",
    "release_counts",
]

LOGGER = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC210

#: Transfer syntaxes accepted for every storage SOP class: what modalities and PACS send.
TRANSFER_SYNTAXES: tuple[str, ...] = (
    uid.ExplicitVRLittleEndian,
    uid.ImplicitVRLittleEndian,
    uid.ExplicitVRBigEndian,  # retired, still seen
    uid.DeflatedExplicitVRLittleEndian,
    uid.JPEGBaseline8Bit,
    uid.JPEGExtended12Bit,
    uid.JPEGLossless,
    uid.JPEGLosslessSV1,
    uid.JPEGLSLossless,
    uid.JPEGLSNearLossless,
    uid.JPEG2000Lossless,
    uid.JPEG2000,
    uid.RLELossless,
)

_UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
MAXIMUM_PDU_SIZE = 1_048_576  # fewer, larger PDUs: less per-PDU overhead on big images
# pynetdicom's own association count includes connections still waiting for their
# A-ASSOCIATE-RQ; AssociationSlots enforces max_associations instead (scu_scp/connections.py).
_PYNETDICOM_MAX_ASSOCIATIONS = 1_000_000
DIMSE_TIMEOUT = 120.0  # one large instance (multi-frame) may take a while
NETWORK_TIMEOUT = 300.0  # PACS may keep an idle association open between series


class CompletionReports(Protocol):
    """What the C-STORE and association-end handlers tell about arrivals: the SCP's own
    :class:`CompletionTracker`, or in a receiver process the link to the SCP's."""

    def touch(self, study_uid: str, at: float | None = None, *, carrier: Any = None) -> None: ...

    def association_ended(
        self, carrier: Any, end: AssociationEnd, at: float | None = None
    ) -> None: ...


@dataclass
class _Receiver:
    """State shared by the C-STORE handler threads (one per association)."""

    spool: Spool
    tracker: CompletionReports
    admission: Admission | None = None  # None: no allow-list, no limits
    quiet_only_aets: tuple[str, ...] = ()  # glob patterns: their release means nothing
    paused: bool = False
    stored: int = 0
    quarantined: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, *, stored: int = 0, quarantined: int = 0) -> None:
        with self.lock:
            self.stored += stored
            self.quarantined += quarantined


def release_counts(calling_ae: str, quiet_only_aets: Sequence[str]) -> bool:
    """Whether an association's release may complete ``calling_ae``'s studies.

    ``quiet_only_aets`` are glob patterns (``*``, ``?``, ``[...]``, case-sensitive as AE
    titles are) of senders whose studies complete only by the quiet period.
    """
    return not any(fnmatch.fnmatchcase(calling_ae, pattern) for pattern in quiet_only_aets)


def _calling(event: Any) -> tuple[str, str]:
    requestor = event.assoc.requestor
    return str(requestor.ae_title).strip(), str(requestor.address)


def handle_echo(event: Any) -> int:
    """C-ECHO: lets the PACS admin verify the node."""
    ae, host = _calling(event)
    LOGGER.info("C-ECHO from %s@%s", ae, host)
    return STATUS_SUCCESS


def _quarantine(
    receiver: _Receiver, event: Any, reason: str, calling_ae: str, log_reason: str | None = None
) -> int:
    """Keep the received file with ``reason``; ``log_reason`` is a PHI-free version for the log."""
    summary = reason if log_reason is None else log_reason
    try:
        path = receiver.spool.quarantine_file(event.dataset_path, reason, calling_ae=calling_ae)
    except OSError as exc:
        LOGGER.error("cannot quarantine instance from %s (%s): %s", calling_ae, summary, exc)
        return STATUS_OUT_OF_RESOURCES
    receiver.count(quarantined=1)
    LOGGER.warning("quarantined instance from %s as %s: %s", calling_ae, path.name, summary)
    return STATUS_CANNOT_UNDERSTAND


def _instance_limit(receiver: _Receiver) -> int:
    return receiver.admission.limits.max_instance_bytes if receiver.admission else 0


def handle_store(event: Any, receiver: _Receiver) -> int | Dataset:
    """C-STORE: file the instance durably, then answer.

    pynetdicom has written the dataset to ``event.dataset_path`` as it arrived
    (``STORE_RECV_CHUNKED_DATASET``); only its size and UIDs are read here, and the file
    itself is moved into the spool. pynetdicom deletes it after we return if it is
    still there (refused, or an identical resend).
    """
    calling_ae, calling_host = _calling(event)
    if receiver.paused:
        LOGGER.info("C-STORE from %s refused: receiver paused", calling_ae)
        return STATUS_OUT_OF_RESOURCES
    limit = _instance_limit(receiver)
    try:
        received = read_received(event.dataset_path, event.context.transfer_syntax, limit)
    except TooLargeError:
        LOGGER.warning(
            "C-STORE from %s refused: dataset (inflated) exceeds scp.max_instance_bytes (%d)",
            calling_ae,
            limit,
        )
        return refused("instance over scp.max_instance_bytes")
    except Exception as exc:  # noqa: BLE001 - any decode error; pynetdicom would hide it
        # The message may quote element values: it goes to the reason file, not the log.
        return _quarantine(
            receiver,
            event,
            f"cannot decode dataset: {type(exc).__name__}: {exc}",
            calling_ae,
            log_reason=f"cannot decode dataset ({type(exc).__name__})",
        )
    refusal = refuse_over_limits(received.dataset_bytes, receiver.admission, calling_ae)
    if refusal is not None:
        return refusal
    uids = (received.study_uid, received.series_uid, received.sop_uid)
    missing = [name for name, uid in zip(_UID_KEYWORDS, uids, strict=True) if not uid]
    if missing:
        return _quarantine(receiver, event, f"missing {', '.join(missing)}", calling_ae)
    study_uid, series_uid, sop_uid = (str(uid) for uid in uids)
    max_study_bytes = receiver.admission.limits.max_study_bytes if receiver.admission else 0
    try:
        receiver.spool.store_file(
            received.path,
            study_uid=study_uid,
            series_uid=series_uid,
            sop_uid=sop_uid,
            calling_ae=calling_ae,
            calling_host=calling_host,
            max_study_bytes=max_study_bytes,
        )
    except StudyTooLargeError:
        LOGGER.warning(
            "C-STORE of %s from %s refused: study %s would exceed scp.max_study_bytes (%d)",
            sop_uid,
            calling_ae,
            study_uid,
            max_study_bytes,
        )
        return refused("study over scp.max_study_bytes")
    except ValueError as exc:
        return _quarantine(receiver, event, str(exc), calling_ae)
    except OSError as exc:
        LOGGER.error("cannot store %s from %s: %s", sop_uid, calling_ae, exc)
        return STATUS_OUT_OF_RESOURCES
    carrier = event.assoc if release_counts(calling_ae, receiver.quiet_only_aets) else None
    receiver.tracker.touch(study_uid, carrier=carrier)
    receiver.count(stored=1)
    LOGGER.debug("stored %s (study %s) from %s", sop_uid, study_uid, calling_ae)
    return STATUS_SUCCESS


def _log_association(event: Any) -> None:
    ae, host = _calling(event)
    LOGGER.info("association %s from %s@%s", event.event.name, ae, host)


_ENDS = {
    evt.EVT_RELEASED.name: AssociationEnd.RELEASED,
    evt.EVT_ABORTED.name: AssociationEnd.ABORTED,
    evt.EVT_CONN_CLOSE.name: AssociationEnd.CLOSED,
}


def handle_association_end(event: Any, tracker: CompletionReports) -> None:
    """EVT_RELEASED / EVT_ABORTED / EVT_CONN_CLOSE: tell the tracker how the association
    ended (after its last C-STORE: pynetdicom runs both in the association's thread)."""
    tracker.association_ended(event.assoc, _ENDS[event.event.name])


def handle_cut_off(event: Any) -> None:
    """EVT_ABORTED / EVT_CONN_CLOSE: delete the file of a dataset cut off mid-transfer."""
    discard_partial_dataset(event.assoc)


_SLOT_ENDS = (evt.EVT_REJECTED, evt.EVT_RELEASED, evt.EVT_ABORTED, evt.EVT_CONN_CLOSE)


def _give_back_slot(event: Any, slots: AssociationSlots) -> None:
    """The association no longer holds a ``max_associations`` slot."""
    slots.give_back(event.assoc)


class _ChunkedReceive:
    """pynetdicom's ``STORE_RECV_CHUNKED_DATASET``, on while any StorageSCP runs here.

    The switch is module-level in pynetdicom, so it is counted: the first SCP to start turns
    it on, the last to stop puts back what it was, and other pynetdicom receivers in this
    process (tests, tools) see ``event.encoded_dataset()`` as usual once no SCP runs.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._before = False

    def acquire(self) -> None:
        with self._lock:
            if self._users == 0:
                self._before = bool(_config.STORE_RECV_CHUNKED_DATASET)
                _config.STORE_RECV_CHUNKED_DATASET = True
            self._users += 1

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0:
                _config.STORE_RECV_CHUNKED_DATASET = self._before


_CHUNKED_RECEIVE = _ChunkedReceive()


@dataclass
class _Retry:
    study: SpooledStudy
    attempts: int
    next_at: float


class StorageSCP:
    """C-ECHO/C-STORE SCP over a :class:`Spool`, calling ``on_complete`` per sealed study."""

    def __init__(
        self,
        *,
        ae_title: str,
        host: str,
        port: int,
        spool: Spool,
        on_complete: Callable[[SpooledStudy], object],
        quiet_seconds: float,
        release_grace_seconds: float | None = None,
        quiet_only_aets: Sequence[str] = (),
        poll_interval: float = 0.5,
        max_associations: int = 10,
        retry_initial: float = 1.0,
        retry_max: float = 300.0,
        allowed_callers: Sequence[AllowedCaller] = (),
        tls: ServerTls | None = None,
        limits: ScpLimits | None = None,
        connection_limits: ConnectionLimits | None = None,
        processes: int = 1,
        process_setup: Callable[[], object] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 1 <= len(ae_title.strip()) <= 16 or "\\" in ae_title:
            raise ValueError(f"ae_title must be 1-16 characters without backslash: {ae_title!r}")
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be 0-65535, got {port}")
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be > 0, got {poll_interval}")
        if retry_initial <= 0 or retry_max < retry_initial:
            raise ValueError("retry_initial must be > 0 and retry_max >= retry_initial")
        if max_associations < 1:
            raise ValueError(f"max_associations must be >= 1, got {max_associations}")
        if processes < 1:
            raise ValueError(f"processes must be >= 1, got {processes}")
        self.ae_title = ae_title.strip()
        self.host = host
        self._requested_port = port
        self.spool = spool
        self.on_complete = on_complete
        self.poll_interval = poll_interval
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.processes = processes
        # What each receiver process builds its listener from (port: the bound one).
        self._receiver_spec = ReceiverSpec(
            ae_title=self.ae_title,
            host=host,
            port=port,
            spool_root=spool.root,
            quiet_only_aets=tuple(quiet_only_aets),
            max_associations=max_associations,
            allowed_callers=tuple(allowed_callers),
            tls=tls,
            limits=limits,
            connection_limits=connection_limits,
            setup=process_setup,
        )
        self._receivers: ReceiverProcesses | None = None
        self._clock = clock  # of the completion tracker; tests inject one
        self.tracker = CompletionTracker(
            quiet_seconds, clock, release_grace_seconds=release_grace_seconds
        )
        self.slots = AssociationSlots(max_associations, spool.state / "association-slots")
        # The longest PDU we accept follows from the maximum we advertise.
        self.connection_limits = replace(
            connection_limits or ConnectionLimits(),
            max_pdu_length=MAXIMUM_PDU_SIZE + PDU_HEADER_BYTES,
        )
        self.admission = Admission(
            policy=CallerPolicy.of(allowed_callers),
            spool_root=spool.root,
            limits=limits or ScpLimits(),
            slots=self.slots,
        )
        # Built now, so a bad certificate or key stops start-up with the file named.
        self._ssl_context = server_ssl_context(tls) if tls is not None else None
        self._receiver = _Receiver(
            spool=spool,
            tracker=self.tracker,
            admission=self.admission,
            quiet_only_aets=tuple(quiet_only_aets),
        )
        self._ae = self._build_ae()
        self._server: ThreadedAssociationServer | None = None
        self._poller: threading.Thread | None = None
        self._stop = threading.Event()
        self._retries: list[_Retry] = []

    def _build_ae(self) -> AE:
        ae = AE(ae_title=self.ae_title)
        ae.maximum_pdu_size = MAXIMUM_PDU_SIZE
        # The acceptor waits this long for the A-ASSOCIATE-RQ (and ARTIM after a reject).
        ae.acse_timeout = self.connection_limits.associate_request_timeout
        ae.dimse_timeout = DIMSE_TIMEOUT
        ae.network_timeout = NETWORK_TIMEOUT
        ae.maximum_associations = _PYNETDICOM_MAX_ASSOCIATIONS
        ae.add_supported_context(Verification)
        for cx in AllStoragePresentationContexts:
            if cx.abstract_syntax is not None:
                ae.add_supported_context(cx.abstract_syntax, list(TRANSFER_SYNTAXES))
        return ae

    # -- lifecycle ----------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound TCP port (the real one when started with port=0)."""
        if self._server is not None:
            return int(self._server.server_address[1])
        return self._requested_port

    @property
    def paused(self) -> bool:
        """While paused, C-STORE answers 0xA700 so the PACS keeps the study and retries."""
        return self._receiver.paused

    @paused.setter
    def paused(self, value: bool) -> None:
        self._receiver.paused = value
        if self._receivers is not None:
            self._receivers.set_paused(value)

    def start(self) -> None:
        """Listen and start sealing; resumes studies left incoming by a previous run.

        With ``processes`` > 1 the other receiver processes start too, on the same port
        (``scu_scp/receivers.py``); this process alone seals and hands studies over.
        """
        if self._server is not None:
            raise RuntimeError("StorageSCP already started")
        self._seed_from_spool()
        self._check_receive_folder()
        discarded = self.spool.discard_unfinished_receives()
        if discarded:
            LOGGER.warning("deleted %d datasets cut off when the SCP last stopped", discarded)
        self._listen(reuse_port=self.processes > 1)
        if self.processes > 1:
            spec = replace(self._receiver_spec, port=self.port)
            self._receivers = ReceiverProcesses(spec, self.tracker, self.spool)
            self._receivers.start(self.processes - 1, paused=self.paused)
        self._stop.clear()
        self._poller = threading.Thread(
            target=self._poll_loop, name=f"scp-completion-{self.ae_title}", daemon=True
        )
        self._poller.start()
        LOGGER.info(
            "storage SCP %s listening on %s:%d%s%s",
            self.ae_title,
            self.host,
            self.port,
            " (TLS)" if self._ssl_context is not None else "",
            f" in {self.processes} processes" if self.processes > 1 else "",
        )

    def listen(self, tracker: CompletionReports) -> None:
        """Receive into the spool without sealing, reporting arrivals to ``tracker``.

        What each receiver process of a multi-process SCP runs (``scu_scp/receivers.py``):
        the port is shared (``SO_REUSEPORT``) and the process that called ``start`` seals.
        """
        if self._server is not None:
            raise RuntimeError("StorageSCP already started")
        self.tracker = tracker  # type: ignore[assignment]
        self._receiver.tracker = tracker
        self._listen(reuse_port=True)

    def _listen(self, *, reuse_port: bool) -> None:
        handlers: list[Any] = [
            (evt.EVT_REQUESTED, handle_requested, [self.admission]),
            (evt.EVT_REJECTED, _log_association),
            (evt.EVT_C_ECHO, handle_echo),
            (evt.EVT_C_STORE, handle_store, [self._receiver]),
            (evt.EVT_ACCEPTED, _log_association),
            (evt.EVT_RELEASED, _log_association),
            (evt.EVT_ABORTED, _log_association),
            (evt.EVT_RELEASED, handle_association_end, [self._receiver.tracker]),
            (evt.EVT_ABORTED, handle_association_end, [self._receiver.tracker]),
            (evt.EVT_CONN_CLOSE, handle_association_end, [self._receiver.tracker]),
            (evt.EVT_ABORTED, handle_cut_off),
            (evt.EVT_CONN_CLOSE, handle_cut_off),
            *((event, _give_back_slot, [self.slots]) for event in _SLOT_ENDS),
        ]
        if self.admission.limits.max_instance_bytes:
            guard = SizeGuard(self.admission.limits.max_instance_bytes)
            handlers.append((evt.EVT_DATA_RECV, guard.on_data))
        server = self._ae.make_server(
            (self.host, self._requested_port),
            ssl_context=self._ssl_context,
            evt_handlers=handlers,
            server_class=TlsHandshakeServer,
            connection_limits=self.connection_limits,
            state_folder=self.spool.state,
            request_handler=WaitingRequestHandler,
            reuse_port=reuse_port,
        )
        # Every C-STORE dataset goes to a file as it arrives instead of memory.
        _CHUNKED_RECEIVE.acquire()
        # What AE.start_server(block=False) does, with our server class. Its shutdown()
        # removes it from the AE's private server list, so it is registered there too
        # (pinned in pyproject; tests/unit/scu_scp/test_pynetdicom_contract.py checks it).
        threading.Thread(
            target=server.serve_forever, name=f"scp-server-{self.ae_title}", daemon=True
        ).start()
        self._ae._servers.append(server)
        self._server = server

    def _check_receive_folder(self) -> None:
        """Say so when pynetdicom's files cannot be renamed into the spool, only copied."""
        folder = Path(tempfile.gettempdir())
        if folder.stat().st_dev != self.spool.tmp.stat().st_dev:
            LOGGER.warning(
                "C-STORE datasets arrive in %s, on another file system than the spool %s: "
                "each instance is copied once more; set TMPDIR to a folder on the spool's "
                "file system",
                folder,
                self.spool.root,
            )

    def stop(self) -> None:
        """Stop accepting, then stop sealing; unsealed studies stay in the spool."""
        receivers, self._receivers = self._receivers, None
        if receivers is not None:
            receivers.stop()  # their last reports reach the tracker before sealing stops
        server, self._server = self._server, None
        if server is not None:
            # Stop listening at once (the accept loop notices within its half-second poll):
            # the other processes sharing the port, or the next SCP, take new connections.
            if server.socket is not None:
                with contextlib.suppress(OSError):
                    server.socket.shutdown(socket.SHUT_RDWR)
            server.shutdown()
            _CHUNKED_RECEIVE.release()
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=30)
            self._poller = None
        if self._retries:
            LOGGER.warning(
                "stopping with %d sealed batches not handed over: %s",
                len(self._retries),
                ", ".join(r.study.batch_id for r in self._retries),
            )
        LOGGER.info(
            "storage SCP %s stopped (%d stored, %d quarantined)",
            self.ae_title,
            self._receiver.stored,
            self._receiver.quarantined,
        )

    def force_complete(self, study_uid: str) -> None:
        """Seal ``study_uid`` at the next poll, released or not, quiet or not."""
        self.tracker.force(study_uid)

    # -- completion ---------------------------------------------------------------------

    def _seed_from_spool(self) -> None:
        """Start each pending study's quiet period again, from now.

        A study cut off by a crash or a stop is likely partial, and its sender resends it
        once we answer again: counting from its last write would seal the part at once
        after a long downtime, and the resend would become a second job. Association
        state does not survive a restart: these studies complete by the quiet period only
        (``touch`` without a carrier), even if their sender sends more."""
        pending = self.spool.pending()
        for study_uid in pending:
            self.tracker.touch(study_uid)
        if pending:
            LOGGER.info("resuming %d incoming studies from the spool", len(pending))

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.poll_interval):
            if self._receivers is not None:
                self._receivers.replace_dead()
            self.poll_once()

    def poll_once(self) -> None:
        """One step of the completion loop: seal due studies and hand them over; retry
        failed hand-overs with backoff. The loop calls it every ``poll_interval``."""
        for study_uid, reason in self.tracker.due_with_reasons():
            try:
                study = self.spool.seal(study_uid)
            except OSError as exc:
                LOGGER.error("cannot seal study %s, retrying later: %s", study_uid, exc)
                self.tracker.touch(study_uid)
                continue
            if study is not None:
                LOGGER.info(
                    "study %s complete (%s): batch %s, %d instances from %s",
                    study.study_uid,
                    reason.value,
                    study.batch_id,
                    study.instance_count,
                    study.calling_ae,
                )
                self._hand_over(_Retry(study, attempts=0, next_at=0.0))
        now = time.monotonic()
        ready = [r for r in self._retries if r.next_at <= now]
        self._retries = [r for r in self._retries if r.next_at > now]
        for retry in ready:
            self._hand_over(retry)

    def _hand_over(self, item: _Retry) -> None:
        study = item.study
        try:
            self.on_complete(study)
        except Exception as exc:  # a failing consumer must not lose the study
            item.attempts += 1
            delay = min(self.retry_max, self.retry_initial * 2 ** (item.attempts - 1))
            item.next_at = time.monotonic() + delay
            self._retries.append(item)
            LOGGER.error(
                "on_complete failed for study %s batch %s (attempt %d, %s); retry in %.1f s",
                study.study_uid,
                study.batch_id,
                item.attempts,
                type(exc).__name__,
                delay,
            )
            LOGGER.debug("on_complete failure detail", exc_info=True)
