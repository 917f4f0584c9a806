"""Helpers for the security and limits tests: a started SCP, test certificates, small CT files."""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from scu_scp.models import SpooledStudy
from scu_scp.scp import StorageSCP
from scu_scp.spool import Spool
from tests.support.phantom import make_ct_phantom
from tests.support.processes import free_port, stop_process
from tests.support.storescp import StoreSCP, dcmtk_tool, wait_for

AE_TITLE = "ANNOTATOR"

ScpFactory = Callable[..., StorageSCP]


@pytest.fixture
def start_scp(tmp_path: Path) -> Iterator[ScpFactory]:
    """Start StorageSCPs on free ports over ``tmp_path/spool``; stopped after the test.

    Keyword arguments go to ``StorageSCP``; without ``on_complete`` sealed studies are
    only collected, and without ``quiet_seconds`` nothing completes within a test.
    """
    started: list[StorageSCP] = []

    def factory(**kwargs: object) -> StorageSCP:
        completed: list[SpooledStudy] = []
        options: dict[str, object] = {
            "quiet_seconds": 60.0,
            "poll_interval": 0.05,
            "on_complete": completed.append,
        }
        options.update(kwargs)
        scp = StorageSCP(
            ae_title=AE_TITLE,
            host="127.0.0.1",
            port=0,
            spool=Spool(tmp_path / "spool"),
            **options,  # type: ignore[arg-type]
        )
        scp.start()
        started.append(scp)
        return scp

    yield factory
    for scp in started:
        scp.stop()


def spooled(root: Path) -> list[Path]:
    """Instances filed in the spool (incoming or sealed), not quarantine."""
    return sorted(p for p in root.rglob("*.dcm") if "quarantine" not in p.parts)


def ct_files(folder: Path, count: int = 3, seed: int = 0, size: int = 32) -> list[Path]:
    """``count`` synthetic CT slices (``size`` pixels square) of one new study, as files."""
    folder.mkdir(parents=True, exist_ok=True)
    phantom = make_ct_phantom(slices=count, size=size, seed=seed)
    paths = []
    for i, ds in enumerate(phantom.datasets):
        path = folder / f"ct{seed}-{i:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def dcmtk(name: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a dcmtk tool; the caller checks the outcome."""
    return subprocess.run(
        [dcmtk_tool(name), *args], capture_output=True, text=True, timeout=timeout, check=False
    )


@dataclass(frozen=True)
class Pem:
    """A certificate and its key, as PEM files."""

    certificate: Path
    private_key: Path


@dataclass(frozen=True)
class Pki:
    """A test CA, a server certificate for 127.0.0.1, a client one, and one from another CA."""

    ca: Path
    server: Pem
    client: Pem
    rogue: Pem


def _issue(ca: trustme.CA, folder: Path, name: str, *identities: str) -> Pem:
    leaf = ca.issue_cert(*identities)
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    return Pem(cert, key)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    folder = tmp_path / "pki"
    folder.mkdir()
    # RSA keys: what dcmtk's default (BCP 195) TLS profile and most PACS expect.
    ca = trustme.CA(key_type=trustme.KeyType.RSA)
    other = trustme.CA(key_type=trustme.KeyType.RSA)
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    return Pki(
        ca=folder / "ca.pem",
        server=_issue(ca, folder, "server", "127.0.0.1", "localhost"),
        client=_issue(ca, folder, "client", "pacs.example.org"),
        rogue=_issue(other, folder, "rogue", "pacs.example.org"),
    )


@contextlib.contextmanager
def storescp_tls(
    tmp_path: Path, pki: Pki, key: Path, cert: Path, *extra: str
) -> Iterator[StoreSCP]:
    """dcmtk storescp over TLS with ``key``/``cert``; ready once a TLS C-ECHO succeeds."""
    out_dir = tmp_path / "storescp-tls-out"
    out_dir.mkdir()
    port = free_port()
    tls = ["+tls", str(key), str(cert), "+cf", str(pki.ca), *extra]
    process = subprocess.Popen(
        [dcmtk_tool("storescp"), "-aet", "STORESCP", "-od", str(out_dir), *tls, str(port)],
        env={**os.environ, "TCP_NODELAY": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    probe = ["+tls", str(pki.client.private_key), str(pki.client.certificate), "-ic"]

    def ready() -> bool:
        args = [*probe, "-aec", "STORESCP", "127.0.0.1", str(port)]
        return dcmtk("echoscu", *args, timeout=20).returncode == 0

    try:
        if not wait_for(ready, timeout=30, interval=0.2):
            pytest.fail(f"storescp +tls did not answer on port {port}")
        yield StoreSCP(port, "STORESCP", out_dir, process)
    finally:
        stop_process(process)


def recv_exactly(conn: socket.socket, count: int) -> bytes:
    """``count`` bytes from ``conn``, or fewer if the peer closes first."""
    data = b""
    while len(data) < count:
        chunk = conn.recv(count - len(data))
        if not chunk:
            break
        data += chunk
    return data


def association_rq_bytes(called_ae: str, timeout: float = 5.0) -> bytes:
    """The A-ASSOCIATE-RQ PDU pynetdicom sends (Verification, CT), captured by a listener.

    For tests that speak raw PDUs to the SCP: a real request, then whatever they send.
    """
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        ae = AE(ae_title="FUZZER")
        ae.add_requested_context(Verification)
        ae.add_requested_context(CTImageStorage)
        ae.acse_timeout = ae.network_timeout = 2
        thread = threading.Thread(target=ae.associate, args=("127.0.0.1", port, None, called_ae))
        thread.start()
        conn, _ = server.accept()
        with conn:
            conn.settimeout(timeout)
            header = recv_exactly(conn, 6)
            (length,) = struct.unpack(">I", header[2:6])
            body = recv_exactly(conn, length)
        thread.join(timeout=30)
    assert header[0] == 0x01
    return header + body
