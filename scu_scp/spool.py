"""Durable on-disk spool for received DICOM instances.

Layout under ``root``::

    incoming/<study_uid>/study.json                 written once, at the first instance
    incoming/<study_uid>/<series_uid>/<sop_uid>.dcm
    studies/<batch_id>/...                          sealed: same layout, study.json completed
    quarantine/<name>.dcm + <name>.reason.json      data that could not be filed
    superseded/<study_uid>/<series_uid>/<sop_uid>.<time>-<hex>.dcm
                                                    earlier copies of an instance re-sent
                                                    with different content
    tmp/                                            partial writes (never read)
    receiving/                                      datasets still arriving at the SCP
                                                    (pynetdicom's files; see receiving)
    state/spool.lock                                the store/seal lock between processes
    state/study-bytes/<study_uid>                   bytes of each incoming study so far
                                                    (a cache for scp.max_study_bytes,
                                                    recounted from the files when missing)

An instance is fsynced, renamed into place and its directory fsynced (one file and one
directory fsync per instance), so a success status is only returned to the PACS for data
that survives a power cut. Files are created 0600 and folders 0700 whatever the umask:
the spool holds patient data.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import secrets
import shutil
import stat
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path
from typing import Any, BinaryIO

from scu_scp.models import SpooledStudy

__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "METADATA_NAME",
    "STALE_PARTIAL_SECONDS",
    "Spool",
    "StudyTooLargeError",
    "UnknownBatchError",
    "fsync_dir",
    "validate_uid",
]

LOGGER = logging.getLogger(__name__)

METADATA_NAME = "study.json"
_UID_RE = re.compile(r"[0-9]+(\.[0-9]+)*")
_UID_MAX_LEN = 64
STALE_PARTIAL_SECONDS = 3600.0
_BATCH_RE = re.compile(r"[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}")
FILE_MODE = 0o600
DIR_MODE = 0o700
_COMPARE_CHUNK = 1 << 20


class UnknownBatchError(LookupError):
    """No sealed batch has the requested id."""


class StudyTooLargeError(Exception):
    """Storing the instance would take its incoming study over the configured size limit."""


def validate_uid(value: object, name: str) -> str:
    """Return ``value`` if it is a DICOM UID; it becomes a path component, so be strict."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} is missing or empty")
    if len(value) > _UID_MAX_LEN or not _UID_RE.fullmatch(value):
        raise ValueError(f"{name} is not a valid DICOM UID: {value[:80]!r}")
    return value


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _fsync_dir(path: Path) -> None:
    """Make a rename or file creation inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


#: Public name for other packages that rename into their own folders (the retention purge).
fsync_dir = _fsync_dir


def _mkdir_private(path: Path) -> None:
    """``mkdir`` with mode 0700 whatever the umask (an existing folder is left alone)."""
    try:
        path.mkdir(mode=DIR_MODE)
    except FileExistsError:
        return
    path.chmod(DIR_MODE)


def _make_private(directory: Path) -> None:
    """Tighten an existing folder to 0700; a process that does not own it says so."""
    if stat.S_IMODE(directory.stat().st_mode) == DIR_MODE:
        return
    try:
        directory.chmod(DIR_MODE)
    except PermissionError:
        LOGGER.warning("cannot make spool folder %s private (mode 0700): not its owner", directory)


def _makedirs_durable(path: Path, stop: Path) -> None:
    """Create ``path`` and fsync every parent whose entry list changed (up to ``stop``)."""
    missing: list[Path] = []
    current = path
    while not current.exists() and current != stop:
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        _mkdir_private(directory)
        _fsync_dir(directory.parent)


def _fsync_file_private(path: Path) -> None:
    """fsync a file written by someone else (pynetdicom) and make it 0600."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fchmod(fd, FILE_MODE)
        os.fsync(fd)
    finally:
        os.close(fd)


