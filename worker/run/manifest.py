"""What crosses the wire between the central node and a remote worker: named files with
their sizes and SHA-256, and the checks both sides make on them.

A study is listed as ``<series uid>/<sop instance uid>.dcm`` (its layout in the spool), a
results folder by its plain file names (``<sop instance uid>.dcm``, ``manifest.json``,
``timings.json``). Names are checked before they touch a path: nothing outside the folder
can be named.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scu_scp.spool import fsync_dir
from worker.run.results import MANIFEST
from worker.run.timings import TIMINGS

_UID = r"[0-9]+(?:\.[0-9]+)*"
_STUDY_FILE = re.compile(rf"^{_UID}/{_UID}\.dcm$")
_RESULT_FILE = re.compile(rf"^(?:{_UID}\.dcm|{re.escape(MANIFEST)}|{re.escape(TIMINGS)})$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20


class ManifestError(ValueError):
    """A listing or a file does not match what was announced; the message says how."""


@dataclass(frozen=True)
class FileEntry:
    """One file of a study or a results folder, as announced by the side that has it."""

    name: str
    size: int
    sha256: str

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "sha256": self.sha256}


def check_study_name(name: str) -> str:
    if len(name) > 140 or not _STUDY_FILE.match(name):
        raise ManifestError(f"not a study file name (SERIES_UID/SOP_UID.dcm): {name[:140]!r}")
    return name


def check_result_name(name: str) -> str:
    if len(name) > 80 or not _RESULT_FILE.match(name):
        raise ManifestError(f"not a results file name: {name[:80]!r}")
    return name


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def describe(folder: Path, names: Iterable[str]) -> list[FileEntry]:
    """The entries of ``names`` under ``folder``, hashed from the bytes on disk now."""
    entries = []
    for name in names:
        path = folder / name
        entries.append(FileEntry(name, path.stat().st_size, sha256_file(path)))
    return entries


def parse_entries(data: object, check_name: Any) -> list[FileEntry]:
    """Entries from JSON (``{"files": [{"name", "size", "sha256"}, ...]}``), names checked."""
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, list):
        raise ManifestError("a listing is {'files': [{'name', 'size', 'sha256'}, ...]}")
    entries = []
    seen: set[str] = set()
    for item in files:
        if not isinstance(item, dict):
            raise ManifestError("each file is {'name', 'size', 'sha256'}")
        name, size, digest = item.get("name"), item.get("size"), item.get("sha256")
        if not isinstance(name, str) or not isinstance(size, int) or not isinstance(digest, str):
            raise ManifestError("each file is {'name': str, 'size': int, 'sha256': str}")
        check_name(name)
        if size < 0 or not _SHA256.match(digest):
            raise ManifestError(f"{name}: size must be >= 0 and sha256 64 hex digits")
        if name in seen:
            raise ManifestError(f"{name} is listed twice")
        seen.add(name)
        entries.append(FileEntry(name, size, digest))
    return entries


def verify_file(path: Path, entry: FileEntry) -> None:
    """Raise ManifestError unless ``path`` holds exactly the announced bytes."""
    size = path.stat().st_size
    if size != entry.size:
        raise ManifestError(f"{entry.name}: {size} bytes, announced {entry.size}")
    digest = sha256_file(path)
    if digest != entry.sha256:
        raise ManifestError(
            f"{entry.name}: SHA-256 {digest[:12]}..., announced {entry.sha256[:12]}..."
        )


def fsync_tree(folder: Path) -> None:
    """fsync every file and folder under ``folder`` and ``folder`` itself, before a rename
    makes it visible: a power cut leaves the old state or the whole new one."""
    for root, _dirs, files in os.walk(folder):
        for name in files:
            fd = os.open(Path(root) / name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(root))
