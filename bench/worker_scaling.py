"""Benchmark (not a test): studies per hour with 1, 2, 4 and 8 worker processes.

The pipeline sleeps a fixed time (--sleep, default 5 s) before running ct-basic on a tiny
CT phantom, so the CPU is not what limits the workers: each job still takes the real path
(Celery over a real redis-server, claim in the job store, load, SEG/SR, save, C-STORE to a
real dcmtk storescp that forks per association, final state). The sleep is added from
outside the product by tests/support/slow_worker.py, as the fault tests do.

For each N: one `pacs-annotator worker --concurrency N` (N pool processes), started and
waited for until its N heartbeats are in the job store; then ROUNDS x N studies are sealed
and queued at once, as the SCP's dispatcher does. Studies per hour = jobs / (first claim to
last final state).

The peer, measured in the same run: N times the rate of the single worker (N = 1). The
scaling factor is rate(N) / (N x rate(1)); the goal is at least 0.9. What limits it is
reported per N: the time a job spends beyond its sleep (overhead, grows when N processes
share the CPU), split into the job's steps (worker/run/timings.py: load, pipelines, write,
save, deliver), and the time between a worker finishing one job and claiming its next
(broker round trip and job-store writes).

The job store is PostgreSQL when one answers on 127.0.0.1:5432 (as several machines would
use), else SQLite (--database sqlite forces it).

Run: .venv/bin/python bench/worker_scaling.py [--workers 1,2,4,8] [--sleep 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scu_scp.spool import Spool
from tests.support.jobs import postgres_url, store_instances
from tests.support.phantom import make_ct_phantom
from tests.support.processes import stop_process
from tests.support.storescp import start_storescp
from worker.config import load_settings
from worker.jobs.dispatch import Dispatcher
from worker.jobs.ops_store import OpsStore
from worker.jobs.store import FINAL_STATES, Job, JobStore
from worker.run.celery_app import job_enqueuer
from worker.run.timings import read_timings
from worker.service.embedded_redis import EmbeddedRedis

ROOT = Path(__file__).resolve().parents[1]
#: The job's steps after the sleep (worker/run/timings.py), averaged per N.
STEPS = ("load", "pipelines", "write", "save", "deliver")


@dataclass(frozen=True)
class Run:
    workers: int
    jobs: int
    span: float
    per_hour: float
    job_seconds: float
    overhead_seconds: float
    gap_seconds: float
    failed: int
    steps: dict[str, float]


@contextmanager
def _database(kind: str) -> Iterator[str | None]:
    """A fresh PostgreSQL database (dropped after), or None for SQLite in data_dir."""
    if kind == "sqlite":
        yield None
        return
    try:
        database = contextmanager(postgres_url)()
        url = database.__enter__()
    except pytest.skip.Exception as exc:  # the test helper skips when none answers
        if kind == "postgres":
            raise SystemExit(str(exc)) from exc
        yield None
        return
    try:
        yield url
    finally:
        database.__exit__(None, None, None)


def _store_study(spool: Spool, seed: int) -> None:
    phantom = make_ct_phantom(slices=8, size=32, pixel_spacing=9.0, seed=seed)
    store_instances(spool, phantom.datasets, calling_ae="BENCH")


def _wait(predicate: object, timeout: float, what: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return
        if proc.poll() is not None:
            raise SystemExit(f"the worker exited ({proc.returncode}) while waiting for {what}")
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


def run_once(
    root: Path,
    n: int,
    *,
    broker: str,
    database: str | None,
    storescp_port: int,
    args: argparse.Namespace,
) -> Run:
    data = root / f"n{n}"
    config = {
        "data_dir": str(data),
        "broker_url": broker,
        "database_url": database or "",
        "log_level": "WARNING",
        "destinations": {
            "out": {
                "ae_title": "STORESCP",
                "host": "127.0.0.1",
                "port": storescp_port,
                "default": True,
            }
        },
    }
    path = root / f"config-{n}.yaml"
    path.write_text(yaml.safe_dump(config))
    settings = load_settings(path)
    store = JobStore(settings.effective_database_url)
    spool = Spool(settings.spool_dir)
    env = {
        **os.environ,
        "PA_TEST_SLOW_SECONDS": str(args.sleep),
        "PA_TEST_SLOW_MARKERS": str(root / f"markers-{n}"),
    }
    log = (root / f"worker-{n}.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.support.slow_worker",
            "worker",
            "--config",
            str(path),
            "--concurrency",
            str(n),
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        ops = OpsStore(store.engine)
        _wait(lambda: len(ops.workers()) >= n, 300, f"{n} worker heartbeats", proc)
        total = args.rounds * n
        for i in range(total):
            _store_study(spool, seed=1000 * n + i)
        dispatch = Dispatcher(store, spool, job_enqueuer(settings, spool))
        studies = [spool.seal(uid) for uid in list(spool.pending())]
        ids = [dispatch.dispatch(s).id for s in studies if s is not None]
        assert len(ids) == total, (len(ids), total)

        def finished() -> bool:
            return all(store.get(i).state in FINAL_STATES for i in ids)

        _wait(finished, 120 + 10 * args.sleep * args.rounds, "every job to finish", proc)
        jobs = [store.get(i) for i in ids]
    finally:
        stop_process(proc, timeout=30)
        log.close()
        store.close()
    timings = [read_timings(settings.results_dir / j.id) for j in jobs]
    steps = {k: statistics.mean(t.get(k, 0.0) for t in timings) for k in STEPS}
    return _measure(n, jobs, args.sleep, steps)


def _measure(n: int, jobs: list[Job], sleep: float, steps: dict[str, float]) -> Run:
    started = [j.started_at for j in jobs if j.started_at]
    ended = [j.finished_at for j in jobs if j.finished_at]
    span = (max(ended) - min(started)).total_seconds()
    durations = [
        (j.finished_at - j.started_at).total_seconds()
        for j in jobs
        if j.started_at and j.finished_at
    ]
    gaps: list[float] = []
    by_worker: dict[str, list[Job]] = {}
    for j in jobs:
        by_worker.setdefault(j.worker or "?", []).append(j)
    for mine in by_worker.values():
        mine.sort(key=lambda j: j.started_at or j.received_at)
        for before, after in itertools.pairwise(mine):
            if before.finished_at and after.started_at:
                gaps.append(max(0.0, (after.started_at - before.finished_at).total_seconds()))
    return Run(
        workers=n,
        jobs=len(jobs),
        span=span,
        per_hour=len(jobs) / span * 3600,
        job_seconds=statistics.mean(durations),
        overhead_seconds=statistics.mean(durations) - sleep,
        gap_seconds=statistics.median(gaps) if gaps else 0.0,
        failed=sum(1 for j in jobs if j.state.value != "done"),
        steps=steps,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", default="1,2,4,8", help="comma-separated process counts")
    parser.add_argument("--sleep", type=float, default=5.0, help="seconds each job sleeps")
    parser.add_argument("--rounds", type=int, default=3, help="jobs per worker process")
    parser.add_argument("--database", choices=("auto", "postgres", "sqlite"), default="auto")
    args = parser.parse_args()
    counts = [int(c) for c in args.workers.split(",")]
    runs: list[Run] = []
    kind = "SQLite"
    with (
        tempfile.TemporaryDirectory(prefix="pa-scaling-") as tmp,
        contextmanager(start_storescp)(Path(tmp), "--fork") as scp,
        EmbeddedRedis(Path(tmp) / "redis") as redis_server,
    ):
        for n in counts:
            with _database(args.database) as database:
                kind = "PostgreSQL" if database else "SQLite"
                run = run_once(
                    Path(tmp),
                    n,
                    broker=redis_server.url,
                    database=database,
                    storescp_port=scp.port,
                    args=args,
                )
            runs.append(run)
            print(
                f"N={n}: {run.jobs} jobs in {run.span:.1f} s ({kind}); "
                f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs",
                flush=True,
            )
    base = next((r.per_hour for r in runs if r.workers == 1), None)
    print(
        f"\nsleep {args.sleep:g} s per job, {args.rounds} jobs per worker process, job store {kind}"
    )
    steps = " | ".join(f"{k} (s)" for k in STEPS)
    print(
        "| workers | jobs | studies/hour | N x one worker | scaling factor | job time (s) "
        f"| beyond the sleep (s) | {steps} | finish to next claim, median (s) | failed |"
    )
    print("| --- " * (9 + len(STEPS)) + "|")
    for r in runs:
        ideal = base * r.workers if base else float("nan")
        per_step = " | ".join(f"{r.steps[k]:.2f}" for k in STEPS)
        print(
            f"| {r.workers} | {r.jobs} | {r.per_hour:.0f} | {ideal:.0f} | {r.per_hour / ideal:.2f} "
            f"| {r.job_seconds:.2f} | {r.overhead_seconds:.2f} | {per_step} "
            f"| {r.gap_seconds:.2f} | {r.failed} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
