"""Receiver processes: one SCP port served by several processes (``scp.processes``).

pynetdicom runs every association as Python threads of one process, so concurrent senders
share one interpreter lock however many cores the machine has. With ``scp.processes`` N,
the SCP process listens as before and starts N-1 receiver processes that listen on the
same port (``SO_REUSEPORT``: the kernel shares incoming connections out between them).

- Every process stores into the same spool; the spool's lock between storing into a
  study and sealing it is also a file lock (``state/spool.lock``), and a study's byte
  count for ``scp.max_study_bytes`` is kept on disk, so all processes see it.
- ``scp.max_associations`` and ``scp.max_connections_per_address`` count the connections
  of all processes (lock files, ``scu_scp/connections.py``).
- Only the SCP process seals. A receiver reports each stored instance (its study and the
  association it came over) and each association's end over a pipe, in the order they
  happened, to the SCP's :class:`~scu_scp.completion.CompletionTracker`: completion on
  release and on quiet work as with one process, and no study is split between them.
- The admin's intake pause reaches every receiver; a receiver that dies is replaced,
  its open associations count as cut off (the sender resends, the study waits for its
  quiet period), and any study it stored but did not report is picked up from the spool.

Receivers are started with ``spawn`` (a fresh interpreter: forking a threaded process is
unsafe) and run ``setup`` first (logging, file mode mask), then listen until the SCP
says stop or goes away.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import os
import signal
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from scu_scp.admission import ScpLimits
from scu_scp.completion import AssociationEnd, CompletionTracker
from scu_scp.connections import ConnectionLimits
from scu_scp.security import AllowedCaller, ServerTls
from scu_scp.spool import Spool

__all__ = ["ReceiverProcesses", "ReceiverSpec", "run_receiver"]

LOGGER = logging.getLogger(__name__)

_START_SECONDS = 60.0  # a new interpreter importing pydicom and pynetdicom on a busy host
_STOP_SECONDS = 15.0  # a receiver finishing its in-flight stores before it is killed
_RESTART_DELAY = (1.0, 30.0)  # seconds before a dead receiver is replaced, doubling


@dataclass(frozen=True)
class ReceiverSpec:
    """Everything a receiver process needs to listen as the SCP does (picklable)."""

    ae_title: str
    host: str
    port: int
    spool_root: Path
    quiet_only_aets: tuple[str, ...]
    max_associations: int
    allowed_callers: tuple[AllowedCaller, ...]
    tls: ServerTls | None
    limits: ScpLimits | None
    connection_limits: ConnectionLimits | None
    setup: Callable[[], object] | None = None


# -- in the receiver process ---------------------------------------------------------------


class _TrackerLink:
    """The receiver's completion reports, sent to the SCP process in the order made.

    Associations become tokens unique to this process (``pid-n``): the SCP's tracker keys
    carriers by them. Every end is sent (a release, then the closed connection), as the
    tracker settles repeats itself.
    """

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self._tokens: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
        self._numbers = itertools.count(1)
        self._prefix = f"{os.getpid()}-"
        self._gone = False

    def listening(self) -> None:
        self._send(("listening",))

    def touch(self, study_uid: str, at: float | None = None, *, carrier: Any = None) -> None:
        with self._lock:
            token = None
            if carrier is not None:
                token = self._tokens.get(carrier)
                if token is None:
                    token = self._tokens[carrier] = f"{self._prefix}{next(self._numbers)}"
        self._send(("touch", study_uid, token))

    def association_ended(self, carrier: Any, end: AssociationEnd, at: float | None = None) -> None:
        with self._lock:
            token = self._tokens.get(carrier)
        if token is not None:  # it carried instances: the tracker knows it
            self._send(("end", token, end.value))

    def _send(self, message: tuple[Any, ...]) -> None:
        """Send in the order called; once the SCP process is gone, drop reports (what was
        stored stays in the spool, and the next SCP resumes it by the quiet period)."""
        with self._lock:
            if self._gone:
                return
            try:
                self._conn.send(message)
            except (OSError, ValueError):
                self._gone = True
                LOGGER.warning("SCP process gone: receiver %d stops reporting", os.getpid())


def run_receiver(spec: ReceiverSpec, conn: Connection, paused: bool) -> None:
    """A receiver process: listen until the SCP process says stop or goes away."""
    from scu_scp.scp import StorageSCP  # here: scu_scp.scp imports this module

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the group: the SCP stops us
    if spec.setup is not None:
        spec.setup()
    spool = Spool(spec.spool_root)
    tempfile.tempdir = str(spool.receiving)  # as the SCP process: renamed in, never copied
    scp = StorageSCP(
        ae_title=spec.ae_title,
        host=spec.host,
        port=spec.port,
        spool=spool,
        on_complete=lambda study: None,  # never called: this process does not seal
        quiet_seconds=0.0,
        quiet_only_aets=spec.quiet_only_aets,
        max_associations=spec.max_associations,
        allowed_callers=spec.allowed_callers,
        tls=spec.tls,
        limits=spec.limits,
        connection_limits=spec.connection_limits,
    )
    scp.paused = paused
    parent = multiprocessing.parent_process()
    if parent is not None and not parent.is_alive():
        LOGGER.warning("SCP process gone before receiver %d listened: not listening", os.getpid())
        return
    link = _TrackerLink(conn)
    scp.listen(link)
    link.listening()
    LOGGER.info("SCP receiver process %d listening on %s:%d", os.getpid(), spec.host, spec.port)
    try:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                LOGGER.warning("SCP process gone: receiver %d stops", os.getpid())
                break
            if message[0] == "paused":
                scp.paused = bool(message[1])
            elif message[0] == "stop":
                break
    finally:
        scp.stop()


# -- in the SCP process --------------------------------------------------------------------


@dataclass
class _Child:
    number: int
    process: multiprocessing.process.BaseProcess
    conn: Connection
    carriers: set[Hashable] = field(default_factory=set)  # open associations it reported
    listening: bool = False
    send_lock: threading.Lock = field(default_factory=threading.Lock)


class ReceiverProcesses:
    """The SCP process's side: starts receivers, feeds their reports to ``tracker``."""

    def __init__(self, spec: ReceiverSpec, tracker: CompletionTracker, spool: Spool) -> None:
        self.spec = spec
        self.tracker = tracker
        self.spool = spool
        self._context = multiprocessing.get_context("spawn")
        self._children: dict[int, _Child] = {}
        self._dead: dict[int, float] = {}  # receiver number -> when to start it again
        self._restarts: dict[int, int] = {}
        self._lock = threading.Lock()
        self._paused = False
        self._closing = False  # stop() asked the receivers to end: their exits are expected
        self._stopping = threading.Event()  # the report reader ends
        self._reader: threading.Thread | None = None

    def start(self, count: int, *, paused: bool = False) -> None:
        """Start ``count`` receivers and return once they listen (or after a minute)."""
        self._paused = paused
        for number in range(1, count + 1):
            self._spawn(number)
        self._reader = threading.Thread(
            target=self._read_reports, name="scp-receiver-reports", daemon=True
        )
        self._reader.start()
        deadline = time.monotonic() + _START_SECONDS
        while self.listening() < count and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.listening() < count:
            LOGGER.warning(
                "%d of %d SCP receiver processes listening after %.0f s; going on",
                self.listening(),
                count,
                _START_SECONDS,
            )

    def _spawn(self, number: int) -> None:
        ours, theirs = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=run_receiver,
            args=(self.spec, theirs, self._paused),
            name=f"scp-receiver-{number}",
            daemon=True,
        )
        process.start()
        theirs.close()
        child = _Child(number, process, ours)
        with self._lock:
            self._children[number] = child
        self._send(child, ("paused", self._paused))  # in case it changed while it started
        LOGGER.info("started SCP receiver process %d (pid %s)", number, process.pid)

    def listening(self) -> int:
        """Receiver processes listening now (not counting the SCP process itself)."""
        with self._lock:
            return sum(1 for c in self._children.values() if c.listening)

    def set_paused(self, paused: bool) -> None:
        self._paused = paused
        self._send_all(("paused", paused))

    def _send_all(self, message: tuple[Any, ...]) -> None:
        with self._lock:
            children = list(self._children.values())
        for child in children:
            self._send(child, message)

    @staticmethod
    def _send(child: _Child, message: tuple[Any, ...]) -> None:
        try:
            with child.send_lock:
                child.conn.send(message)
        except OSError:
            pass  # it died: replace_dead starts another with the current state

    # -- reports -----------------------------------------------------------------------

    def _read_reports(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                by_conn = {c.conn: c for c in self._children.values()}
            if not by_conn:
                self._stopping.wait(0.2)
                continue
            for conn in wait(list(by_conn), timeout=0.2):
                child = by_conn[conn]  # type: ignore[index]
                try:
                    message = child.conn.recv()
                except (EOFError, OSError):
                    self._gone(child)
                    continue
                try:
                    self._apply(child, message)
                except Exception:  # never stop reading: the other reports still count
                    LOGGER.exception("bad report from SCP receiver process %d", child.number)

    def _apply(self, child: _Child, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "listening":
            child.listening = True
            self._restarts.pop(child.number, None)  # it works: the next death waits 1 s again
        elif kind == "touch":
            _, study_uid, token = message
            if token is not None:
                child.carriers.add(token)
            self.tracker.touch(study_uid, carrier=token)
        elif kind == "end":
            _, token, end = message
            child.carriers.discard(token)
            self.tracker.association_ended(token, AssociationEnd(end))

    def _gone(self, child: _Child) -> None:
        """A receiver's pipe closed: it stopped, or died (then say so and replace it).

        Only this thread (the report reader) waits for receivers to end: a process is
        reaped once, here, after it left ``_children``, so ``stop`` never signals a process
        whose number may already belong to another.
        """
        with self._lock:
            if self._children.get(child.number) is child:
                del self._children[child.number]
        child.process.join(timeout=5)
        for token in child.carriers:  # cut off: the senders resend, quiet period decides
            self.tracker.association_ended(token, AssociationEnd.CLOSED)
        child.carriers.clear()
        child.conn.close()
        if self._closing:
            return
        # Stored but never reported (died between the two): the quiet period seals it.
        known = self.tracker.pending()
        for study_uid in self.spool.pending():
            if study_uid not in known:
                self.tracker.touch(study_uid)
        restarts = self._restarts.get(child.number, 0)
        delay = min(_RESTART_DELAY[1], _RESTART_DELAY[0] * 2**restarts)
        self._restarts[child.number] = restarts + 1
        LOGGER.error(
            "SCP receiver process %d (pid %s) exited with status %s; starting another in %.0f s",
            child.number,
            child.process.pid,
            child.process.exitcode,
            delay,
        )
        with self._lock:
            self._dead[child.number] = time.monotonic() + delay

    def replace_dead(self) -> None:
        """Start receivers whose restart delay has passed (called by the SCP's poller)."""
        if self._closing:
            return
        now = time.monotonic()
        with self._lock:
            due = [n for n, at in self._dead.items() if at <= now]
            for number in due:
                del self._dead[number]
        for number in due:
            self._spawn(number)

    # -- stop --------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask every receiver to stop and wait until each has ended (its last reports
        applied); one still running after ``_STOP_SECONDS`` is killed."""
        self._closing = True
        self._send_all(("stop",))
        if not self._wait_all_gone(_STOP_SECONDS):
            with self._lock:  # still in _children: not reaped yet, safe to signal
                for child in self._children.values():
                    LOGGER.warning("SCP receiver process %d did not stop: killing it", child.number)
                    child.process.kill()
            self._wait_all_gone(5.0)
        with self._lock:
            self._dead.clear()
        self._stopping.set()
        if self._reader is not None:
            self._reader.join(timeout=5)

    def _wait_all_gone(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            with self._lock:
                if not self._children:
                    return True
            time.sleep(0.02)
        return False
