"""Benchmark (not a test): DICOM ingest into our SCP against dcmtk storescp and Orthanc.

1. Ingest: the same CT series is sent with dcmtk ``storescu`` (one association) to
   (a) our StorageSCP with the durable spool (fsync per instance), with one process and
   with each ``--processes`` count, (b) dcmtk ``storescp``, (c) Orthanc; every receiver
   runs as its own process with ``TCP_NODELAY=1``, all of them at once. One warm-up send
   each, then ``--repeats`` interleaved rounds (one timed send to each receiver per
   round); the median is reported. Beside them, (d) pynetdicom alone storing nothing, with
   our reactor (the ceiling for our SCP) and as shipped, and the fsync floor: each file
   of the series written, fsynced, renamed and its folder fsynced, no network: what one
   instance's durability costs on this disk.
2. Concurrency: N simultaneous ``storescu`` senders (each its own copy of the series with
   new UIDs) into each receiver: ours (each process count), storescp and Orthanc, started
   once per N; ``--rounds`` interleaved rounds with fresh studies, the median reported;
   afterwards every instance must be in each of our spools.

Run: .venv/bin/python bench/ingest.py [--series DIR] [--repeats 5] [--senders 1,4,16]
     [--rounds 3] [--processes 2] [--baseline REV]
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
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

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


def serve_scp(spool_dir: Path, port: int, source: Path | None = None, processes: int = 1) -> None:
    """Child mode: our SCP alone in this process (and its receiver processes) until
    SIGTERM; ``source`` holds another revision's ``scu_scp`` package (``--baseline``)."""
    if source is not None:
        if "scu_scp" in sys.modules:
            raise SystemExit("scu_scp already imported: cannot run the baseline")
        sys.path.insert(0, str(source))
    from scu_scp.scp import StorageSCP
    from scu_scp.spool import Spool

    loaded = Path(str(sys.modules["scu_scp"].__file__))
    if source is not None and not loaded.is_relative_to(source):
        raise SystemExit(f"baseline scu_scp not loaded: {loaded}")

    spool = Spool(spool_dir)
    receiving = getattr(spool, "receiving", None)  # as worker/service/scp.py (not in baseline)
    if receiving is not None:
        tempfile.tempdir = str(receiving)
    scp = StorageSCP(
        ae_title="ANNOTATOR",
        host="127.0.0.1",
        port=port,
        spool=spool,
        on_complete=lambda study: None,
        quiet_seconds=86400,  # no sealing during the run: measure receiving only
        max_associations=64,
        **({"processes": processes} if processes > 1 else {}),  # type: ignore[arg-type]
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    scp.start()
    stop.wait()
    scp.stop()


def serve_bare(port: int, waiting: bool) -> None:
    """Child mode: pynetdicom alone, answering 0x0000 and keeping nothing: the ceiling for
    a receiver built on it. ``waiting``: with our reactor (scu_scp/reactor.py), as our SCP
    runs it; else pynetdicom as shipped (its threads poll)."""
    from pynetdicom import AE, AllStoragePresentationContexts, _config, evt
    from pynetdicom.transport import ThreadedAssociationServer

    from scu_scp.reactor import WaitingRequestHandler
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
    handlers: list[Any] = [(evt.EVT_C_STORE, lambda e: 0x0000)]
    if waiting:
        server = ae.make_server(
            ("127.0.0.1", port),
            evt_handlers=handlers,
            server_class=ThreadedAssociationServer,
            request_handler=WaitingRequestHandler,
        )
        threading.Thread(target=server.serve_forever, daemon=True).start()
        ae._servers.append(server)
    else:
        ae.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers)
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


@dataclass(frozen=True)
class Receiver:
    aet: str
    port: int
    pid: int  # its process; CPU is counted over it and its descendants


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and every process descended from it, so far."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        child = int(stat.parent.name)
        parents[child] = int(fields[1])
        times[child] = (int(fields[11]) + int(fields[12])) / tick
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in tree:
                tree.add(child)
                frontier.append(child)
    return sum(times.get(p, 0.0) for p in tree)


