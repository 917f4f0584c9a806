"""Delivery of a job's results over DICOM TLS, with the real sender, to dcmtk storescp +tls."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines.registry import builtin_pipelines
from scu_scp.spool import Spool
from tests.support.edge import Pki, pki, storescp_tls
from tests.support.jobs import spool_study
from tests.support.phantom import make_ct_phantom
from tests.support.storescp import StoreSCP
from worker.config import load_settings
from worker.delivery.deliver import TransientDeliveryError
from worker.delivery.senders import make_sender
from worker.jobs.store import JobState, JobStore
from worker.run.processing import Runtime, process_job

__all__ = ["pki"]  # fixture


@pytest.fixture
def tls_pacs(tmp_path: Path, pki: Pki) -> Iterator[StoreSCP]:
    key, cert = pki.server.private_key, pki.server.certificate
    with storescp_tls(tmp_path, pki, key, cert, "--require-peer-cert") as server:
        yield server


def _runtime(tmp_path: Path, server: StoreSCP, tls: dict[str, object]) -> Runtime:
    destination = {"ae_title": server.ae_title, "host": "127.0.0.1", "port": server.port}
    settings = load_settings(
        None,
        data_dir=tmp_path / "data",
        destinations={"pacs": {**destination, "default": True, "tls": tls}},
        delivery={"timeout_seconds": 20},
    )
    return Runtime(
        settings=settings,
        store=JobStore(f"sqlite:///{tmp_path / 'jobs.sqlite3'}"),
        spool=Spool(settings.spool_dir),
        pipelines=dict(builtin_pipelines()),
        send=make_sender(settings),
    )


def test_results_reach_a_tls_pacs_with_client_certificate(
    tmp_path: Path, pki: Pki, tls_pacs: StoreSCP
) -> None:
    tls = {
        "ca_certificates": str(pki.ca),
        "certificate": str(pki.client.certificate),
        "private_key": str(pki.client.private_key),
    }
    rt = _runtime(tmp_path, tls_pacs, tls)
    job_id = spool_study(rt, make_ct_phantom(slices=12, size=64, pixel_spacing=5.5).datasets)

    job = process_job(rt, job_id)

    assert job.state is JobState.DONE, job.error
    assert len(tls_pacs.received()) == len(job.delivered) >= 2  # SEG and SR


def test_tls_pacs_refusing_us_makes_a_retryable_failure_naming_tls(
    tmp_path: Path, pki: Pki, tls_pacs: StoreSCP
) -> None:
    rt = _runtime(tmp_path, tls_pacs, {"ca_certificates": str(pki.ca)})  # no client cert
    job_id = spool_study(rt, make_ct_phantom(slices=12, size=64, pixel_spacing=5.5).datasets)

    with pytest.raises(TransientDeliveryError, match="TLS"):
        process_job(rt, job_id)
    assert tls_pacs.received() == []
