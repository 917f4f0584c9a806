"""Admin controls reach a real StorageSCP through the job DB, as across processes."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from scu_scp.models import DicomNode, SpooledStudy
from scu_scp.scp import STATUS_OUT_OF_RESOURCES, StorageSCP
from scu_scp.scu import send_datasets
from scu_scp.spool import Spool
from tests.support.phantom import make_ct_phantom
from worker.jobs.ops_store import OpsStore
from worker.jobs.store import JobStore
from worker.service.controls import ControlPoller


def _wait(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_pause_refuses_with_a_temporary_failure_and_force_complete_seals(tmp_path: Path) -> None:
    # The monitor's process writes to the DB; the SCP's process has its own store on it.
    url = f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
    monitor_store, scp_store = JobStore(url), JobStore(url)
    monitor_ops = OpsStore(monitor_store.engine)
    sealed: list[SpooledStudy] = []
    lock = threading.Lock()

    def on_complete(study: SpooledStudy) -> None:
        with lock:
            sealed.append(study)

    scp = StorageSCP(
        ae_title="ANNOTATOR",
        host="127.0.0.1",
        port=0,
        spool=Spool(tmp_path / "spool"),
        on_complete=on_complete,
        quiet_seconds=3600.0,  # never completes by itself within the test
        poll_interval=0.05,
    )
    poller = ControlPoller(OpsStore(scp_store.engine), scp)
    scp.start()
    try:
        node = DicomNode("ANNOTATOR", "127.0.0.1", scp.port)
        datasets = make_ct_phantom(slices=3, size=16, pixel_spacing=15.0, seed=11).datasets

        monitor_ops.set_intake_paused(True, "admin")
        poller.apply()
        assert scp.paused
        refused = send_datasets(node, datasets[:1], calling_ae="PACS")
        assert [i.status for i in refused.instances] == [STATUS_OUT_OF_RESOURCES]
        assert Spool(tmp_path / "spool").pending() == {}  # nothing half-kept

        monitor_ops.set_intake_paused(False, "admin")
        poller.apply()
        assert not scp.paused
        accepted = send_datasets(node, datasets, calling_ae="PACS")
        assert accepted.ok
        study_uid = str(datasets[0].StudyInstanceUID)

        monitor_ops.request_force_complete(study_uid, "admin")
        poller.apply()
        _wait(lambda: len(sealed) == 1)
        assert sealed[0].study_uid == study_uid and sealed[0].instance_count == 3
        poller.apply()  # the request was handed out once
        assert monitor_ops.take_force_complete_requests() == []
        scp.poll_once()
        assert len(sealed) == 1
    finally:
        scp.stop()
        monitor_store.close()
        scp_store.close()