@contextmanager
def our_scp(spool_dir: Path, source: Path | None = None, processes: int = 1) -> Iterator[Receiver]:
    port = free_port()
    extra = [] if source is None else ["--scp-source", str(source)]
    extra += ["--scp-processes", str(processes)]
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve-scp", str(spool_dir), str(port), *extra], env=NODELAY
    )
    try:
        wait_echo("ANNOTATOR", port)
        yield Receiver("ANNOTATOR", port, proc.pid)
    finally:
        stop_process(proc, timeout=30)


@contextmanager
def bare_pynetdicom(waiting: bool) -> Iterator[Receiver]:
    port = free_port()
    mode = "waiting" if waiting else "polling"
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve-bare", str(port), mode], env=NODELAY
    )
    try:
        wait_echo("BARE", port)
        yield Receiver("BARE", port, proc.pid)
    finally:
        stop_process(proc, timeout=30)


@contextmanager
def storescp(out_dir: Path, *, store: bool = True) -> Iterator[Receiver]:
    """dcmtk storescp writing each instance to ``out_dir`` (no fsync), or with ``store``
    False receiving and answering only (``--ignore``)."""
    port = free_port()
    out_dir.mkdir(parents=True, exist_ok=True)
    ignore = [] if store else ["--ignore"]
    proc = subprocess.Popen(
        [dcmtk("storescp"), *ignore, "-aet", "STORESCP", "-od", str(out_dir), str(port)],
        env=NODELAY,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_echo("STORESCP", port)
        yield Receiver("STORESCP", port, proc.pid)
    finally:
        stop_process(proc, timeout=10)


@contextmanager
def orthanc() -> Iterator[Receiver]:
    with Orthanc(graceful_stop=False) as server:  # starts Orthanc with TCP_NODELAY=1
        wait_echo(server.aet, server.dicom_port)
        assert server.pid is not None
        yield Receiver(server.aet, server.dicom_port, server.pid)


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
    cpu_ms: float = 0.0  # receiver CPU (user + system, all its processes) per instance
    senders_cpu_ms: float = 0.0  # the storescu senders' CPU per instance

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


OURS = "pacs-annotator SCP (durable spool)"


def ours_in(processes: int) -> str:
    return f"pacs-annotator SCP, scp.processes {processes}"


BEFORE = "pacs-annotator SCP before (--baseline)"
STORESCP = "dcmtk storescp"
STORESCP_IGNORE = "dcmtk storescp --ignore (receives, stores nothing)"
FLOOR = "fsync floor (no network, not a receiver)"


def _our_spools(work: Path, tag: str, processes: Sequence[int]) -> dict[str, Path]:
    """Spool folder of each of our receivers: one process, then each ``processes``."""
    return {OURS: work / f"spool{tag}"} | {ours_in(n): work / f"spool{tag}-p{n}" for n in processes}


def _check_stored(spools: dict[str, Path], expected: set[str]) -> None:
    for name, spool in spools.items():
        stored = {p.stem for p in (spool / "incoming").rglob("*.dcm")}
        lost = expected - stored
        if lost:
            raise SystemExit(f"{name}: {len(lost)} acknowledged instances missing from the spool")


def _sop_uids(files: Sequence[Path]) -> set[str]:
    return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files}


