"""Soak: a small file system for the service's data_dir, a sampler of its free space, and
a PACS sending copies of a study at a steady rate.

Used by the soak test (tests/integration/test_soak.py) and its benchmark (bench/soak.py):
a tmpfs of a few MB mounted for the run (it needs root, or CAP_SYS_ADMIN), so the disk
really fills and the SCP's own free-space checks see it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pydicom

from tests.support.orthanc import Orthanc
from tests.support.studies import write_copy
from worker.jobs.store import JobState, JobStore


class MountError(RuntimeError):
    """The tmpfs could not be mounted here (not root, or mounting not permitted)."""


@contextlib.contextmanager
def tmpfs(size_mb: int) -> Iterator[Path]:
    """A tmpfs of ``size_mb`` mounted for the block, unmounted (lazily) after."""
    mountpoint = Path(tempfile.mkdtemp(prefix="pa-small-fs-"))
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0700", "tmpfs", str(mountpoint)],
            check=True,
            capture_output=True,
            timeout=30,
        )
    except (subprocess.CalledProcessError, FileNotFoundError, subprocess.TimeoutExpired) as exc:
        mountpoint.rmdir()
        detail = (getattr(exc, "stderr", b"") or b"").decode(errors="replace").strip()
        reason = f"cannot mount a {size_mb} MB tmpfs (needs root): {detail or exc}"
        raise MountError(reason) from exc
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False, capture_output=True)
        mountpoint.rmdir()


def disk_space(path: Path) -> tuple[int, int]:
    """(used, free) bytes of the file system holding ``path``, as the SCP sees free space."""
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize, st.f_bavail * st.f_frsize


@dataclass
class DiskSampler:
    """Samples used and free bytes in a thread: peak use, least free, time below thresholds."""

    path: Path
    refuse_below: int
    pressure_below: int
    every: float = 0.1
    peak_used: int = 0
    least_free: int | None = None
    seconds_at_risk: float = 0.0
    seconds_under_pressure: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(self.every):
            used, free = disk_space(self.path)
            now = time.monotonic()
            self.peak_used = max(self.peak_used, used)
            self.least_free = free if self.least_free is None else min(self.least_free, free)
            if free < self.refuse_below:
                self.seconds_at_risk += now - last
            if free < self.pressure_below:
                self.seconds_under_pressure += now - last
            last = now

    def __enter__(self) -> DiskSampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass(frozen=True)
class Sent:
    """One study sent in one association: its UID, bytes, and what storescu said."""

    study_uid: str
    instances: int
    bytes: int
    ok: bool
    output: str


def send_study(port: int, called_aet: str, paths: Sequence[Path], calling: str) -> tuple[bool, str]:
    """dcmtk ``storescu``, one association, as a PACS sends a study; False if refused."""
    done = subprocess.run(
        ["storescu", "-aet", calling, "-aec", called_aet, "127.0.0.1", str(port), *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return done.returncode == 0, done.stdout + done.stderr


def send_steadily(
    port: int,
    called_aet: str,
    sources: Sequence[pydicom.Dataset],
    workdir: Path,
    *,
    total_bytes: int,
    interval: float,
    keep_going: Callable[[list[Sent]], bool] = lambda _sent: True,
    calling: str = "SOAK_PACS",
) -> list[Sent]:
    """Copies of ``sources`` (fresh UIDs each), one study every ``interval`` seconds, until
    ``total_bytes`` are sent or ``keep_going`` says stop. A late send is not made up for."""
    sent: list[Sent] = []
    total = 0
    while total < total_bytes and keep_going(sent):
        tick = time.monotonic()
        study, paths = write_copy(sources, workdir / f"s{len(sent)}")
        size = sum(p.stat().st_size for p in paths)
        ok, output = send_study(port, called_aet, paths, calling)
        for path in paths:
            path.unlink()
        sent.append(Sent(study, len(paths), size, ok, output))
        total += size
        time.sleep(max(0.0, interval - (time.monotonic() - tick)))
    return sent


def wait_until_final(
    store: JobStore, count: int, proc: subprocess.Popen[bytes], timeout: float = 300.0
) -> None:
    """Until ``count`` jobs are done or failed, the service stops, or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if len(store.list(states=[JobState.DONE, JobState.FAILED], limit=100_000)) >= count:
            return
        time.sleep(0.5)


def modalities_in_orthanc(orthanc: Orthanc, study_uid: str) -> set[str]:
    """Modalities of the series Orthanc holds for a study ({"SEG", "SR"}: results arrived)."""
    study_id = orthanc.study_id_for_uid(study_uid)
    if study_id is None:
        return set()
    return {s["MainDicomTags"].get("Modality", "") for s in orthanc.series_of_study(study_id)}
