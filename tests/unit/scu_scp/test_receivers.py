"""One SCP port served by several processes (``scu_scp/receivers.py``, ``scp.processes``).

Real processes (spawned), real sockets sharing the port, real dcmtk and pynetdicom senders.
Which process gets a connection is the kernel's choice: the tests tell them apart by the
carriers the SCP's tracker hears of (a receiver process's associations arrive as
``"pid-n"`` tokens, the SCP process's own as pynetdicom associations).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import subprocess
import time
from collections.abc import Hashable
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from scu_scp.admission import ScpLimits
from scu_scp.completion import AssociationEnd
from scu_scp.connections import ConnectionLimits
from scu_scp.models import SpooledStudy
from scu_scp.receivers import _TrackerLink
from scu_scp.scp import StorageSCP
from scu_scp.spool import Spool
from tests.support.edge import AE_TITLE, ScpFactory, start_scp
from tests.support.storescp import dcmtk_tool, wait_for
from tests.support.studies import write_series_study

__all__ = ["start_scp"]  # fixture

GRACE = 0.5


class Sealed:
    def __init__(self) -> None:
        self.studies: list[SpooledStudy] = []

    def __call__(self, study: SpooledStudy) -> None:
        self.studies.append(study)

    def of(self, study_uid: str) -> list[SpooledStudy]:
        return [s for s in self.studies if s.study_uid == study_uid]


class Carriers:
    """Records which carrier each stored instance's study was reported with."""

    def __init__(self, scp: StorageSCP) -> None:
        self.seen: list[tuple[str, Hashable | None]] = []
        touch = scp.tracker.touch

        def recording(study_uid: str, at: float | None = None, *, carrier: object = None) -> None:
            self.seen.append((study_uid, carrier))  # type: ignore[arg-type]
            touch(study_uid, at, carrier=carrier)

        scp.tracker.touch = recording  # type: ignore[method-assign]

    def in_receivers(self, study_uid: str | None = None) -> bool:
        return any(isinstance(c, str) for s, c in self.seen if study_uid is None or s == study_uid)

    def in_scp_process(self, study_uid: str | None = None) -> bool:
        return any(
            isinstance(c, Association) for s, c in self.seen if study_uid is None or s == study_uid
        )


def _multi(start_scp: ScpFactory, **options: object) -> tuple[StorageSCP, Sealed, Carriers]:
    sealed = Sealed()
    defaults: dict[str, object] = {
        "processes": 2,
        "on_complete": sealed,
        "quiet_seconds": 600.0,
        "release_grace_seconds": GRACE,
        "max_associations": 64,
    }
    scp = start_scp(**(defaults | options))
    carriers = Carriers(scp)
    receivers = scp._receivers
    assert receivers is not None
    assert receivers.listening() == 1  # start() returns once every process listens
    return scp, sealed, carriers


def _storescu(port: int, calling: str, files: list[Path]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [dcmtk_tool("storescu"), "-aet", calling, "-aec", AE_TITLE, "127.0.0.1", str(port)]
        + [str(p) for p in files],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _sop_uids(files: list[Path]) -> set[str]:
    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files}


def _associate(port: int) -> Association:
    ae = AE(ae_title="PACS")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    return ae.associate("127.0.0.1", port, ae_title=AE_TITLE)


def test_concurrent_senders_spread_over_processes_and_each_study_seals_whole(
    start_scp: ScpFactory, tmp_path: Path
) -> None:
    scp, sealed, carriers = _multi(start_scp)
    studies = [
        write_series_study(tmp_path / f"s{n}", series=2, slices=3, seed=n) for n in range(16)
    ]
    senders = [
        _storescu(scp.port, f"MODALITY{n}", files[0] + files[1])
        for n, (_, files) in enumerate(studies)
    ]
    assert [s.wait(timeout=120) for s in senders] == [0] * len(studies)
    assert wait_for(lambda: len(sealed.studies) >= len(studies), timeout=30)
    time.sleep(GRACE * 2)  # nothing more is sealed later: no study was split
    assert len(sealed.studies) == len(studies)
    for uid, files in studies:
        (study,) = sealed.of(uid)
        assert {p.stem for p in Spool.instance_paths(study)} == _sop_uids(files[0] + files[1])
    # Both processes took associations (all 16 on one socket: 2 in 65,536).
    assert carriers.in_receivers() and carriers.in_scp_process()


