"""Benchmark (not a test): studies per hour through one CPU worker, and where the time goes.

For each set of built-in pipelines, `pacs-annotator up` (embedded Redis, SQLite, one worker
process) runs beside a real Orthanc that receives the results. Studies are copies of the
real CT in ../shared/data/ct-abdomen-crlm1004 (41 slices of 512x512; --ct DIR) with fresh
UIDs, or of the synthetic phantom when that folder is absent (--source phantom forces it); dcmtk
`storescu` sends them, as a PACS would.

The service runs with the DEFAULT completion settings (a study is complete
`completion.release_grace_seconds`, 5 s, after the association that carried it is
released); --quiet S sets `completion.quiet_seconds` instead, for the old measurement.

- Latency: studies sent one at a time (storescu, one association), each waited for. From
  the last instance sent (storescu has its last C-STORE answered and releases the
  association) to the results stored in Orthanc (the job's finish, after the last C-STORE
  success to Orthanc), split into completion (grace or quiet period, seal, queueing: until
  the job row is queued), queue wait (until a worker claims the job), load, pipelines,
  write (SEG/SR objects), save (results to disk), deliver (C-STORE) and the rest (worker
  overhead: job store, reading the saved results back).
- Throughput: --studies studies sent back to back; studies/hour = studies / (first claim to
  last finish), i.e. the worker never idles.
- Peers measured in the same run: the raw C-STORE of the same study into the annotator
  (storescu wall time), and the completion wait configured (the grace, or the quiet period).

Run: .venv/bin/python bench/end_to_end.py [--studies N] [--latency-runs K] [--quiet S]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pydicom
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.orthanc import Orthanc, wait_for
from tests.support.phantom import make_ct_phantom
from tests.support.processes import free_port, stop_process, wait_for_port
from tests.support.studies import write_copy
from worker.config import CompletionSettings
from worker.jobs.store import Job, JobState, JobStore
from worker.run.timings import read_timings

REAL_CT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ct-abdomen-crlm1004"
PIPELINE_SETS: tuple[tuple[str, ...], ...] = (
    ("ct-basic",),
    ("ct-lung-nodules",),
    ("ct-basic", "ct-lung-nodules"),
)
STAGES = ("completion", "queue", "load", "pipelines", "write", "save", "deliver", "other")
AET = "PACS_ANNOTATOR"
DEFAULT_GRACE = CompletionSettings().release_grace_seconds


def source_datasets(kind: str, folder: Path) -> list[pydicom.Dataset]:
    if kind == "real" or (kind == "auto" and folder.is_dir()):
        return [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]
    return list(make_ct_phantom(slices=48, size=256, pixel_spacing=1.4).datasets)


def storescu(port: int, paths: Sequence[Path], calling: str) -> tuple[float, datetime]:
    """Send in one association; the seconds it took and when it ended (UTC)."""
    started = time.perf_counter()
    subprocess.run(
        ["storescu", "-aet", calling, "-aec", AET, "127.0.0.1", str(port), *map(str, paths)],
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - started, datetime.now(UTC)


@dataclass
class Service:
    proc: subprocess.Popen[bytes]
    port: int
    store: JobStore
    results: Path

    def job_for(self, study_uid: str) -> Job | None:
        jobs = self.store.list(study_uid=study_uid, limit=10)
        return jobs[0] if jobs else None

    def wait_done(self, study_uid: str, timeout: float = 900) -> Job:
        def done() -> Job | None:
            job = self.job_for(study_uid)
            final = job is not None and job.state in (JobState.DONE, JobState.FAILED)
            return job if final else None

        job = wait_for(done, timeout=timeout, interval=0.2, message=f"job of {study_uid}")
        if job.state is not JobState.DONE:
            raise RuntimeError(f"job {job.id} failed: {job.error}")
        return job


def launch_up(root: Path, config: dict[str, Any], port: int) -> subprocess.Popen[bytes]:
    """``pacs-annotator up`` with ``config``, its log in root/service.log, once it listens."""
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    log = (root / "service.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker", "up", "--config", str(path)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    wait_for_port("127.0.0.1", port, timeout=120, proc=proc)
    return proc


def start_service(
    root: Path, orthanc: Orthanc, pipelines: Sequence[str], quiet: float | None
) -> Service:
    root.mkdir(parents=True)
    port = free_port()
    config = {
        "data_dir": str(root / "data"),
        "log_level": "WARNING",
        "scp": {"ae_title": AET, "host": "127.0.0.1", "port": port},
        # The default completion settings unless --quiet (the measurement before release).
        "completion": {} if quiet is None else {"quiet_seconds": quiet},
        "destinations": {
            "orthanc": {"ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}
        },
        "routing": [{"modality": "CT", "pipelines": list(pipelines)}],
    }
    proc = launch_up(root, config, port)
    store = JobStore(f"sqlite:///{(root / 'data' / 'jobs.sqlite3').resolve()}")
    return Service(proc, port, store, root / "data" / "results")


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def split(service: Service, job: Job, sent: datetime) -> dict[str, float]:
    """Seconds per stage, from the last instance sent to the results stored in Orthanc."""
    assert job.queued_at and job.started_at and job.finished_at
    total = (_utc(job.finished_at) - sent).total_seconds()
    stages = {
        "completion": (_utc(job.queued_at) - sent).total_seconds(),
        "queue": (job.started_at - job.queued_at).total_seconds(),
    }
    timings = read_timings(service.results / job.id)
    for name in ("load", "pipelines", "write", "save", "deliver"):
        stages[name] = timings.get(name, 0.0)
    stages["other"] = total - sum(stages.values())
    stages["total"] = total
    return stages


def bench_set(
    orthanc: Orthanc,
    sources: Sequence[pydicom.Dataset],
    pipelines: Sequence[str],
    args: argparse.Namespace,
    root: Path,
) -> dict[str, float]:
    service = start_service(root, orthanc, pipelines, args.quiet)
    copies = iter(range(10_000))
    try:
        # Warm-up: the worker imports and builds its pipelines on its first job.
        study, paths = write_copy(sources, root / f"study{next(copies)}")
        storescu(service.port, paths, orthanc.aet)
        service.wait_done(study)

        runs: list[dict[str, float]] = []
        for _ in range(args.latency_runs):
            study, paths = write_copy(sources, root / f"study{next(copies)}")
            send, sent = storescu(service.port, paths, orthanc.aet)
            stages = split(service, service.wait_done(study), sent)
            stages["cstore"] = send
            runs.append(stages)
        result = {key: statistics.median(r[key] for r in runs) for key in runs[0]}

        batch = [write_copy(sources, root / f"study{next(copies)}") for _ in range(args.studies)]
        for _, paths in batch:
            storescu(service.port, paths, orthanc.aet)
        jobs = [service.wait_done(study) for study, _ in batch]
        first = min(j.started_at for j in jobs if j.started_at)
        last = max(j.finished_at for j in jobs if j.finished_at)
        result["studies_per_hour"] = len(jobs) / (last - first).total_seconds() * 3600
        return result
    finally:
        stop_process(service.proc, timeout=60)
        service.store.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=4, help="studies in the throughput batch")
    parser.add_argument("--latency-runs", type=int, default=3, help="studies timed one by one")
    parser.add_argument(
        "--quiet",
        type=float,
        default=None,
        help="completion.quiet_seconds (default: the default settings, completion on release)",
    )
    parser.add_argument("--source", choices=("auto", "real", "phantom"), default="auto")
    parser.add_argument("--ct", type=Path, default=REAL_CT, help="folder of the real CT series")
    args = parser.parse_args(argv)
    sources = source_datasets(args.source, args.ct)
    megabytes = sum(len(ds.PixelData) for ds in sources) / 1e6
    print(f"study: {len(sources)} instances, {megabytes:.1f} MB of pixels")
    results: dict[str, dict[str, float]] = {}
    with Orthanc() as orthanc, tempfile.TemporaryDirectory(prefix="pa-bench-e2e-") as tmp:
        for pipelines in PIPELINE_SETS:
            name = " + ".join(pipelines)
            print(f"running {name} ...", flush=True)
            results[name] = bench_set(orthanc, sources, pipelines, args, Path(tmp) / name)

    print("\nlatency, median of", args.latency_runs, "studies (seconds)\n")
    wait = DEFAULT_GRACE if args.quiet is None else args.quiet
    label = "grace" if args.quiet is None else "quiet"
    header = ["pipelines", *STAGES, "total", "C-STORE", "total / C-STORE", f"total / {label}"]
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for name, r in results.items():
        cells = [f"{r[s]:.2f}" for s in (*STAGES, "total", "cstore")]
        ratios = [f"{r['total'] / r['cstore']:.1f}x", f"{r['total'] / wait:.1f}x"]
        print(f"| {name} | " + " | ".join(cells + ratios) + " |")
    print(f"\nthroughput, {args.studies} studies back to back, one worker\n")
    print("| pipelines | studies / hour | processing / C-STORE |")
    print("| --- | --- | --- |")
    for name, r in results.items():
        per_study = 3600 / r["studies_per_hour"]
        print(f"| {name} | {r['studies_per_hour']:.0f} | {per_study / r['cstore']:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
