"""Benchmark (not a test): a PACS sending while another host floods the SCP with bad connections.

Our SCP runs in its own process built as the service builds it (``scp_options`` of the
default settings: max_associations 10, associate_request_timeout 5 s, pdu_timeout 60 s,
max_connections_per_address 5). dcmtk ``storescu`` (the PACS, from 127.0.0.1) sends the
same CT instances over and over, one association per send, in runs of ``--seconds``:
undisturbed, under flood, undisturbed again (the two undisturbed runs are summed, so a
load that drifts during the run weighs on both sides). During the flood an attacker (from
``--attacker-addresses`` loopback addresses 127.0.0.2, 127.0.0.3, ...) opens
``--connections`` connections spread over the run, in turn: connect and send nothing;
send 3 bytes of a PDU header; send a header declaring 2 GiB and 100 bytes; connect and
close at once. Attacker connections stay open until the SCP closes them.

Reported: the sender's instances/s in both runs and their ratio (goal >= 0.8x), how many of
its associations failed, and how long the SCP let attacker connections live.

Run: .venv/bin/python bench/flood.py [--seconds 60] [--instances 20] [--connections 200]
"""

from __future__ import annotations

import argparse
import os
import selectors
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.processes import free_port, stop_process  # noqa: E402
from tests.support.storescp import dcmtk_tool, wait_for  # noqa: E402

DEFAULT_SERIES = REPO.parent / "shared" / "data" / "ct-abdomen-crlm1004"
AE_TITLE = "PACS_ANNOTATOR"
NODELAY = {**os.environ, "TCP_NODELAY": "1"}
KINDS = ("idle", "partial header", "2 GiB header", "connect+close")


def serve_scp(data_dir: Path, port: int) -> None:
    """Child mode: the SCP with the service's default settings until SIGTERM."""
    from scu_scp.scp import StorageSCP
    from scu_scp.spool import Spool
    from worker.config import load_settings
    from worker.service.scp import scp_options

    settings = load_settings(None, data_dir=data_dir, scp={"host": "127.0.0.1", "port": port})
    scp = StorageSCP(
        ae_title=settings.scp.ae_title,
        host=settings.scp.host,
        port=settings.scp.port,
        spool=Spool(settings.spool_dir),
        on_complete=lambda study: None,
        quiet_seconds=86400,  # nothing sealed: measure receiving only
        **scp_options(settings),
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    scp.start()
    stop.wait()
    scp.stop()


def _echo_ok(port: int) -> bool:
    result = subprocess.run(
        [dcmtk_tool("echoscu"), "-aec", AE_TITLE, "127.0.0.1", str(port)],
        capture_output=True,
        check=False,
    )
    return result.returncode == 0


@contextmanager
def our_scp(data_dir: Path, log: Path) -> Iterator[int]:
    """Our SCP in a child process; its log (warnings) goes to ``log``."""
    port = free_port()
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--serve-scp", str(data_dir), str(port)],
            env=NODELAY,
            stderr=sink,
        )
    try:
        if not wait_for(lambda: _echo_ok(port), timeout=60, interval=0.2):
            raise SystemExit(f"our SCP on port {port} did not answer C-ECHO")
        yield port
    finally:
        stop_process(proc, timeout=30)


@dataclass
class Sending:
    seconds: float = 0.0
    sends: int = 0
    failed: int = 0
    instances: int = 0

    @property
    def per_second(self) -> float:
        return self.instances / self.seconds if self.seconds else 0.0

    def add(self, other: Sending) -> Sending:
        return Sending(
            self.seconds + other.seconds,
            self.sends + other.sends,
            self.failed + other.failed,
            self.instances + other.instances,
        )


def send_loop(port: int, files: Sequence[Path], seconds: float) -> Sending:
    """storescu, one association per round, until ``seconds`` have passed (at least once)."""
    out = Sending()
    start = time.perf_counter()
    while not out.sends or time.perf_counter() - start < seconds:
        result = subprocess.run(
            [dcmtk_tool("storescu"), "-aet", "PACS", "-aec", AE_TITLE, "127.0.0.1", str(port)]
            + [str(p) for p in files],
            capture_output=True,
            env=NODELAY,
            check=False,
        )
        out.sends += 1
        if result.returncode == 0:
            out.instances += len(files)
        else:
            out.failed += 1
    out.seconds = time.perf_counter() - start
    return out


@dataclass
class Attack:
    opened: dict[str, int] = field(default_factory=dict)
    refused_at_once: int = 0  # the connect itself failed (backlog full)
    lifetimes: dict[str, list[float]] = field(default_factory=dict)  # s until the SCP closed it
    still_open: int = 0


def _open(kind: str, port: int, source: str) -> socket.socket | None:
    """A connection of ``kind`` from ``source``, left open (None: closed at once)."""
    conn = socket.socket()
    conn.bind((source, 0))
    conn.settimeout(5)
    conn.connect(("127.0.0.1", port))
    if kind == "connect+close":
        conn.close()
        return None
    if kind == "partial header":
        conn.sendall(b"\x01\x00\x00")
    elif kind == "2 GiB header":
        conn.sendall(struct.pack(">BBI", 0x04, 0x00, 2**31) + bytes(100))
    conn.setblocking(False)
    return conn