def test_a_study_sent_over_associations_in_both_processes_is_one_study(
    start_scp: ScpFactory, tmp_path: Path
) -> None:
    """One association per series, all at once: a PACS sending a study in parallel."""
    scp, sealed, carriers = _multi(start_scp)
    study_uid, series = write_series_study(tmp_path / "study", series=12, slices=2)
    senders = [_storescu(scp.port, "PACS", files) for files in series]
    assert [s.wait(timeout=120) for s in senders] == [0] * len(series)
    assert wait_for(lambda: bool(sealed.of(study_uid)), timeout=30)
    time.sleep(GRACE * 2)
    (study,) = sealed.of(study_uid)
    everything = [path for files in series for path in files]
    assert {p.stem for p in Spool.instance_paths(study)} == _sop_uids(everything)
    assert carriers.in_receivers(study_uid) and carriers.in_scp_process(study_uid)


def test_the_intake_pause_reaches_every_process(start_scp: ScpFactory, tmp_path: Path) -> None:
    scp, _, carriers = _multi(start_scp)
    _, (files,) = write_series_study(tmp_path / "study", series=1, slices=2)
    associations = [_associate(scp.port) for _ in range(12)]
    try:
        assert all(a.is_established for a in associations)
        scp.paused = True

        def all_refuse() -> bool:  # the pause reaches the receivers over a pipe
            return all(a.send_c_store(files[0]).Status == 0xA700 for a in associations)

        assert wait_for(all_refuse, timeout=10)
        scp.paused = False

        def all_store() -> bool:
            return all(a.send_c_store(files[1]).Status == 0x0000 for a in associations)

        assert wait_for(all_store, timeout=10)
        assert carriers.in_receivers() and carriers.in_scp_process()
    finally:
        for assoc in associations:
            assoc.release()


def test_max_associations_counts_the_associations_of_every_process(
    start_scp: ScpFactory,
) -> None:
    scp, _, _ = _multi(start_scp, max_associations=3)
    held = [_associate(scp.port) for _ in range(6)]
    try:
        assert sum(a.is_established for a in held) == 3
        assert sum(a.is_rejected for a in held) == 3
        next(a for a in held if a.is_established).release()

        def one_more() -> bool:  # the slot is given back when its association ends
            extra = _associate(scp.port)
            if extra.is_established:
                held.append(extra)
            return extra.is_established

        assert wait_for(one_more, timeout=10)
    finally:
        for assoc in held:
            if assoc.is_established:
                assoc.release()


def test_max_connections_per_address_counts_across_processes(start_scp: ScpFactory) -> None:
    limits = ConnectionLimits(max_connections_per_address=2, associate_request_timeout=10.0)
    scp, _, _ = _multi(start_scp, connection_limits=limits)
    peers = [socket.create_connection(("127.0.0.1", scp.port)) for _ in range(8)]
    try:

        def closed(peer: socket.socket) -> bool:  # the SCP closed it: end of stream
            peer.setblocking(False)
            try:
                return peer.recv(1, socket.MSG_PEEK) == b""
            except BlockingIOError:
                return False

        # The kernel shares the 8 connections between both processes; 2 stay open in all.
        assert wait_for(lambda: sum(closed(p) for p in peers) == 6, timeout=5)
        time.sleep(0.5)
        assert sum(not closed(p) for p in peers) == 2
    finally:
        for peer in peers:
            peer.close()