def _same_content(a: Path, b: Path) -> bool:
    """Whether two files hold the same bytes (compared in chunks: they may be large)."""
    if a.stat().st_size != b.stat().st_size:
        return False
    with a.open("rb") as fa, b.open("rb") as fb:
        while True:
            chunk = fa.read(_COMPARE_CHUNK)
            if chunk != fb.read(_COMPARE_CHUNK):
                return False
            if not chunk:
                return True


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class _SpoolLock:
    """Held while a study's folder changes: a thread lock for this process's association
    threads, then an ``flock`` on ``state/spool.lock`` for other processes (the SCP's
    receiver processes, a fetch adopting a batch). Both are needed: threads of one process
    share the lock file's open description, which ``flock`` does not tell apart.
    """

    def __init__(self, path: Path) -> None:
        self._thread = threading.Lock()
        # A file object, closed with the spool when it is collected.
        self._file = path.open("ab")
        os.fchmod(self._file.fileno(), FILE_MODE)
        self._fd = self._file.fileno()

    def __enter__(self) -> None:
        self._thread.acquire()
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._thread.release()
            raise

    def __exit__(self, *_: object) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._thread.release()


class Spool:
    """Files received instances by study/series/SOP UID and seals complete studies.

    The lock makes ``store`` and ``seal`` of the same study safe across threads and
    processes: the SCP's association threads and its receiver processes store, the SCP
    seals. Other processes may read sealed batches.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.incoming = self.root / "incoming"
        self.studies = self.root / "studies"
        self.quarantine_dir = self.root / "quarantine"
        self.superseded = self.root / "superseded"
        self.tmp = self.root / "tmp"
        # Where the SCP process has pynetdicom write datasets as they arrive (tempfile's
        # folder, set by worker/service/scp.py): on the spool's file system, so a
        # received file is renamed in, not copied; emptied when an SCP starts.
        self.receiving = self.root / "receiving"
        self.state = self.root / "state"
        self._study_bytes = self.state / "study-bytes"
        self.root.mkdir(parents=True, exist_ok=True)
        for directory in (
            self.root,
            self.incoming,
            self.studies,
            self.quarantine_dir,
            self.superseded,
            self.tmp,
            self.receiving,
            self.state,
            self._study_bytes,
        ):
            _mkdir_private(directory)
            _make_private(directory)  # also folders made by an older version
        self._lock = _SpoolLock(self.state / "spool.lock")
        self._device = self.tmp.stat().st_dev  # a received file elsewhere is copied in
        self._discard_partial_writes()

    # -- writing -------------------------------------------------------------------------

    def store(
        self,
        data: bytes,
        *,
        study_uid: str,
        series_uid: str,
        sop_uid: str,
        calling_ae: str,
        calling_host: str,
        max_study_bytes: int = 0,
    ) -> Path:
        """Durably file one instance given as bytes (see ``store_file``, which checks
        the UIDs)."""
        tmp = self._write_tmp(data)
        try:
            return self.store_file(
                tmp,
                study_uid=study_uid,
                series_uid=series_uid,
                sop_uid=sop_uid,
                calling_ae=calling_ae,
                calling_host=calling_host,
                max_study_bytes=max_study_bytes,
            )
        finally:
            tmp.unlink(missing_ok=True)  # already renamed away unless it failed

    def store_file(
        self,
        received: Path,
        *,
        study_uid: str,
        series_uid: str,
        sop_uid: str,
        calling_ae: str,
        calling_host: str,
        max_study_bytes: int = 0,
    ) -> Path:
        """Durably file the Part 10 file ``received`` by moving it, not copying it.

        The file is fsynced and renamed into place and its folder fsynced: one fsync of
        each per instance. A file on another file system is copied into ``tmp/`` first.
        A repeat of an instance already held with the same bytes keeps one copy; with
        different bytes the new one is filed and the old one moved to ``superseded/``.

        Raises ``ValueError`` for a UID unsafe to use as a path (quarantine the data),
        ``OSError`` when the disk write fails (answer 0xA700 so the sender retries) and
        ``StudyTooLargeError`` when the incoming study would exceed ``max_study_bytes``
        (0: no limit); the data is then not stored and ``received`` is left in place.
        """
        validate_uid(study_uid, "StudyInstanceUID")
        validate_uid(series_uid, "SeriesInstanceUID")
        validate_uid(sop_uid, "SOPInstanceUID")
        source = received
        if received.stat().st_dev == self._device:
            _fsync_file_private(received)
        else:
            with received.open("rb") as fh:
                source = self._write_tmp_from(fh)
        try:
            added = source.stat().st_size
            with self._lock:
                study_dir = self.incoming / study_uid
                series_dir = study_dir / series_uid
                target = series_dir / f"{sop_uid}.dcm"
                resent = target.exists()
                if resent and _same_content(source, target):
                    source.unlink()  # identical resend: keep the copy already filed
                    return target
                size = self._study_size_after(study_uid, target, added, max_study_bytes)
                if not (study_dir / METADATA_NAME).exists():
                    _makedirs_durable(study_dir, self.root)
                    meta = {
                        "study_uid": study_uid,
                        "calling_ae": calling_ae,
                        "calling_host": calling_host,
                        "first_received": _utcnow().isoformat(),
                    }
                    self._write_json(study_dir / METADATA_NAME, meta)
                if not series_dir.is_dir():
                    _makedirs_durable(series_dir, self.root)
                if resent:
                    self._supersede(target, study_uid, series_uid, sop_uid)
                source.replace(target)
                self._write_study_bytes(study_uid, size)
                # The folder's fsync runs outside the lock, so associations overlap their
                # fsyncs; the descriptor follows the folder even if a seal moves it now.
                series_fd = os.open(series_dir, os.O_RDONLY | os.O_DIRECTORY)
        except BaseException:
            if source != received:
                source.unlink(missing_ok=True)
            raise
        try:
            os.fsync(series_fd)
        finally:
            os.close(series_fd)
        return target

    def _supersede(self, target: Path, study_uid: str, series_uid: str, sop_uid: str) -> None:
        """Move the filed copy of a re-sent instance aside, so neither copy is lost."""
        folder = self.superseded / study_uid / series_uid
        _makedirs_durable(folder, self.root)
        stamp = f"{_utcnow().strftime('%Y%m%dT%H%M%S%fZ')}-{secrets.token_hex(4)}"
        aside = folder / f"{sop_uid}.{stamp}.dcm"
        target.replace(aside)
        _fsync_dir(folder)
        LOGGER.warning(
            "instance %s (study %s, series %s) re-sent with different content: "
            "filed the new copy, kept the earlier one as %s",
            sop_uid,
            study_uid,
            series_uid,
            aside.relative_to(self.root),
        )

    def quarantine(self, data: bytes, reason: str, *, calling_ae: str) -> Path:
        """Keep data that cannot be filed, with why, so nothing received is dropped."""
        return self._quarantine_from(BytesIO(data), reason, calling_ae)

    def quarantine_file(self, received: Path, reason: str, *, calling_ae: str) -> Path:
        """``quarantine`` for a received file, copied in chunks (it may be large)."""
        with received.open("rb") as fh:
            return self._quarantine_from(fh, reason, calling_ae)

    def _quarantine_from(self, source: BinaryIO, reason: str, calling_ae: str) -> Path:
        now = _utcnow()
        name = f"{now.strftime('%Y%m%dT%H%M%S%fZ')}-{secrets.token_hex(4)}"
        target = self.quarantine_dir / f"{name}.dcm"
        self._write_json(
            self.quarantine_dir / f"{name}.reason.json",
            {"reason": reason, "calling_ae": calling_ae, "received": now.isoformat()},
        )
        tmp = self._write_tmp_from(source)
        tmp.replace(target)
        _fsync_dir(self.quarantine_dir)
        return target

    # -- completion ----------------------------------------------------------------------

    def pending(self) -> dict[str, float]:
        """Study UID -> newest instance mtime (epoch s) of every unsealed study.

        Used at start-up so that the quiet period resumes after a restart.
        """
        result: dict[str, float] = {}
        for study_dir in self._dirs(self.incoming):
            if not _UID_RE.fullmatch(study_dir.name):
                LOGGER.warning("ignoring unexpected folder in spool: %s", study_dir)
                continue
            mtimes = [p.stat().st_mtime for p in self._instance_files(study_dir)]
            if mtimes:
                result[study_dir.name] = max(mtimes)
        return result

    def seal(self, study_uid: str) -> SpooledStudy | None:
        """Atomically move an incoming study to ``studies/<batch_id>``.

        Returns ``None`` when nothing is waiting for ``study_uid``. A ``store`` of the same
        study after the seal starts a fresh incoming folder (and later a new batch).
        """
        validate_uid(study_uid, "StudyInstanceUID")
        with self._lock:
            source = self.incoming / study_uid
            if not source.is_dir():
                return None
            files = list(self._instance_files(source))
            if not files:
                return None
            meta = self._read_json(source / METADATA_NAME)
            now = _utcnow()
            batch_id = f"{now.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(4)}"
            last = max(p.stat().st_mtime for p in files)
            meta.setdefault("calling_ae", "")
            meta.setdefault("calling_host", "")
            meta.setdefault("first_received", now.isoformat())
            meta.update(
                study_uid=study_uid,
                batch_id=batch_id,
                last_received=datetime.fromtimestamp(last, UTC).isoformat(),
                instance_count=len(files),
                sealed=now.isoformat(),
            )
            # Completed metadata first: a crash before the rename leaves a valid incoming
            # folder whose metadata is simply rewritten by the next seal.
            self._write_json(source / METADATA_NAME, meta)
            target = self.studies / batch_id
            source.rename(target)
            (self._study_bytes / study_uid).unlink(missing_ok=True)
            _fsync_dir(self.incoming)
            _fsync_dir(self.studies)
        return self._study_from(target, meta)

    def adopt(self, study: SpooledStudy) -> SpooledStudy:
        """Move a batch sealed in another spool on the same file system into this one.

        For studies fetched (not received) by another process: they are staged in a spool
        of their own, so a partial fetch never looks like a received study here, then
        renamed in atomically once complete.
        """
        target = self.studies / study.batch_id
        with self._lock:
            study.path.rename(target)
            _fsync_dir(self.studies)
        return self._load_sealed(target)

    # -- reading -------------------------------------------------------------------------

    def sealed(self) -> list[SpooledStudy]:
        """Every sealed batch, oldest first (batch ids sort by seal time)."""
        return [self._load_sealed(d) for d in sorted(self._dirs(self.studies))]

    def open_sealed(self, batch_id: str) -> SpooledStudy:
        """The sealed batch ``batch_id``; ``UnknownBatchError`` if there is none."""
        if not _BATCH_RE.fullmatch(batch_id):
            raise UnknownBatchError(f"not a spool batch id: {batch_id[:80]!r}")
        path = self.studies / batch_id
        if not path.is_dir():
            raise UnknownBatchError(f"no sealed batch {batch_id!r} in {self.studies}")
        return self._load_sealed(path)

    @staticmethod
    def instance_paths(study: SpooledStudy) -> list[Path]:
        """The instance files of a sealed study, sorted by series then SOP UID."""
        return sorted(Spool._instance_files(study.path))

    # -- internals -----------------------------------------------------------------------

    def _study_size_after(self, study_uid: str, target: Path, added: int, limit: int) -> int:
        """Bytes of the incoming study once ``target`` holds ``added`` bytes (under the lock).

        The running total is kept in ``state/study-bytes/`` so every process storing into
        the study sees the others' instances; without it (first instance, after a seal or
        a restart, or unreadable) the study's files are counted.
        """
        current = self._read_study_bytes(study_uid)
        if current is None:
            current = sum(p.stat().st_size for p in self._instance_files(self.incoming / study_uid))
        replaced = target.stat().st_size if target.exists() else 0
        size = current - replaced + added
        if limit and size > limit:
            raise StudyTooLargeError(
                f"study {study_uid} would hold {size} bytes, over the limit of {limit}"
            )
        return size

    def _read_study_bytes(self, study_uid: str) -> int | None:
        try:
            return int((self._study_bytes / study_uid).read_bytes())
        except (OSError, ValueError):
            return None

    def _write_study_bytes(self, study_uid: str, size: int) -> None:
        """A cache, not data: written in place without fsync (a torn or stale value after a
        crash is dropped at the next start, see ``discard_unfinished_receives``)."""
        fd = os.open(
            self._study_bytes / study_uid, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE
        )
        try:
            os.write(fd, str(size).encode())
        finally:
            os.close(fd)

    def _load_sealed(self, path: Path) -> SpooledStudy:
        meta = self._read_json(path / METADATA_NAME)
        if "instance_count" not in meta or "last_received" not in meta:
            # Metadata from before the seal completed: recompute from the files.
            files = list(self._instance_files(path))
            meta["instance_count"] = len(files)
            newest = max((p.stat().st_mtime for p in files), default=path.stat().st_mtime)
            meta["last_received"] = datetime.fromtimestamp(newest, UTC).isoformat()
        return self._study_from(path, meta)

    @staticmethod
    def _study_from(path: Path, meta: dict[str, Any]) -> SpooledStudy:
        first = _parse_time(meta.get("first_received")) or _utcnow()
        last = _parse_time(meta.get("last_received")) or first
        return SpooledStudy(
            batch_id=path.name,
            study_uid=str(meta.get("study_uid", "")),
            path=path,
            calling_ae=str(meta.get("calling_ae", "")),
            calling_host=str(meta.get("calling_host", "")),
            first_received=first,
            last_received=last,
            instance_count=int(meta.get("instance_count", 0)),
        )

    @staticmethod
    def _dirs(parent: Path) -> Iterator[Path]:
        return (p for p in parent.iterdir() if p.is_dir())

    @staticmethod
    def _instance_files(study_dir: Path) -> Iterator[Path]:
        return study_dir.glob("*/*.dcm")

    def _write_tmp(self, data: bytes) -> Path:
        return self._write_tmp_from(BytesIO(data))

    def _write_tmp_from(self, source: BinaryIO) -> Path:
        """Copy ``source`` to a new fsynced 0600 file in ``tmp/``."""
        tmp = self.tmp / f"{secrets.token_hex(8)}.part"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        try:
            with os.fdopen(fd, "wb") as fh:
                os.fchmod(fh.fileno(), FILE_MODE)  # umask may have taken bits off
                shutil.copyfileobj(source, fh, _COMPARE_CHUNK)
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp

    def _write_json(self, target: Path, value: dict[str, Any]) -> None:
        tmp = self._write_tmp(json.dumps(value, indent=1, sort_keys=True).encode())
        tmp.replace(target)
        _fsync_dir(target.parent)

    @staticmethod
    def _read_json(path: Path) -> dict[str, Any]:
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (ValueError, UnicodeDecodeError):
            LOGGER.warning("unreadable spool metadata %s; using defaults", path)
            return {}
        return value if isinstance(value, dict) else {}

    def discard_unfinished_receives(self) -> int:
        """Delete datasets a previous SCP process was receiving when it died.

        Only the SCP (and the receiver processes it starts afterwards) receives, so at its
        start nothing in ``receiving/`` is in flight; none of it was acknowledged to a
        sender. Returns how many were deleted. The study byte counts, which a crash may
        have left one instance behind, are dropped too (recounted from the files).
        """
        for counted in self._study_bytes.iterdir():
            with contextlib.suppress(FileNotFoundError):
                counted.unlink()
        count = 0
        for leftover in self.receiving.iterdir():
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
                count += 1
        return count

    def _discard_partial_writes(self) -> None:
        """Drop partial files a crash left in tmp/: never acknowledged to any sender.

        Only old ones: other processes (workers) open the same spool while the SCP writes.
        """
        cutoff = time.time() - STALE_PARTIAL_SECONDS
        for leftover in self.tmp.glob("*.part"):
            with contextlib.suppress(FileNotFoundError):
                if leftover.stat().st_mtime < cutoff:
                    leftover.unlink()
