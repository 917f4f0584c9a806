"""Benchmark (not a test): months of traffic in minutes on a small disk, with the default retention.

`pacs-annotator up` (embedded Redis, SQLite, one CPU worker) runs with `data_dir` on a
tmpfs of --size-mb (300 by default) mounted by this script (it needs root; without it, it
says so and stops). A real Orthanc receives the results. dcmtk `storescu` sends copies of a
CT phantom study (fresh UIDs each) at a steady rate until at least --factor (3) times the
file system's size has been sent. The retention settings are the defaults (delivered
images kept 6 hours): only disk pressure can keep the disk from filling, which is what is
measured. The SCP refuses below `scp.min_free_disk_bytes` (--refuse-mb, 30); the pressure
threshold is --pressure-mb (90).

Checked: every study received (no association refused, storescu succeeded), annotated
(job done) and its SEG and SR in Orthanc; the service still running at the end.
Reported: total sent, peak disk use (sampled every 0.2 s), time spent below the SCP's
refusal threshold (when a sender would have been refused: instances at risk of not being
taken), time under disk pressure, and the longest an instance spent on the annotator
between its receipt and its results reaching Orthanc (the job's received-to-finished).
The peer, measured in the same run on a fresh tmpfs: the same traffic with disk pressure off
(`retention.pressure_free_bytes: 0`, retention otherwise the defaults), until the SCP
first refuses; and the file system's size (sent / size, peak / size).

Run: .venv/bin/python bench/soak.py [--size-mb 300] [--factor 3] [--interval S] [--no-peer]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.end_to_end import launch_up
from tests.support.orthanc import Orthanc
from tests.support.phantom import make_ct_phantom
from tests.support.processes import free_port, stop_process
from tests.support.studies import write_copy
from worker.jobs.store import JobState, JobStore

AET = "PACS_ANNOTATOR"
MB = 1024 * 1024


@contextlib.contextmanager
def tmpfs(size_mb: int) -> Iterator[Path]:
    """A tmpfs of ``size_mb`` mounted for the run (root only), unmounted after."""
    mountpoint = Path(tempfile.mkdtemp(prefix="pa-soak-fs-"))
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0700", "tmpfs", str(mountpoint)],
            check=True,
            capture_output=True,
        )
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        mountpoint.rmdir()
        detail = getattr(exc, "stderr", b"") or b""
        reason = detail.decode().strip()
        raise SystemExit(f"cannot mount a tmpfs here (needs root): {reason}") from exc
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)
        mountpoint.rmdir()


@dataclass
class DiskSampler:
    """Samples used and free bytes of the file system in a thread; keeps peaks and times."""

    path: Path
    refuse_below: int
    pressure_below: int
    peak_used: int = 0
    seconds_at_risk: float = 0.0
    seconds_under_pressure: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(0.2):
            st = os.statvfs(self.path)
            free = st.f_bavail * st.f_frsize
            used = (st.f_blocks - st.f_bfree) * st.f_frsize
            now = time.monotonic()
            self.peak_used = max(self.peak_used, used)
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


def start_up(
    root: Path, data_dir: Path, orthanc: Orthanc, args: argparse.Namespace, pressure_mb: int
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    config = {
        "data_dir": str(data_dir),
        "log_level": "INFO",
        "scp": {
            "ae_title": AET,
            "host": "127.0.0.1",
            "port": port,
            "min_free_disk_bytes": args.refuse_mb * MB,
        },
        "monitor": {"enabled": False},
        "retention": {"pressure_free_bytes": pressure_mb * MB},  # the rest: the defaults
        "destinations": {
            "orthanc": {
                "ae_title": orthanc.aet,
                "host": "127.0.0.1",
                "port": orthanc.dicom_port,
                "default": True,
            }
        },
        "routing": [{"modality": "CT", "pipelines": ["ct-basic"]}],
    }
    return launch_up(root, config, port), port


def send(port: int, paths: Sequence[Path]) -> bool:
    """One association, as a PACS sends a study; False if anything was refused."""
    done = subprocess.run(
        ["storescu", "-aet", "SOAK_PACS", "-aec", AET, "127.0.0.1", str(port), *map(str, paths)],
        capture_output=True,
    )
    return done.returncode == 0


def results_in_orthanc(orthanc: Orthanc, study_uid: str) -> set[str]:
    study_id = orthanc.study_id_for_uid(study_uid)
    if study_id is None:
        return set()
    return {s["MainDicomTags"].get("Modality", "") for s in orthanc.series_of_study(study_id)}


@dataclass
class Outcome:
    studies: list[str]
    sent_bytes: int
    refused: int
    done: int
    in_orthanc: int
    purged: int
    alive: bool
    peak_used: int
    seconds_at_risk: float
    seconds_under_pressure: float
    seconds: float
    longest_held: float


def soak(
    args: argparse.Namespace, sources: Sequence[Any], pressure_mb: int, *, stop_on_refusal: bool
) -> Outcome:
    """One run on a fresh tmpfs; ``pressure_mb`` 0 is the peer (no disk pressure)."""
    with (
        tempfile.TemporaryDirectory(prefix="pa-bench-soak-") as tmp,
        tmpfs(args.size_mb) as fs,
        Orthanc() as orthanc,
    ):
        root = Path(tmp)
        proc, port = start_up(root, fs / "data", orthanc, args, pressure_mb)
        store = JobStore(f"sqlite:///{(fs / 'data' / 'jobs.sqlite3').resolve()}")
        sent_bytes, studies, refused = 0, [], 0
        started = time.monotonic()
        try:
            with DiskSampler(fs, args.refuse_mb * MB, pressure_mb * MB) as disk:
                n = 0
                while sent_bytes < args.factor * args.size_mb * MB:
                    tick = time.monotonic()
                    study, paths = write_copy(sources, root / "out" / f"s{n}")
                    ok = send(port, paths)
                    refused += not ok
                    sent_bytes += sum(p.stat().st_size for p in paths)
                    studies.append(study)
                    for p in paths:
                        p.unlink()
                    n += 1
                    if proc.poll() is not None or (stop_on_refusal and not ok):
                        break
                    time.sleep(max(0.0, args.interval - (time.monotonic() - tick)))
                deadline = time.monotonic() + 900
                while time.monotonic() < deadline and not (stop_on_refusal and refused):
                    finished = store.list(states=[JobState.DONE, JobState.FAILED], limit=100_000)
                    if len(finished) >= len(studies) or proc.poll() is not None:
                        break
                    time.sleep(1.0)
            jobs = {j.study_uid: j for j in store.list(limit=100_000)}
            done = [s for s in studies if s in jobs and jobs[s].state is JobState.DONE]
            return Outcome(
                studies=studies,
                sent_bytes=sent_bytes,
                refused=refused,
                done=len(done),
                in_orthanc=sum({"SEG", "SR"} <= results_in_orthanc(orthanc, s) for s in done),
                purged=sum(1 for j in jobs.values() if j.inputs_purged_at is not None),
                alive=proc.poll() is None,
                peak_used=disk.peak_used,
                seconds_at_risk=disk.seconds_at_risk,
                seconds_under_pressure=disk.seconds_under_pressure,
                seconds=time.monotonic() - started,
                longest_held=max(
                    (
                        (j.finished_at - j.received_at).total_seconds()
                        for j in jobs.values()
                        if j.finished_at is not None
                    ),
                    default=0.0,
                ),
            )
        finally:
            stop_process(proc, timeout=60)
            store.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=300, help="tmpfs size")
    parser.add_argument("--factor", type=float, default=3.0, help="send this many times the size")
    parser.add_argument("--interval", type=float, default=8.0, help="seconds between studies")
    parser.add_argument("--refuse-mb", type=int, default=30, help="scp.min_free_disk_bytes (MB)")
    parser.add_argument("--pressure-mb", type=int, default=90, help="pressure threshold (MB)")
    parser.add_argument("--slices", type=int, default=40)
    parser.add_argument("--size", type=int, default=512, help="phantom rows and columns")
    parser.add_argument("--no-peer", action="store_true", help="skip the run without pressure")
    args = parser.parse_args(argv)

    sources = list(make_ct_phantom(slices=args.slices, size=args.size, pixel_spacing=1.4).datasets)
    runs = {}
    if not args.no_peer:
        print("peer: disk pressure off, until the first refusal ...", flush=True)
        runs["peer: pressure off"] = soak(args, sources, 0, stop_on_refusal=True)
    print("soak: disk pressure on ...", flush=True)
    runs["soak: pressure on"] = soak(args, sources, args.pressure_mb, stop_on_refusal=False)

    size = args.size_mb * MB
    print(f"\ntmpfs {args.size_mb} MB, one study every {args.interval:g} s, default retention\n")
    print("| run | " + " | ".join(runs) + " |")
    print("| --- |" + " --- |" * len(runs))
    rows: list[tuple[str, Callable[[Outcome], str]]] = [
        ("studies sent", lambda o: f"{len(o.studies)}"),
        ("MB sent (x the disk)", lambda o: f"{o.sent_bytes / MB:.0f} ({o.sent_bytes / size:.2f}x)"),
        ("associations refused", lambda o: f"{o.refused}"),
        ("jobs done", lambda o: f"{o.done}"),
        ("SEG and SR in Orthanc", lambda o: f"{o.in_orthanc}"),
        ("inputs purged before their 6 h", lambda o: f"{o.purged}"),
        ("service up at the end", lambda o: "yes" if o.alive else "NO"),
        (
            "peak disk use MB (x the disk)",
            lambda o: f"{o.peak_used / MB:.0f} ({o.peak_used / size:.2f}x)",
        ),
        ("s below the SCP's refusal threshold", lambda o: f"{o.seconds_at_risk:.1f}"),
        (
            "s under disk pressure / run",
            lambda o: f"{o.seconds_under_pressure:.0f} / {o.seconds:.0f}",
        ),
        ("longest receipt to results in Orthanc, s", lambda o: f"{o.longest_held:.1f}"),
    ]
    for name, cell in rows:
        print(f"| {name} | " + " | ".join(cell(o) for o in runs.values()) + " |")
    o = runs["soak: pressure on"]
    ok = o.alive and not o.refused and o.in_orthanc == len(o.studies)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
