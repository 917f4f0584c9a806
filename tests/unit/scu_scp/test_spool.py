"""The spool keeps every received byte, files it safely and seals studies atomically."""

from __future__ import annotations

import json
import os
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from scu_scp.spool import (
    METADATA_NAME,
    STALE_PARTIAL_SECONDS,
    Spool,
    UnknownBatchError,
    validate_uid,
)

STUDY = "1.2.826.0.1.3680043.8.498.1"
SERIES = "1.2.826.0.1.3680043.8.498.1.1"


def sop(n: int) -> str:
    return f"1.2.826.0.1.3680043.8.498.1.1.{n}"


def store(spool: Spool, data: bytes, n: int, study: str = STUDY) -> Path:
    return spool.store(
        data,
        study_uid=study,
        series_uid=SERIES,
        sop_uid=sop(n),
        calling_ae="PACS",
        calling_host="10.0.0.7",
    )


def test_store_writes_identical_bytes_in_uid_layout(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    data = os.urandom(50_000)

    path = store(spool, data, 1)

    assert path == tmp_path / "incoming" / STUDY / SERIES / f"{sop(1)}.dcm"
    assert path.read_bytes() == data
    assert list((tmp_path / "tmp").iterdir()) == []
    meta = json.loads((tmp_path / "incoming" / STUDY / METADATA_NAME).read_text())
    assert meta["calling_ae"] == "PACS"
    assert meta["calling_host"] == "10.0.0.7"
    received = datetime.fromisoformat(meta["first_received"])
    assert received.tzinfo is not None
    assert abs(datetime.now(UTC) - received) < timedelta(minutes=1)


def test_store_same_instance_again_overwrites(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    store(spool, b"first", 1)
    path = store(spool, b"second version", 1)

    assert path.read_bytes() == b"second version"
    assert len(list((tmp_path / "incoming" / STUDY).glob("*/*.dcm"))) == 1


def test_metadata_is_written_once_at_first_instance(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    store(spool, b"a", 1)
    meta_path = tmp_path / "incoming" / STUDY / METADATA_NAME
    first = meta_path.read_text()
    spool.store(
        b"b",
        study_uid=STUDY,
        series_uid=SERIES,
        sop_uid=sop(2),
        calling_ae="OTHER",
        calling_host="10.0.0.8",
    )
    assert meta_path.read_text() == first


@pytest.mark.parametrize(
    ("field", "bad"),
    [
        ("study_uid", "../../x"),
        ("series_uid", "1.2/../../3"),
        ("sop_uid", "/etc/passwd"),
        ("sop_uid", ""),
        ("study_uid", "1." * 40 + "1"),
        ("study_uid", "1.2.3\x00"),
    ],
)
def test_unsafe_uid_is_rejected_before_touching_disk(tmp_path: Path, field: str, bad: str) -> None:
    spool = Spool(tmp_path)
    uids = {"study_uid": STUDY, "series_uid": SERIES, "sop_uid": sop(1), field: bad}
    before = {p for p in tmp_path.rglob("*") if p.is_file()}
    assert before == {tmp_path / "state" / "spool.lock"}  # the spool's own, empty

    with pytest.raises(ValueError, match="UID"):
        spool.store(b"data", calling_ae="PACS", calling_host="h", **uids)

    assert {p for p in tmp_path.rglob("*") if p.is_file()} == before


def test_validate_uid_accepts_real_uids() -> None:
    uid = "1.3.6.1.4.1.14519.5.2.1.9203.8273.319461848560755521018609264462"
    assert validate_uid(uid, "StudyInstanceUID") == uid


def test_quarantine_keeps_data_and_reason(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    data = os.urandom(1000)

    path = spool.quarantine(data, "missing StudyInstanceUID", calling_ae="PACS")

    assert path.parent == tmp_path / "quarantine"
    assert path.read_bytes() == data
    reason = json.loads(path.with_name(path.stem + ".reason.json").read_text())
    assert reason["reason"] == "missing StudyInstanceUID"
    assert reason["calling_ae"] == "PACS"
    second = spool.quarantine(b"other", "bad", calling_ae="PACS")
    assert second != path
    assert path.read_bytes() == data


def test_seal_moves_study_and_round_trips_metadata(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    for n in range(3):
        store(spool, f"instance {n}".encode(), n)

    sealed = spool.seal(STUDY)

    assert sealed is not None
    assert not (tmp_path / "incoming" / STUDY).exists()
    assert sealed.path == tmp_path / "studies" / sealed.batch_id
    assert sealed.study_uid == STUDY
    assert sealed.instance_count == 3
    assert sealed.calling_ae == "PACS"
    assert sealed.calling_host == "10.0.0.7"
    assert sealed.first_received <= sealed.last_received
    assert [p.read_bytes() for p in Spool.instance_paths(sealed)] == [
        f"instance {n}".encode() for n in range(3)
    ]
    # A new Spool (as after a restart) reads the same values back.
    reopened = Spool(tmp_path).open_sealed(sealed.batch_id)
    assert reopened == sealed
    assert Spool(tmp_path).sealed() == [sealed]


def test_seal_of_unknown_study_returns_none(tmp_path: Path) -> None:
    assert Spool(tmp_path).seal(STUDY) is None


def test_open_sealed_unknown_id_raises_clear_error(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    with pytest.raises(UnknownBatchError, match="20990101T000000Z-00000000"):
        spool.open_sealed("20990101T000000Z-00000000")
    with pytest.raises(UnknownBatchError, match="not a spool batch id"):
        spool.open_sealed("../incoming")


def test_store_after_seal_starts_a_new_study_folder(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    store(spool, b"a", 1)
    first = spool.seal(STUDY)
    store(spool, b"late", 2)

    second = spool.seal(STUDY)

    assert first is not None and second is not None
    assert first.batch_id != second.batch_id
    assert first.instance_count == 1
    assert second.instance_count == 1
    assert [p.read_bytes() for p in Spool.instance_paths(second)] == [b"late"]
    assert [s.batch_id for s in spool.sealed()] == sorted([first.batch_id, second.batch_id])


def test_concurrent_store_and_seal_lose_nothing(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    total = 200
    stop = threading.Event()
    batches = []

    def sealer() -> None:
        while not stop.is_set():
            sealed = spool.seal(STUDY)
            if sealed is not None:
                batches.append(sealed)

    thread = threading.Thread(target=sealer)
    thread.start()
    try:
        for n in range(total):
            store(spool, str(n).encode(), n)
    finally:
        stop.set()
        thread.join()
    last = spool.seal(STUDY)
    if last is not None:
        batches.append(last)

    stored = sorted(int(p.read_bytes()) for b in batches for p in Spool.instance_paths(b))
    assert stored == list(range(total))
    assert sum(b.instance_count for b in batches) == total


def test_pending_survives_restart(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    path = store(spool, b"a", 1)
    store(spool, b"b", 1, study="1.2.3.4")
    spool.seal("1.2.3.4")
    os.utime(path, (1_700_000_000, 1_700_000_000))

    pending = Spool(tmp_path).pending()

    assert pending == {STUDY: 1_700_000_000.0}


def test_stale_partial_writes_are_discarded_at_start(tmp_path: Path) -> None:
    Spool(tmp_path)
    stale = tmp_path / "tmp" / "deadbeef.part"
    stale.write_bytes(b"half a file from a crash")
    old = time.time() - STALE_PARTIAL_SECONDS - 60
    os.utime(stale, (old, old))
    in_flight = tmp_path / "tmp" / "cafebabe.part"
    in_flight.write_bytes(b"being written by the SCP process right now")

    Spool(tmp_path)

    assert not stale.exists()
    assert in_flight.exists()


def test_adopt_moves_a_batch_sealed_elsewhere_into_the_spool(tmp_path: Path) -> None:
    main = Spool(tmp_path / "spool")
    staging = Spool(tmp_path / "spool" / "pulls" / "x")
    for n in range(3):
        store(staging, b"instance %d" % n, n)
    staged = staging.seal(STUDY)
    assert staged is not None
    assert main.sealed() == [] and main.pending() == {}
    adopted = main.adopt(staged)
    assert adopted.path == main.studies / staged.batch_id
    assert not staged.path.exists()
    assert main.open_sealed(staged.batch_id) == adopted
    assert adopted.instance_count == 3 and adopted.calling_ae == staged.calling_ae
    assert len(main.instance_paths(adopted)) == 3
