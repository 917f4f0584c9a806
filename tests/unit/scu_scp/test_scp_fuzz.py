"""Fuzz the real SCP with malformed PDUs and datasets (hypothesis, a bounded number of cases).

Afterwards it must still answer C-ECHO, and every instance it acknowledged with 0x0000 must be
in the spool; every 0xC210 answer must have left the data in quarantine.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from scu_scp.scp import StorageSCP
from scu_scp.spool import Spool
from tests.support.edge import AE_TITLE, association_rq_bytes, spooled
from tests.support.phantom import make_ct_phantom
from tests.support.storescp import wait_for

pytestmark = pytest.mark.timeout(900)

EXAMPLES = 25  # per strategy: bounds the run on a loaded machine
SOCKET_TIMEOUT = 5.0
ANSWER_WAIT = 0.3  # garbage may get no answer at all: do not wait long for one
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@dataclass
class Target:
    """One SCP shared by all examples of a test, and what it acknowledged."""

    scp: StorageSCP
    spool_root: Path
    association_rq: bytes
    template: bytes  # a valid encoded CT dataset (Explicit VR Little Endian)
    acknowledged: set[str] = field(default_factory=set)
    cannot_understand: int = 0


def _ct_dataset() -> Dataset:
    ds = make_ct_phantom(slices=1, size=16).datasets[0]
    ds.SOPInstanceUID = generate_uid()
    return ds


@pytest.fixture
def target(tmp_path: Path) -> Iterator[Target]:
    spool = Spool(tmp_path / "spool")
    scp = StorageSCP(
        ae_title=AE_TITLE,
        host="127.0.0.1",
        port=0,
        spool=spool,
        on_complete=lambda study: None,
        quiet_seconds=3600,
        release_grace_seconds=3600,  # association ends are tracked, nothing completes
        max_associations=50,
    )
    scp.start()
    template = encode(_ct_dataset(), False, True)
    assert template is not None
    state = Target(scp, spool.root, association_rq_bytes(AE_TITLE), template)
    try:
        yield state
        _check_nothing_lost(state)  # after every example of the test
        # Garbage must not hold association slots (max_associations) once its sender is gone.
        assert wait_for(lambda: not scp._ae.active_associations, timeout=90, interval=0.5)
    finally:
        scp.stop()


def _raw_exchange(port: int, *chunks: bytes) -> None:
    """Send ``chunks`` on a fresh connection, read whatever comes back, close."""
    with socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT) as conn:
        conn.settimeout(ANSWER_WAIT)
        for chunk in chunks:
            try:
                conn.sendall(chunk)
                conn.recv(65536)
            except TimeoutError:  # no answer yet: the SCP waits for the rest of a PDU
                continue
            except OSError:  # the SCP may drop us: that is a fine answer to garbage
                return


def _assert_healthy(target: Target) -> None:
    ae = AE(ae_title="CHECKER")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 30
    assoc = ae.associate("127.0.0.1", target.scp.port, ae_title=AE_TITLE)
    assert assoc.is_established, "the SCP no longer accepts associations"
    status = assoc.send_c_echo()
    assoc.release()
    assert status.Status == 0x0000


def _check_nothing_lost(target: Target) -> None:
    _assert_healthy(target)
    stored = {p.stem for p in spooled(target.spool_root)}
    missing = target.acknowledged - stored
    assert not missing, f"acknowledged with 0x0000 but not in the spool: {sorted(missing)[:5]}"
    quarantined = list((target.spool_root / "quarantine").glob("*.dcm"))
    assert len(quarantined) == target.cannot_understand


def _mutate(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    buf = bytearray(data)
    for position, value in edits:
        buf[position % len(buf)] = value
    return bytes(buf[:cut] if cut is not None else buf)


_edits = st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=8)


@FUZZ
@given(junk=st.binary(max_size=4096))
def test_random_bytes_instead_of_a_pdu(target: Target, junk: bytes) -> None:
    _raw_exchange(target.scp.port, junk)


@FUZZ
@given(edits=_edits, cut=st.one_of(st.none(), st.integers(0, 400)))
def test_mutated_association_requests(
    target: Target, edits: list[tuple[int, int]], cut: int | None
) -> None:
    _raw_exchange(target.scp.port, _mutate(target.association_rq, edits, cut))


@FUZZ
@given(
    pdu_type=st.sampled_from([0x04, 0x05, 0x06, 0x07, 0x01, 0x09]),
    control=st.integers(0, 255),
    context_id=st.sampled_from([1, 3, 5, 255]),
    payload=st.binary(max_size=2048),
    lie=st.integers(-8, 8),
)
def test_malformed_pdus_inside_an_association(
    target: Target, pdu_type: int, control: int, context_id: int, payload: bytes, lie: int
) -> None:
    pdv = bytes([context_id, control]) + payload
    item = struct.pack(">I", max(0, len(pdv) + lie)) + pdv
    pdu = bytes([pdu_type, 0]) + struct.pack(">I", max(0, len(item) + lie)) + item
    _raw_exchange(target.scp.port, target.association_rq, pdu)


@FUZZ
@given(
    edits=_edits,
    cut=st.one_of(st.none(), st.integers(1, 3000)),
    # min_size=1: a C-STORE-RQ with no data set at all is a protocol error pynetdicom
    # leaves unanswered (the association then times out), outside what the SCP decides.
    random_bytes=st.one_of(st.none(), st.binary(min_size=1, max_size=1024)),
)
def test_malformed_datasets_in_c_store(
    target: Target, edits: list[tuple[int, int]], cut: int | None, random_bytes: bytes | None
) -> None:
    junk = random_bytes if random_bytes is not None else _mutate(target.template, edits, cut)
    ae = AE(ae_title="FUZZER")
    ae.add_requested_context(CTImageStorage)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 30
    assoc = ae.associate("127.0.0.1", target.scp.port, ae_title=AE_TITLE)
    assert assoc.is_established
    try:
        context_id = assoc.accepted_contexts[0].context_id
        request = C_STORE()
        request.MessageID = 1
        request.AffectedSOPClassUID = CTImageStorage
        request.AffectedSOPInstanceUID = generate_uid()
        request.Priority = 2
        request.DataSet = BytesIO(junk)
        # As Association.send_c_store does: pause its reactor so it does not eat the answer.
        assoc._reactor_checkpoint.clear()
        while not assoc._is_paused:
            time.sleep(0.001)
        try:
            assoc.dimse.send_msg(request, context_id)
            _, response = assoc.dimse.get_msg(block=True)
        finally:
            assoc._reactor_checkpoint.set()
        assert response is not None, "no answer to a malformed dataset"
        status = int(response.Status)
        assert status in (0x0000, 0xA700, 0xC210), hex(status)
        if status == 0xC210:
            target.cannot_understand += 1
        if status == 0x0000:
            decoded = read_dataset(DicomBytesIO(junk), is_implicit_VR=False, is_little_endian=True)
            target.acknowledged.add(str(decoded.SOPInstanceUID))
        # The same association still takes a good instance.
        good = _ct_dataset()
        good_status = assoc.send_c_store(good)
        assert good_status.Status == 0x0000
        target.acknowledged.add(str(good.SOPInstanceUID))
    finally:
        if assoc.is_established:
            assoc.release()
    _check_nothing_lost(target)