def ingest(
    files: list[Path], repeats: int, work: Path, baseline: Path | None, processes: Sequence[int]
) -> list[Rate]:
    megabytes = sum(p.stat().st_size for p in files) / 1e6
    spools = _our_spools(work, "", processes)
    starters: dict[str, Callable[[], AbstractContextManager[Receiver]]] = {
        OURS: partial(our_scp, spools[OURS]),
    }
    starters |= {ours_in(n): partial(our_scp, spools[ours_in(n)], None, n) for n in processes}
    if baseline is not None:
        starters[BEFORE] = lambda: our_scp(work / "spool-before", baseline)
    starters |= {
        STORESCP: lambda: storescp(work / "storescp"),
        STORESCP_IGNORE: lambda: storescp(work / "storescp-ignore", store=False),
        "Orthanc": orthanc,
        "bare pynetdicom with our reactor (stores nothing: the ceiling)": partial(
            bare_pynetdicom, True
        ),
        "bare pynetdicom as shipped (stores nothing)": partial(bare_pynetdicom, False),
    }
    times: dict[str, list[float]] = {name: [] for name in starters}
    floor: list[float] = []
    with ExitStack() as stack:
        receivers = {name: stack.enter_context(start()) for name, start in starters.items()}
        for receiver in receivers.values():
            send(receiver.aet, receiver.port, files)  # warm-up
        for _ in range(repeats):  # interleaved: load from others hits every receiver alike
            for name, receiver in receivers.items():
                times[name].append(send(receiver.aet, receiver.port, files))
            floor.append(fsync_floor(files, Path(tempfile.mkdtemp(dir=work))))
    times[FLOOR] = floor
    rates = []
    for name, seconds in times.items():
        rates.append(Rate(name, statistics.median(seconds), len(files), megabytes))
        print(f"  {name}: median {statistics.median(seconds):.3f} s of {seconds}", flush=True)
    _check_stored(spools, _sop_uids(files))
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


def _children_cpu() -> float:
    """CPU of this process's finished children (the storescu senders) so far."""
    times = os.times()
    return times.children_user + times.children_system


