"""Benchmark (not a test): DICOM ingest into our SCP against dcmtk storescp and Orthanc.

1. Ingest: the same CT series is sent with dcmtk ``storescu`` (one association) to
   (a) our StorageSCP with the durable spool (fsync per instance), (b) dcmtk ``storescp``,
   (c) Orthanc; every receiver runs as its own process with ``TCP_NODELAY=1``, all three
   at once. One warm-up send each, then ``--repeats`` interleaved rounds (one timed send
   to each receiver per round); the median is reported. Beside them, (d) pynetdicom alone
   as our SCP runs it, storing nothing (the ceiling for a pynetdicom receiver), and the
   fsync floor: each file of the series written, fsynced, renamed and its folder fsynced,
   no network: what one instance's durability costs on this disk.
2. Concurrency: N simultaneous ``storescu`` senders (each its own copy of the series with
   new UIDs) into a fresh StorageSCP and, in the same round, a fresh ``storescp``;
   afterwards every instance must be in our spool.

Run: .venv/bin/python bench/ingest.py [--series DIR] [--repeats 5] [--senders 1,4,16]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pydicom  # noqa: E402

from tests.support.orthanc import Orthanc  # noqa: E402
from tests.support.processes import free_port, stop_process  # noqa: E402
from tests.support.studies import write_copy  # noqa: E402

DEFAULT_SERIES = REPO.parent / "shared" / "data" / "ct-abdomen-crlm1004"
NODELAY = {**os.environ, "TCP_NODELAY": "1"}


def dcmtk(name: str) -> str:
    """The dcmtk binary, not the venv's pynetdicom script of the same name."""
    for directory in os.get_exec_path():
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            with candidate.open("rb") as fh:
                if fh.read(2) != b"#!":
                    return str(candidate)
    raise SystemExit(f"dcmtk {name} not found (Debian package dcmtk)")


def serve_scp(spool_dir: Path, port: int) -> None:
    """Child mode: our SCP alone in this process until SIGTERM."""
    from scu_scp.scp import StorageSCP
    from scu_scp.spool import Spool

    scp = StorageSCP(
        ae_title="ANNOTATOR",
        host="127.0.0.1",
        port=port,
        spool=Spool(spool_dir),
        on_complete=lambda study: None,
        quiet_seconds=86400,  # no sealing during the run: measure receiving only
        max_associations=64,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    scp.start()
    stop.wait()
    scp.stop()


def serve_bare(port: int) -> None:
    """Child mode: pynetdicom alone, as our SCP runs it, answering 0x0000 and keeping
    nothing: the ceiling for any receiver built on pynetdicom."""
    from pynetdicom import AE, AllStoragePresentationContexts, _config, evt

    from scu_scp.scp import MAXIMUM_PDU_SIZE, TRANSFER_SYNTAXES

    _config.STORE_RECV_CHUNKED_DATASET = True
    ae = AE(ae_title="BARE")
    ae.maximum_pdu_size = MAXIMUM_PDU_SIZE
    ae.maximum_associations = 64
    ae.add_supported_context("1.2.840.10008.1.1")
    for cx in AllStoragePresentationContexts:
        if cx.abstract_syntax is not None:
            ae.add_supported_context(cx.abstract_syntax, list(TRANSFER_SYNTAXES))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, lambda e: 0x0000)]
    )
    stop.wait()
    ae.shutdown()


def wait_echo(aet: str, port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = subprocess.run(
            [dcmtk("echoscu"), "-aec", aet, "127.0.0.1", str(port)],
            capture_output=True,
            check=False,
        )
        if result.returncode == 0:
            return
        time.sleep(0.2)
    raise SystemExit(f"{aet} on port {port} did not answer C-ECHO")


@contextmanager
def our_scp(spool_dir: Path) -> Iterator[tuple[str, int]]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve-scp", str(spool_dir), str(port)], env=NODELAY
    )
    try:
        wait_echo("ANNOTATOR", port)
        yield "ANNOTATOR", port
    finally:
        stop_process(proc, timeout=30)


