"""What the monitor reads at each request: queue depth of every configured queue, readiness."""

from __future__ import annotations

import shutil
from collections import namedtuple
from pathlib import Path

import pytest

from scu_scp.scp import StorageSCP
from scu_scp.spool import Spool
from tests.support.jobs import FakeRedis, settings_only_bundle
from worker.config import GIB, MIB, Settings, load_settings
from worker.jobs.ops_store import OpsStore
from worker.jobs.store import JobStore
from worker.monitor.state import Sources, queue_depth, readiness, ready_min_free_bytes
from worker.service.scp import scp_options


def _sources(settings: Settings, client: FakeRedis | None) -> Sources:
    store = JobStore(settings.effective_database_url)
    return Sources(settings, store, OpsStore(store.engine), Spool(settings.spool_dir), client)  # type: ignore[arg-type]


def test_queue_depth_lists_every_configured_queue(tmp_path: Path) -> None:
    bundle = str(settings_only_bundle(tmp_path / "bundle"))
    settings = load_settings(
        None,
        data_dir=tmp_path / "data",
        pipelines={"seg": {"bundle": bundle, "queue": "gpu", "oom_fallback_queue": "cpu"}},
    )
    client = FakeRedis({"gpu": 2, "gpu\x06\x163": 1})
    assert queue_depth(_sources(settings, client)) == {"pacs-annotator": 0, "gpu": 3, "cpu": 0}


def test_queue_depth_is_empty_without_a_broker_or_when_it_is_down(tmp_path: Path) -> None:
    settings = load_settings(None, data_dir=tmp_path)
    assert queue_depth(_sources(settings, None)) == {}
    assert queue_depth(_sources(settings, FakeRedis({}, down=True))) == {}


def test_spool_disk_readiness_compares_bytes_and_reports_megabytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _path: usage(10 * GIB, 0, 1024 * MIB - 1))
    store = JobStore(f"sqlite:///{tmp_path / 'jobs.sqlite3'}")
    (_redis, _db, disk) = readiness(store, None, tmp_path, 1024 * MIB)
    assert (disk.name, disk.ok, disk.detail) == ("spool_disk", False, "1023 MB free (need 1024)")
    (_redis, _db, disk) = readiness(store, None, tmp_path, 1023 * MIB)
    assert disk.ok


@pytest.mark.parametrize("free", [2 * GIB - 1, 2 * GIB, 3 * GIB])
def test_readiness_fails_exactly_when_the_scp_refuses_for_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, free: int
) -> None:
    """/readyz and the SCP's admission use one threshold: never green while the SCP refuses."""
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _path: usage(10 * GIB, 0, free))
    settings = load_settings(None, data_dir=tmp_path, scp={"min_free_disk_bytes": 2 * GIB})
    settings.spool_dir.mkdir(parents=True)
    scp = StorageSCP(
        ae_title="ANNOTATOR",
        host="127.0.0.1",
        port=0,
        spool=Spool(settings.spool_dir),
        on_complete=lambda _study: None,
        quiet_seconds=30,
        **scp_options(settings),
    )
    scp_refuses = scp.admission.disk_too_full() is not None
    store = JobStore(settings.effective_database_url)
    (_redis, _db, disk) = readiness(store, None, settings.spool_dir, ready_min_free_bytes(settings))
    assert disk.ok is not scp_refuses
    assert scp_refuses is (free < 2 * GIB)