def concurrency(
    files: list[Path],
    senders: Sequence[int],
    work: Path,
    baseline: Path | None,
    processes: Sequence[int],
    rounds: int,
) -> list[tuple[int, dict[str, Rate]]]:
    """For each N: every receiver started once, then ``rounds`` interleaved rounds of N
    simultaneous senders into each (fresh studies every round); the median round."""
    sets = copies(files, max(senders) * rounds, work / "copies")
    megabytes = sum(p.stat().st_size for p in files) / 1e6
    rows = []
    for n in senders:
        spools = _our_spools(work, f"-n{n}", processes)
        starters: dict[str, Callable[[], AbstractContextManager[Receiver]]] = {
            name: partial(our_scp, spool, None, 1 if name == OURS else int(name.split()[-1]))
            for name, spool in spools.items()
        }
        if baseline is not None:
            starters[BEFORE] = partial(our_scp, work / f"spool-before-n{n}", baseline)
        starters[STORESCP] = partial(storescp, work / f"storescp-n{n}")
        starters["Orthanc"] = orthanc
        seconds: dict[str, list[float]] = {name: [] for name in starters}
        cpu: dict[str, list[float]] = {name: [] for name in starters}
        senders_cpu: dict[str, list[float]] = {name: [] for name in starters}
        with ExitStack() as stack:
            receivers = {name: stack.enter_context(start()) for name, start in starters.items()}
            for r in range(rounds):
                batch = sets[r * n : (r + 1) * n]
                for name, receiver in receivers.items():
                    before, children = cpu_seconds(receiver.pid), _children_cpu()
                    seconds[name].append(_senders(receiver.aet, receiver.port, batch))
                    per_instance = 1000 / (n * len(files))
                    cpu[name].append((cpu_seconds(receiver.pid) - before) * per_instance)
                    senders_cpu[name].append((_children_cpu() - children) * per_instance)
        rates = {
            name: Rate(
                name,
                statistics.median(times),
                n * len(files),
                n * megabytes,
                statistics.median(cpu[name]),
                statistics.median(senders_cpu[name]),
            )
            for name, times in seconds.items()
        }
        _check_stored(spools, _sop_uids([p for s in sets[: n * rounds] for p in s]))
        summary = ", ".join(f"{name} {r.seconds:.2f} s" for name, r in rates.items())
        print(f"  N={n} (median of {rounds}): all in each of our spools; {summary}", flush=True)
        rows.append((n, rates))
    return rows


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A Markdown table, as docs/benchmarks.md quotes them."""
    print("\n| " + " | ".join(headers) + " |")
    print("| " + " | ".join("---" for _ in headers) + " |")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=Path, default=DEFAULT_SERIES)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--senders", default="1,4,16")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per N of concurrent senders")
    parser.add_argument("--serve-scp", nargs=2, metavar=("SPOOL", "PORT"), help=argparse.SUPPRESS)
    parser.add_argument("--serve-bare", nargs=2, metavar=("PORT", "MODE"), help=argparse.SUPPRESS)
    parser.add_argument("--scp-source", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--scp-processes", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument(
        "--processes",
        default="2",
        help="also measure our SCP with scp.processes at these values (comma-separated)",
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also measure the SCP of this git revision in the same rounds (before/after)",
    )
    args = parser.parse_args(argv)
    if args.serve_scp:
        serve_scp(
            Path(args.serve_scp[0]), int(args.serve_scp[1]), args.scp_source, args.scp_processes
        )
        return 0
    if args.serve_bare:
        serve_bare(int(args.serve_bare[0]), args.serve_bare[1] == "waiting")
        return 0
    files = sorted(args.series.glob("*.dcm"))
    if not files:
        raise SystemExit(f"no .dcm files in {args.series} (see ../shared/data/README.md)")
    senders = [int(n) for n in args.senders.split(",")]
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        print(f"ingest: {len(files)} instances, {args.repeats} repeats", flush=True)
        baseline = None
        if args.baseline:
            baseline = work / "baseline"
            baseline.mkdir()
            archive = subprocess.run(
                ["git", "-C", str(REPO), "archive", args.baseline, "scu_scp"],
                capture_output=True,
                check=True,
            ).stdout
            subprocess.run(["tar", "-x", "-C", str(baseline)], input=archive, check=True)
        processes = [int(n) for n in args.processes.split(",") if n.strip()]
        rates = ingest(files, args.repeats, work, baseline, processes)
        print(f"concurrency: N = {senders}", flush=True)
        rows = concurrency(files, senders, work, baseline, processes, args.rounds)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    ours = rates[0]
    print_table(
        ["receiver", "s per series", "instances/s", "MB/s", "ours relative"],
        [
            [
                r.name,
                f"{r.seconds:.3f}",
                f"{r.per_second:.0f}",
                f"{r.mb_per_second:.0f}",
                f"{ours.per_second / r.per_second:.2f}x",
            ]
            for r in rates
        ],
    )
    names = list(rows[0][1])
    print_table(
        ["senders N", "instances"]
        + [f"{name}: instances/s (vs its N=1)" for name in names]
        + ["ours relative to storescp"],
        [
            [str(n), str(by_name[OURS].instances)]
            + [
                f"{r.per_second:.0f} ({r.per_second / rows[0][1][name].per_second:.2f}x)"
                for name, r in by_name.items()
            ]
            + [f"{by_name[OURS].per_second / by_name[STORESCP].per_second:.2f}x"]
            for n, by_name in rows
        ],
    )
    cores = os.cpu_count() or 1
    print(
        f"\nCPU per instance (ms, user + system; receiver: all its processes) and the rate the "
        f"{cores} cores allow at most if receiver and senders used nothing else: "
        f"{cores} s / (receiver + senders)"
    )
    print_table(
        ["senders N"] + [f"{name}: receiver, senders, ceiling/s" for name in names],
        [
            [str(n)]
            + [
                f"{r.cpu_ms:.2f}, {r.senders_cpu_ms:.2f}, "
                f"{1000 * cores / (r.cpu_ms + r.senders_cpu_ms):.0f}"
                for r in by_name.values()
            ]
            for n, by_name in rows
        ],
    )
    floor = next(r for r in rates if r.name == FLOOR)
    ignore = next(r for r in rates if r.name == STORESCP_IGNORE)
    plain = next(r for r in rates if r.name == STORESCP)
    durable = ignore.seconds + floor.seconds
    print(
        f"\nOne sender, any durable receiver on this machine: at least storescp --ignore's "
        f"{ignore.seconds:.3f} s + the fsync floor's {floor.seconds:.3f} s = {durable:.3f} s "
        f"per series, {plain.seconds / durable:.2f}x storescp's {plain.seconds:.3f} s."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