@contextmanager
def bare_pynetdicom() -> Iterator[tuple[str, int]]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve-bare", str(port)], env=NODELAY)
    try:
        wait_echo("BARE", port)
        yield "BARE", port
    finally:
        stop_process(proc, timeout=30)


@contextmanager
def storescp(out_dir: Path) -> Iterator[tuple[str, int]]:
    port = free_port()
    out_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [dcmtk("storescp"), "-aet", "STORESCP", "-od", str(out_dir), str(port)],
        env=NODELAY,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_echo("STORESCP", port)
        yield "STORESCP", port
    finally:
        stop_process(proc, timeout=10)


@contextmanager
def orthanc() -> Iterator[tuple[str, int]]:
    with Orthanc(graceful_stop=False) as server:  # starts Orthanc with TCP_NODELAY=1
        wait_echo(server.aet, server.dicom_port)
        yield server.aet, server.dicom_port


def send(aet: str, port: int, files: Sequence[Path]) -> float:
    """Seconds for one storescu association sending ``files``."""
    start = time.perf_counter()
    result = subprocess.run(
        [dcmtk("storescu"), "-aet", "BENCH", "-aec", aet, "127.0.0.1", str(port), *map(str, files)],
        capture_output=True,
        text=True,
        env=NODELAY,
        check=False,
    )
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"storescu to {aet} failed: {result.stderr[-500:]}")
    return elapsed


@dataclass
class Rate:
    name: str
    seconds: float
    instances: int
    megabytes: float

    @property
    def per_second(self) -> float:
        return self.instances / self.seconds

    @property
    def mb_per_second(self) -> float:
        return self.megabytes / self.seconds


def fsync_floor(files: list[Path], work: Path) -> float:
    """Seconds to write, fsync, rename and fsync the folder of each file: no network."""
    folder = work / "floor"
    folder.mkdir()
    datas = [p.read_bytes() for p in files]
    start = time.perf_counter()
    for n, data in enumerate(datas):
        tmp = folder / f"{n}.part"
        with tmp.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.rename(folder / f"{n}.dcm")
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        os.fsync(fd)
        os.close(fd)
    return time.perf_counter() - start


def ingest(files: list[Path], repeats: int, work: Path) -> list[Rate]:
    megabytes = sum(p.stat().st_size for p in files) / 1e6
    starters = {
        "pacs-annotator SCP (durable spool)": lambda: our_scp(work / "spool"),
        "dcmtk storescp": lambda: storescp(work / "storescp"),
        "Orthanc": orthanc,
        "bare pynetdicom (stores nothing: the ceiling)": bare_pynetdicom,
    }
    times: dict[str, list[float]] = {name: [] for name in starters}
    floor: list[float] = []
    with ExitStack() as stack:
        receivers = {name: stack.enter_context(start()) for name, start in starters.items()}
        for aet, port in receivers.values():
            send(aet, port, files)  # warm-up
        for _ in range(repeats):  # interleaved: load from others hits every receiver alike
            for name, (aet, port) in receivers.items():
                times[name].append(send(aet, port, files))
            floor.append(fsync_floor(files, Path(tempfile.mkdtemp(dir=work))))
    times["fsync floor (no network, not a receiver)"] = floor
    rates = []
    for name, seconds in times.items():
        rates.append(Rate(name, statistics.median(seconds), len(files), megabytes))
        print(f"  {name}: median {statistics.median(seconds):.3f} s of {seconds}", flush=True)
    stored = list((work / "spool" / "incoming").rglob("*.dcm"))
    if len(stored) != len(files):
        raise SystemExit(f"our spool holds {len(stored)} instances, expected {len(files)}")
    return rates


