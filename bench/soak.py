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
The peer measured in the same run is the file system's size: sent / size and peak / size.

Run: .venv/bin/python bench/soak.py [--size-mb 300] [--factor 3] [--interval S]
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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.orthanc import Orthanc
from tests.support.phantom import make_ct_phantom
from tests.support.processes import free_port, stop_process, wait_for_port
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
    root: Path, data_dir: Path, orthanc: Orthanc, args: argparse.Namespace
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
        "retention": {"pressure_free_bytes": args.pressure_mb * MB},  # the rest: defaults
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
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    log = (root / "service.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker", "up", "--config", str(path)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    wait_for_port("127.0.0.1", port, timeout=120, proc=proc)
    return proc, port


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=300, help="tmpfs size")
    parser.add_argument("--factor", type=float, default=3.0, help="send this many times the size")
    parser.add_argument("--interval", type=float, default=6.0, help="seconds between studies")
    parser.add_argument("--refuse-mb", type=int, default=30, help="scp.min_free_disk_bytes (MB)")
    parser.add_argument("--pressure-mb", type=int, default=90, help="pressure threshold (MB)")
    parser.add_argument("--slices", type=int, default=40)
    parser.add_argument("--size", type=int, default=256, help="phantom rows and columns")
    args = parser.parse_args(argv)

    sources = list(make_ct_phantom(slices=args.slices, size=args.size, pixel_spacing=1.4).datasets)
    with (
        tempfile.TemporaryDirectory(prefix="pa-bench-soak-") as tmp,
        tmpfs(args.size_mb) as fs,
        Orthanc() as orthanc,
    ):
        root = Path(tmp)
        proc, port = start_up(root, fs / "data", orthanc, args)
        store = JobStore(f"sqlite:///{(fs / 'data' / 'jobs.sqlite3').resolve()}")
        sent_bytes, studies, refused = 0, [], 0
        started = time.monotonic()
        try:
            with DiskSampler(fs, args.refuse_mb * MB, args.pressure_mb * MB) as disk:
                n = 0
                while sent_bytes < args.factor * args.size_mb * MB:
                    tick = time.monotonic()
                    study, paths = write_copy(sources, root / "out" / f"s{n}")
                    if not send(port, paths):
                        refused += 1
                    sent_bytes += sum(p.stat().st_size for p in paths)
                    studies.append(study)
                    for p in paths:
                        p.unlink()
                    n += 1
                    if proc.poll() is not None:
                        break
                    time.sleep(max(0.0, args.interval - (time.monotonic() - tick)))
                deadline = time.monotonic() + 900
                while time.monotonic() < deadline:
                    finished = store.list(states=[JobState.DONE, JobState.FAILED], limit=100_000)
                    if len(finished) >= len(studies) or proc.poll() is not None:
                        break
                    time.sleep(1.0)
            duration = time.monotonic() - started
            alive = proc.poll() is None
            jobs = {j.study_uid: j for j in store.list(limit=100_000)}
            done = [s for s in studies if s in jobs and jobs[s].state is JobState.DONE]
            in_orthanc = [s for s in done if {"SEG", "SR"} <= results_in_orthanc(orthanc, s)]
            held = [
                (j.finished_at - j.received_at).total_seconds()
                for j in jobs.values()
                if j.finished_at is not None
            ]
            purged = sum(1 for j in jobs.values() if j.inputs_purged_at is not None)
        finally:
            stop_process(proc, timeout=60)
            store.close()

    size = args.size_mb * MB
    print(f"\nsoak: tmpfs {args.size_mb} MB, one study every {args.interval:g} s\n")
    print("| measure | value |")
    print("| --- | --- |")
    total = f"{sent_bytes / MB:.0f} MB, {sent_bytes / size:.2f}x the disk"
    print(f"| studies sent | {len(studies)} ({total}) |")
    print(f"| associations refused / storescu failures | {refused} |")
    print(f"| jobs done | {len(done)} of {len(studies)} |")
    print(f"| SEG and SR in Orthanc | {len(in_orthanc)} of {len(studies)} |")
    print(f"| inputs purged (under pressure, before their 6 h) | {purged} |")
    print(f"| service still up | {'yes' if alive else 'NO'} |")
    print(
        f"| peak disk use | {disk.peak_used / MB:.0f} MB ({disk.peak_used / size:.2f}x the disk) |"
    )
    print(f"| time below the SCP's refusal threshold (at risk) | {disk.seconds_at_risk:.1f} s |")
    print(f"| time under disk pressure | {disk.seconds_under_pressure:.1f} s of {duration:.0f} s |")
    print(f"| longest receipt-to-results in Orthanc | {max(held, default=0):.1f} s |")
    ok = alive and not refused and len(in_orthanc) == len(studies)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