def _association_in(
    scp: StorageSCP, carriers: Carriers, first: Path, *, receiver: bool, tries: int = 40
) -> Association:
    """An association the kernel gave to the receiver process (``receiver``) or to the SCP
    process; it has stored ``first``."""
    for _ in range(tries):
        assoc = _associate(scp.port)
        assert assoc.is_established
        before = len(carriers.seen)
        assert assoc.send_c_store(first).Status == 0x0000
        assert wait_for(lambda n=before: len(carriers.seen) > n, timeout=10)
        if isinstance(carriers.seen[-1][1], str) == receiver:
            return assoc
        assoc.release()
    raise AssertionError(f"no association reached the {'receiver' if receiver else 'SCP'} process")


def test_max_study_bytes_counts_what_every_process_stored(
    start_scp: ScpFactory, tmp_path: Path
) -> None:
    study_uid, (files,) = write_series_study(tmp_path / "study", series=1, slices=6)
    size = max(p.stat().st_size for p in files)
    scp, _, carriers = _multi(start_scp, limits=ScpLimits(max_study_bytes=3 * size + size // 2))
    remote = _association_in(scp, carriers, files[0], receiver=True)
    local = _association_in(scp, carriers, files[0], receiver=False)  # an identical resend
    statuses = []
    try:
        for path in files[1:]:
            for assoc in (local, remote):
                statuses.append(int(assoc.send_c_store(path).Status))
    finally:
        local.release()
        remote.release()
    stored = list((scp.spool.incoming / study_uid).rglob("*.dcm"))
    assert len(stored) == 3  # what fits, whoever stored it
    assert statuses.count(0xA700) >= 1


def test_a_receiver_that_dies_is_replaced_and_its_study_waits_for_quiet(
    start_scp: ScpFactory, tmp_path: Path
) -> None:
    scp, sealed, carriers = _multi(start_scp, quiet_seconds=3.0)
    receivers = scp._receivers
    assert receivers is not None
    study_uid, (files,) = write_series_study(tmp_path / "study", series=1, slices=3)
    cut = _association_in(scp, carriers, files[0], receiver=True)
    assert cut.send_c_store(files[1]).Status == 0x0000
    (child,) = receivers._children.values()
    os.kill(child.process.pid, signal.SIGKILL)  # type: ignore[arg-type]
    assert wait_for(lambda: not cut.is_established, timeout=10)
    cut.kill()

    # The sender resends the whole study (its association was cut), then releases.
    assert wait_for(
        lambda: receivers.listening() == 1 and child.number in receivers._children, timeout=30
    )
    assert _storescu(scp.port, "PACS", files).wait(timeout=60) == 0
    time.sleep(GRACE * 3)
    assert sealed.of(study_uid) == [], "a cut-off association's study waits for quiet"
    assert wait_for(lambda: bool(sealed.of(study_uid)), timeout=15)
    (study,) = sealed.of(study_uid)
    assert {p.stem for p in Spool.instance_paths(study)} == _sop_uids(files)


def test_stop_ends_every_receiver_process(start_scp: ScpFactory) -> None:
    scp, _, _ = _multi(start_scp)
    receivers = scp._receivers
    assert receivers is not None
    processes = [c.process for c in receivers._children.values()]
    port = scp.port
    scp.stop()
    assert processes and all(not p.is_alive() for p in processes)
    assert all(p.exitcode == 0 for p in processes)
    with socket.socket() as probe:  # nobody listens on the port any more
        probe.settimeout(1)
        assert probe.connect_ex(("127.0.0.1", port)) != 0


def test_a_receiver_whose_scp_process_is_gone_keeps_answering_its_senders() -> None:
    """Stored instances stay in the spool; their reports cannot go anywhere."""

    class Assoc:  # stands for pynetdicom's Association (hashable, weakly referenced)
        pass

    ours, theirs = multiprocessing.Pipe()
    link = _TrackerLink(theirs)
    carrier = Assoc()
    link.touch("1.2.3", carrier=carrier)
    kind, study, token = ours.recv()
    assert (kind, study) == ("touch", "1.2.3") and token.endswith("-1")
    ours.close()  # the SCP process died
    link.touch("1.2.3", carrier=carrier)  # no exception into pynetdicom's handler
    link.association_ended(carrier, AssociationEnd.RELEASED)
    link.touch("1.2.4", carrier=None)