def copies(files: list[Path], count: int, work: Path) -> list[list[Path]]:
    """``count`` copies of the series, each a new study with new UIDs."""
    datasets = [pydicom.dcmread(p) for p in files]
    return [write_copy(datasets, work / f"copy{n:02d}")[1] for n in range(count)]


def _senders(aet: str, port: int, sets: list[list[Path]]) -> float:
    """Seconds until every one of ``len(sets)`` simultaneous storescu senders is done."""
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            [
                dcmtk("storescu"),
                "-aet",
                f"SENDER{i}",
                "-aec",
                aet,
                "127.0.0.1",
                str(port),
                *map(str, files),
            ],
            env=NODELAY,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for i, files in enumerate(sets)
    ]
    failures = [p.wait() for p in procs]
    elapsed = time.perf_counter() - start
    if any(failures):
        raise SystemExit(f"{aet}: {sum(1 for f in failures if f)} of {len(sets)} senders failed")
    return elapsed


def concurrency(
    files: list[Path], senders: Sequence[int], work: Path
) -> list[tuple[int, Rate, Rate]]:
    sets = copies(files, max(senders), work / "copies")
    megabytes = sum(p.stat().st_size for p in files) / 1e6
    rows = []
    for n in senders:
        spool = work / f"spool-n{n}"
        with our_scp(spool) as (aet, port):
            ours = _senders(aet, port, sets[:n])
        with storescp(work / f"storescp-n{n}") as (aet, port):
            theirs = _senders(aet, port, sets[:n])
        stored = {p.stem for p in (spool / "incoming").rglob("*.dcm")}
        expected = {
            pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for s in sets[:n] for p in s
        }
        lost = expected - stored
        print(
            f"  N={n}: {len(stored)} of {len(expected)} stored, {len(lost)} lost, "
            f"{ours:.2f} s (storescp {theirs:.2f} s)",
            flush=True,
        )
        if lost:
            raise SystemExit(f"N={n}: {len(lost)} acknowledged instances missing from the spool")
        rows.append(
            (
                n,
                Rate(f"N={n}", ours, n * len(files), n * megabytes),
                Rate(f"storescp N={n}", theirs, n * len(files), n * megabytes),
            )
        )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=Path, default=DEFAULT_SERIES)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--senders", default="1,4,16")
    parser.add_argument("--serve-scp", nargs=2, metavar=("SPOOL", "PORT"), help=argparse.SUPPRESS)
    parser.add_argument("--serve-bare", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_scp:
        serve_scp(Path(args.serve_scp[0]), int(args.serve_scp[1]))
        return 0
    if args.serve_bare:
        serve_bare(args.serve_bare)
        return 0
    files = sorted(args.series.glob("*.dcm"))
    if not files:
        raise SystemExit(f"no .dcm files in {args.series} (see ../shared/data/README.md)")
    senders = [int(n) for n in args.senders.split(",")]
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        print(f"ingest: {len(files)} instances, {args.repeats} repeats", flush=True)
        rates = ingest(files, args.repeats, work)
        print(f"concurrency: N = {senders}", flush=True)
        rows = concurrency(files, senders, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    ours = rates[0]
    print("\n| receiver | s per series | instances/s | MB/s | ours relative |")
    print("| --- | --- | --- | --- | --- |")
    for r in rates:
        print(
            f"| {r.name} | {r.seconds:.3f} | {r.per_second:.0f} | {r.mb_per_second:.0f} | "
            f"{ours.per_second / r.per_second:.2f}x |"
        )
    print(
        "\n| senders N | instances | s | instances/s | MB/s | vs N=1 "
        "| storescp instances/s | ours relative to storescp |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    base = rows[0][1].per_second
    for n, r, peer in rows:
        print(
            f"| {n} | {r.instances} | {r.seconds:.2f} | {r.per_second:.0f} | "
            f"{r.mb_per_second:.0f} | {r.per_second / base:.2f}x | {peer.per_second:.0f} | "
            f"{r.per_second / peer.per_second:.2f}x |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
