"""Completion on release against real senders: dcmtk storescu and pynetdicom associations.

A study sent in one association completes ``release_grace_seconds`` after the release; one
sent one association per series by a quiet-only AE, or over interleaved associations, is
never split. Where the test decides when time passes, the SCP runs on an injected clock.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from scu_scp.completion import Reason
from scu_scp.models import SpooledStudy
from scu_scp.scp import StorageSCP, release_counts
from scu_scp.spool import Spool
from tests.support.edge import AE_TITLE, ScpFactory, start_scp
from tests.support.storescp import dcmtk_tool, wait_for
from tests.support.studies import write_series_study

__all__ = ["start_scp"]  # fixture

GRACE = 1.0
SLACK = 2.0  # poll interval, thread scheduling on a busy 2-core CI machine
ONLY_THE_TEST_POLLS = 3600.0  # poll_interval: the SCP's own poller never runs in the test


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.lock = threading.Lock()

    def __call__(self) -> float:
        with self.lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self.lock:
            self.now += seconds


class Sealed:
    """on_complete that records each sealed batch and when it was handed over."""

    def __init__(self) -> None:
        self.studies: list[SpooledStudy] = []
        self.at: list[float] = []
        self.lock = threading.Lock()

    def __call__(self, study: SpooledStudy) -> None:
        with self.lock:
            self.studies.append(study)
            self.at.append(time.monotonic())

    def of(self, study_uid: str) -> list[SpooledStudy]:
        with self.lock:
            return [s for s in self.studies if s.study_uid == study_uid]


def _clocked_scp(start_scp: ScpFactory, **options: Any) -> tuple[StorageSCP, FakeClock, Sealed]:
    """An SCP on a fake clock that only the test polls: quiet 30 s, grace ``GRACE``."""
    clock, sealed = FakeClock(), Sealed()
    scp = start_scp(
        on_complete=sealed,
        quiet_seconds=30,
        release_grace_seconds=GRACE,
        clock=clock,
        poll_interval=ONLY_THE_TEST_POLLS,
        **options,
    )
    return scp, clock, sealed


def storescu(port: int, files: list[Path], calling: str = "PACS") -> None:
    """One storescu run: one association for all ``files``."""
    result = subprocess.run(
        [dcmtk_tool("storescu"), "-aet", calling, "-aec", AE_TITLE, "127.0.0.1", str(port)]
        + [str(p) for p in files],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def sop_uids(files: list[Path]) -> set[str]:
    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files}


def test_study_in_one_association_completes_grace_after_release(
    start_scp: ScpFactory, tmp_path: Path
) -> None:
    sealed = Sealed()
    scp = start_scp(on_complete=sealed, quiet_seconds=600, release_grace_seconds=GRACE)
    study_uid, (first, second) = write_series_study(tmp_path / "study", series=2, slices=6)

    storescu(scp.port, first + second)
    released = time.monotonic()

    assert wait_for(lambda: bool(sealed.of(study_uid)), timeout=GRACE + SLACK + 10)
    (study,) = sealed.of(study_uid)
    waited = sealed.at[0] - released
    assert waited <= GRACE + SLACK, f"sealed {waited:.2f} s after the release"
    assert study.instance_count == 12
    assert {p.stem for p in Spool.instance_paths(study)} == sop_uids(first + second)


def test_one_association_per_series_from_a_quiet_only_ae_is_one_study(
    start_scp: ScpFactory, tmp_path: Path
) -> None:
    scp, clock, sealed = _clocked_scp(start_scp, quiet_only_aets=["SERIES*"])
    study_uid, series = write_series_study(tmp_path / "study", series=3, slices=4)

    for files in series:
        storescu(scp.port, files, calling="SERIESPACS")
        clock.advance(GRACE * 5)  # far longer than the grace between two associations
        scp.poll_once()
        assert sealed.of(study_uid) == [], "a quiet-only sender's release completed a study"

    clock.advance(30)
    scp.poll_once()
    (study,) = sealed.of(study_uid)
    assert study.instance_count == 12
    assert {p.stem for p in Spool.instance_paths(study)} == sop_uids(
        [p for files in series for p in files]
    )


def test_one_association_per_series_within_the_grace_is_one_study(
    start_scp: ScpFactory, tmp_path: Path
) -> None:
    """A sender not listed as quiet-only: the next series arriving within the grace joins."""
    scp, clock, sealed = _clocked_scp(start_scp)
    study_uid, series = write_series_study(tmp_path / "study", series=3, slices=4)

    for files in series:
        storescu(scp.port, files)
        # Each release is reported from the association's thread: wait for it, so the grace
        # counts from a known clock time.
        assert wait_for(lambda: scp.tracker.open_associations() == 0, timeout=10)
        clock.advance(GRACE * 0.9)
        scp.poll_once()
        assert sealed.of(study_uid) == []

    clock.advance(GRACE * 0.2)  # the grace after the last release is over
    scp.poll_once()
    (study,) = sealed.of(study_uid)
    assert study.instance_count == 12


def _associate(port: int, calling: str) -> Association:
    ae = AE(ae_title=calling)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title=AE_TITLE)
    assert assoc.is_established
    return assoc


def _store(assoc: Association, path: Path) -> None:
    ds: Dataset = dcmread(path)
    status = assoc.send_c_store(ds)
    assert int(status.Status) == 0x0000


def test_interleaved_associations_never_split_a_study(
    start_scp: ScpFactory, tmp_path: Path
) -> None:
    """Two senders, two studies, one of them over both associations at once."""
    scp, clock, sealed = _clocked_scp(start_scp)
    x_uid, (x1, x2) = write_series_study(tmp_path / "x", series=2, slices=3, seed=0)
    y_uid, (y1,) = write_series_study(tmp_path / "y", series=1, slices=4, seed=5)
    a, b = _associate(scp.port, "PACS_A"), _associate(scp.port, "PACS_B")
    try:
        for x_a, x_b, y_b in zip(x1, x2, y1, strict=False):
            _store(a, x_a)
            _store(b, y_b)
            _store(b, x_b)
        a.release()
        assert wait_for(lambda: scp.tracker.open_associations() == 1, timeout=10)
        clock.advance(GRACE * 3)
        scp.poll_once()
        assert sealed.studies == [], "X is still arriving over B"
        _store(b, y1[-1])
        clock.advance(GRACE * 3)
        scp.poll_once()
        assert sealed.studies == []
    finally:
        b.release()
        a.release()
    assert wait_for(lambda: scp.tracker.open_associations() == 0, timeout=10)
    clock.advance(GRACE)
    scp.poll_once()
    (x,) = sealed.of(x_uid)
    (y,) = sealed.of(y_uid)
    assert {p.stem for p in Spool.instance_paths(x)} == sop_uids(x1 + x2)
    assert {p.stem for p in Spool.instance_paths(y)} == sop_uids(y1)


def test_two_storescu_senders_interleaving_complete_each_study_whole(
    start_scp: ScpFactory, tmp_path: Path
) -> None:
    sealed = Sealed()
    scp = start_scp(on_complete=sealed, quiet_seconds=600, release_grace_seconds=GRACE)
    studies = [
        write_series_study(tmp_path / f"s{n}", series=2, slices=10, seed=3 * n) for n in range(2)
    ]
    senders = [
        subprocess.Popen(
            [
                dcmtk_tool("storescu"),
                *("-aet", f"PACS{n}", "-aec", AE_TITLE, "127.0.0.1", str(scp.port)),
                *map(str, files[0] + files[1]),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for n, (_, files) in enumerate(studies)
    ]
    assert [sender.wait(timeout=120) for sender in senders] == [0, 0]

    uids = [uid for uid, _ in studies]
    assert wait_for(lambda: all(sealed.of(uid) for uid in uids), timeout=GRACE + SLACK + 10)
    for uid, files in studies:
        (study,) = sealed.of(uid)
        assert {p.stem for p in Spool.instance_paths(study)} == sop_uids(files[0] + files[1])


def test_aborted_association_waits_for_the_quiet_period(
    start_scp: ScpFactory, tmp_path: Path
) -> None:
    scp, clock, sealed = _clocked_scp(start_scp)
    study_uid, (files,) = write_series_study(tmp_path / "study", series=1, slices=3)
    assoc = _associate(scp.port, "PACS")
    _store(assoc, files[0])
    assoc.abort()
    assert wait_for(lambda: scp.tracker.open_associations() == 0, timeout=10)

    clock.advance(GRACE * 5)
    scp.poll_once()
    assert sealed.studies == []  # the sender will resend: not done
    clock.advance(30)
    scp.poll_once()
    assert [s.instance_count for s in sealed.of(study_uid)] == [1]


def test_restart_uses_the_quiet_period(start_scp: ScpFactory, tmp_path: Path) -> None:
    """After a restart there is no association state: pending studies wait for quiet."""
    study_uid, (files,) = write_series_study(tmp_path / "study", series=1, slices=3)
    first = start_scp(quiet_seconds=600, release_grace_seconds=600)
    storescu(first.port, files)  # released, but the SCP stops before the grace is over
    first.stop()

    second, clock, sealed = _clocked_scp(start_scp)
    assoc = _associate(second.port, "PACS")
    _store(assoc, files[0])  # resent: the study goes on in a released association
    assoc.release()
    assert wait_for(lambda: second.tracker.open_associations() == 0, timeout=10)
    clock.advance(GRACE * 5)
    second.poll_once()
    assert sealed.studies == []
    clock.advance(30)
    assert second.tracker.due_with_reasons() == [(study_uid, Reason.QUIET)]
    assert sealed.studies == []


def test_study_cut_off_by_a_crash_waits_again_and_joins_its_resend(
    start_scp: ScpFactory, tmp_path: Path
) -> None:
    """A partial study left incoming long ago is not sealed at restart; the resend joins it."""
    study_uid, (files,) = write_series_study(tmp_path / "study", series=1, slices=6)
    first = start_scp(quiet_seconds=600, release_grace_seconds=600)
    storescu(first.port, files[:3])  # the SCP dies before the rest arrives
    first.stop()
    an_hour_ago = time.time() - 3600  # downtime far longer than the quiet period
    for path in (tmp_path / "spool" / "incoming").rglob("*"):
        os.utime(path, (an_hour_ago, an_hour_ago))

    second, clock, sealed = _clocked_scp(start_scp)
    second.poll_once()
    assert sealed.studies == [], "the partial study was sealed on restart"
    clock.advance(29)  # just under the quiet period, counted from the restart
    second.poll_once()
    assert sealed.studies == []
    storescu(second.port, files)  # the PACS resends the whole study
    clock.advance(30)
    second.poll_once()
    (study,) = sealed.of(study_uid)
    assert study.instance_count == 6
    assert {p.stem for p in Spool.instance_paths(study)} == sop_uids(files)


@pytest.mark.parametrize(
    ("ae", "patterns", "counts"),
    [
        ("PACS", (), True),
        ("PACS", ("PACS",), False),
        ("SERIESPACS", ("SERIES*",), False),
        ("pacs", ("PACS",), True),  # AE titles are case-sensitive
        ("ANY", ("*",), False),
    ],
)
def test_release_counts_unless_quiet_only(ae: str, patterns: tuple[str, ...], counts: bool) -> None:
    assert release_counts(ae, patterns) is counts


def test_bad_release_grace_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="release_grace_seconds"):
        StorageSCP(
            ae_title=AE_TITLE,
            host="127.0.0.1",
            port=0,
            spool=Spool(tmp_path),
            on_complete=Sealed(),
            quiet_seconds=30,
            release_grace_seconds=-1,
        )