def attack(
    port: int, connections: int, seconds: float, addresses: int, stop: threading.Event
) -> Attack:
    """Open ``connections`` bad connections evenly over ``seconds``; watch when each closes."""
    out = Attack()
    sources = [f"127.0.0.{2 + i}" for i in range(addresses)]
    selector = selectors.DefaultSelector()
    start = time.monotonic()
    for n in range(connections):
        due = start + n * seconds / connections
        while (wait := due - time.monotonic()) > 0 and not stop.is_set():
            for key, _ in selector.select(timeout=wait):
                _closed(selector, key, out)
        if stop.is_set():
            break
        kind = KINDS[n % len(KINDS)]
        out.opened[kind] = out.opened.get(kind, 0) + 1
        try:
            conn = _open(kind, port, sources[n % len(sources)])
        except OSError:
            out.refused_at_once += 1
            continue
        if conn is not None:
            selector.register(conn, selectors.EVENT_READ, (kind, time.monotonic()))
    while selector.get_map() and not stop.is_set():
        for key, _ in selector.select(timeout=0.2):
            _closed(selector, key, out)
    for key in list(selector.get_map().values()):
        out.still_open += 1
        selector.unregister(key.fileobj)
        key.fileobj.close()  # type: ignore[union-attr]
    return out


def _closed(selector: selectors.BaseSelector, key: selectors.SelectorKey, out: Attack) -> None:
    conn = key.fileobj
    assert isinstance(conn, socket.socket)
    try:
        data = conn.recv(65536)
    except BlockingIOError:
        return
    except OSError:
        data = b""
    if data:
        return  # an answer (e.g. an A-ABORT): wait for the close itself
    kind, opened = key.data
    out.lifetimes.setdefault(kind, []).append(time.monotonic() - opened)
    selector.unregister(conn)
    conn.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=Path, default=DEFAULT_SERIES)
    parser.add_argument("--instances", type=int, default=20, help="instances per association")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each run")
    parser.add_argument("--connections", type=int, default=200, help="attacker connections")
    parser.add_argument("--attacker-addresses", type=int, default=10)
    parser.add_argument(
        "--serve-scp", nargs=2, metavar=("DATA_DIR", "PORT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.serve_scp:
        serve_scp(Path(args.serve_scp[0]), int(args.serve_scp[1]))
        return 0
    files = sorted(args.series.glob("*.dcm"))[: args.instances]
    if not files:
        raise SystemExit(f"no .dcm files in {args.series} (see ../shared/data/README.md)")
    megabytes = sum(p.stat().st_size for p in files) / 1e6
    print(
        f"flood: {len(files)} instances ({megabytes:.1f} MB) per association, "
        f"{args.seconds:g} s per run, {args.connections} attacker connections "
        f"from {args.attacker_addresses} addresses",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="bench-flood-") as work:
        log = Path(work) / "scp.log"
        with our_scp(Path(work), log) as port:
            quiet, flooded, flood = runs(port, files, args)
        logged = [line for line in log.read_text().splitlines() if "connection from 127." in line]
    report(quiet, flooded, flood)
    print(f"SCP log: {len(logged)} lines naming an attacker address, e.g. {logged[:1]}")
    return 0


def runs(
    port: int, files: Sequence[Path], args: argparse.Namespace
) -> tuple[Sending, Sending, Attack]:
    """A warm-up send; undisturbed, under flood, undisturbed again (both summed)."""
    send_loop(port, files, 0.0)
    quiet = send_loop(port, files, args.seconds)
    print(f"  undisturbed: {quiet.per_second:.1f} instances/s, {quiet.failed} failed", flush=True)
    stop = threading.Event()
    result: list[Attack] = []
    attacker = threading.Thread(
        target=lambda: result.append(
            attack(port, args.connections, args.seconds, args.attacker_addresses, stop)
        )
    )
    attacker.start()
    flooded = send_loop(port, files, args.seconds)
    attacker.join(timeout=args.seconds + 120)
    stop.set()
    attacker.join()
    after = send_loop(port, files, args.seconds)  # undisturbed again: the load may drift
    return quiet.add(after), flooded, result[0]


def report(quiet: Sending, flooded: Sending, flood: Attack) -> None:
    ratio = flooded.per_second / quiet.per_second if quiet.per_second else 0.0
    print("\n| run | associations | failed | instances/s | vs undisturbed |")
    print("| --- | --- | --- | --- | --- |")
    for name, run in (("undisturbed (before and after)", quiet), ("under flood", flooded)):
        relative = run.per_second / quiet.per_second if quiet.per_second else 0.0
        print(f"| {name} | {run.sends} | {run.failed} | {run.per_second:.1f} | {relative:.2f}x |")
    print(
        f"\nattacker: {sum(flood.opened.values())} connections "
        f"({', '.join(f'{k}: {v}' for k, v in flood.opened.items())}); "
        f"{flood.refused_at_once} could not connect; {flood.still_open} still open at the end"
    )
    for kind, lifetimes in flood.lifetimes.items():
        print(
            f"  {kind}: {len(lifetimes)} closed by the SCP after median "
            f"{statistics.median(lifetimes):.2f} s, max {max(lifetimes):.2f} s"
        )
    print(f"ratio under flood: {ratio:.2f}x (goal >= 0.8x)")


if __name__ == "__main__":
    raise SystemExit(main())
