"""Benchmark (not a test): months of traffic in minutes on a small disk, with the default retention.

`pacs-annotator up` (embedded Redis, SQLite, one CPU worker) runs with `data_dir` on a
tmpfs of --size-mb (300 by default) mounted by this script (it needs root; without it, it
says so and stops). A real Orthanc receives the results. dcmtk `storescu` sends copies of a
CT phantom study (fresh UIDs each), one first and, once the worker has annotated it (a
service still starting is not ready for a PACS at full rate), the rest at a steady rate
until at least --factor (3) times the file system's size has been sent. The retention
settings are the defaults (delivered images kept 6 hours): only disk pressure can keep the
disk from filling, which is what is measured. The SCP refuses below
`scp.min_free_disk_bytes` (--refuse-mb, 30); the pressure threshold is --pressure-mb (90).

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
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.end_to_end import launch_up
from tests.support.orthanc import Orthanc
from tests.support.phantom import make_ct_phantom
from tests.support.processes import free_port, stop_process
from tests.support.soak import (
    DiskSampler,
    MountError,
    Sent,
    modalities_in_orthanc,
    send_steadily,
    tmpfs,
    wait_until_final,
)
from worker.jobs.store import JobState, JobStore

AET = "PACS_ANNOTATOR"
MB = 1024 * 1024


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
    with contextlib.ExitStack() as stack:
        try:
            fs = stack.enter_context(tmpfs(args.size_mb))
        except MountError as exc:
            raise SystemExit(str(exc)) from exc
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pa-bench-soak-")))
        orthanc = stack.enter_context(Orthanc())
        return _soak_on(root, fs, orthanc, args, sources, pressure_mb, stop_on_refusal)


def _soak_on(
    root: Path,
    fs: Path,
    orthanc: Orthanc,
    args: argparse.Namespace,
    sources: Sequence[Any],
    pressure_mb: int,
    stop_on_refusal: bool,
) -> Outcome:
    proc, port = start_up(root, fs / "data", orthanc, args, pressure_mb)
    store = JobStore(f"sqlite:///{(fs / 'data' / 'jobs.sqlite3').resolve()}")
    started = time.monotonic()
    try:
        with DiskSampler(fs, args.refuse_mb * MB, pressure_mb * MB, every=0.2) as disk:
            # As the soak test: send at full rate once the worker has annotated a first study.
            sent = send_steadily(port, AET, sources, root / "warm", total_bytes=1, interval=0)
            wait_until_final(store, 1, proc, timeout=900)

            def keep_going(so_far: list[Sent]) -> bool:
                refused = stop_on_refusal and any(not s.ok for s in so_far)
                return proc.poll() is None and not refused

            sent += send_steadily(
                port,
                AET,
                sources,
                root / "out",
                total_bytes=int(args.factor * args.size_mb * MB) - sent[0].bytes,
                interval=args.interval,
                keep_going=keep_going,
            )
            if not (stop_on_refusal and any(not s.ok for s in sent)):
                wait_until_final(store, len(sent), proc, timeout=900)
        jobs = {j.study_uid: j for j in store.list(limit=100_000)}
        studies = [s.study_uid for s in sent]
        done = [s for s in studies if s in jobs and jobs[s].state is JobState.DONE]
        return Outcome(
            studies=studies,
            sent_bytes=sum(s.bytes for s in sent),
            refused=sum(not s.ok for s in sent),
            done=len(done),
            in_orthanc=sum({"SEG", "SR"} <= modalities_in_orthanc(orthanc, s) for s in done),
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
