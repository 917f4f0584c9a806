"""DICOMweb settings, delivery routing and STOW-RS delivery through the job runner."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset

from pipelines.registry import builtin_pipelines
from scu_scp.dicomweb import DicomwebEndpoint
from scu_scp.models import DeliveryError, DeliveryResult, DicomNode, InstanceResult
from scu_scp.spool import Spool
from tests.support.jobs import spool_study
from tests.support.phantom import make_ct_phantom
from worker.config import Settings, SettingsError, load_settings
from worker.delivery.deliver import TransientDeliveryError
from worker.delivery.destinations import choose_destinations
from worker.delivery.senders import web_endpoint
from worker.jobs.store import JobState, JobStore
from worker.run.processing import Runtime, process_job

PACS = {"ae_title": "PACS", "host": "127.0.0.1", "port": 4242}
ARCHIVE = {
    "type": "dicomweb",
    "url": "https://archive.example/dicom-web/",
    "auth": {"type": "basic", "username": "annotator", "password": "s3cret"},
}
SOURCE = {"url": "https://archive.example/dicom-web", "deliver_to": ["archive"]}


def settings_with(tmp_path: Path, **extra: Any) -> Settings:
    extra.setdefault("destinations", {"pacs": PACS, "archive": ARCHIVE})
    return load_settings(None, data_dir=tmp_path / "data", **extra)


def test_dicom_stays_the_default_type(tmp_path: Path) -> None:
    settings = settings_with(tmp_path)
    assert settings.destinations["pacs"].type == "dicom"
    archive = settings.destinations["archive"]
    assert archive.type == "dicomweb" and archive.verify_tls
    assert archive.url == "https://archive.example/dicom-web"  # trailing slash dropped
    assert "s3cret" not in repr(archive)


@pytest.mark.parametrize(
    ("destination", "message"),
    [
        ({"type": "dicomweb"}, "a dicomweb destination needs url"),
        ({"type": "dicom", "host": "h", "port": 1}, "a dicom destination needs ae_title"),
        ({"type": "dicomweb", "url": "ftp://x"}, "must be an http:// or https:// URL"),
        ({"type": "smtp", "url": "http://x"}, "destinations.bad.type"),
        (
            {"type": "dicomweb", "url": "http://x", "auth": {"type": "basic", "username": "u"}},
            "auth type basic needs username and password",
        ),
        (
            {"type": "dicomweb", "url": "http://x", "auth": {"type": "bearer"}},
            "auth type bearer needs token",
        ),
        ({"type": "dicomweb", "url": "http://x", "ca_bundle": "/nope.pem"}, "CA bundle /nope.pem"),
    ],
)
def test_bad_destinations_are_refused_naming_the_setting(
    tmp_path: Path, destination: dict[str, Any], message: str
) -> None:
    with pytest.raises(SettingsError, match=r"destinations\.bad") as info:
        load_settings(None, data_dir=tmp_path, destinations={"bad": destination})
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"sources": {"web": {**SOURCE, "deliver_to": ["nowhere"]}}}, "sources.web.deliver_to"),
        ({"sources": {"a name with spaces": SOURCE}}, "a source name is 1-16"),
        ({"sources": {"PACS": SOURCE}}, "equals a destination's AE title"),
        ({"delivery": {"rules": [{"to": ["nowhere"]}]}}, "delivery.rules[0].to"),
        (
            {"delivery": {"rules": [{"to": ["pacs"], "pipelines": ["nope"]}]}},
            "delivery.rules[0].pipelines: unknown pipeline 'nope'",
        ),
        ({"sources": {"web": {**SOURCE, "poll": {"interval_seconds": 0}}}}, "interval_seconds"),
    ],
)
def test_bad_sources_and_rules_are_refused(
    tmp_path: Path, extra: dict[str, Any], message: str
) -> None:
    with pytest.raises(SettingsError) as info:
        settings_with(tmp_path, **extra)
    assert message in str(info.value)


def test_secrets_come_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PACS_ANNOTATOR_DESTINATIONS__ARCHIVE__AUTH__PASSWORD", "from-env")
    settings = settings_with(tmp_path)
    archive = settings.destinations["archive"]
    assert archive.auth.password.get_secret_value() == "from-env"
    assert archive.auth.username == "annotator"  # the rest of the file's section is kept
    endpoint = web_endpoint(archive, 5.0)
    assert (endpoint.username, endpoint.password) == ("annotator", "from-env")


def test_routing_rules_then_source_then_defaults(tmp_path: Path) -> None:
    rules = [
        {"to": ["pacs", "archive"], "source": "web", "modality": "CT"},
        {"to": ["archive"], "pipelines": ["ct-lung-nodules"]},
    ]
    settings = settings_with(
        tmp_path,
        sources={"web": SOURCE},
        delivery={"rules": rules, "to": ["pacs"]},
    )

    def names(calling_ae: str, modalities: Sequence[str], pipelines: Sequence[str]) -> list[str]:
        chosen = choose_destinations(
            settings, calling_ae, modalities=modalities, pipelines=pipelines
        )
        return [n for n, _ in chosen]

    assert names("web", ["ct"], ["ct-basic"]) == ["pacs", "archive"]
    assert names("web", ["MR"], ["ct-basic"]) == ["archive"]  # no rule: the source's deliver_to
    assert names("OTHER", ["CT"], ["ct-lung-nodules"]) == ["archive"]
    assert names("OTHER", ["CT"], ["ct-basic"]) == ["pacs"]  # no rule, no source: delivery.to


class FakeArchive:
    """A STOW-RS endpoint behind the ``send_web`` seam."""

    def __init__(self) -> None:
        self.calls: list[DicomwebEndpoint] = []
        self.error: str | None = None
        self.refuse = False

    def __call__(self, endpoint: DicomwebEndpoint, datasets: Sequence[Dataset]) -> DeliveryResult:
        self.calls.append(endpoint)
        if self.error:
            raise DeliveryError(self.error)
        status = 0xA700 if self.refuse else 0
        return DeliveryResult(
            endpoint.url,
            tuple(InstanceResult(d.SOPInstanceUID, d.SOPClassUID, status) for d in datasets),
        )


def _no_dicom(node: DicomNode, datasets: Sequence[Dataset]) -> DeliveryResult:
    raise AssertionError(f"C-STORE to {node} for a dicomweb-only job")


@pytest.fixture
def web_runtime(tmp_path: Path) -> tuple[Runtime, FakeArchive]:
    settings = settings_with(tmp_path, sources={"web": SOURCE})
    archive = FakeArchive()
    rt = Runtime(
        settings=settings,
        store=JobStore(f"sqlite:///{tmp_path / 'jobs.sqlite3'}"),
        spool=Spool(settings.spool_dir),
        pipelines=dict(builtin_pipelines()),
        send=_no_dicom,
        send_web=archive,
    )
    return rt, archive


@pytest.fixture(scope="module")
def phantom() -> list[Dataset]:
    return make_ct_phantom(slices=16, size=64, pixel_spacing=5.5).datasets


def test_pulled_job_is_delivered_by_stow_to_its_sources_destination(
    web_runtime: tuple[Runtime, FakeArchive], phantom: list[Dataset]
) -> None:
    rt, archive = web_runtime
    job = process_job(rt, spool_study(rt, phantom, calling_ae="web"))
    assert job.state is JobState.DONE, job.error
    assert [c.url for c in archive.calls] == ["https://archive.example/dicom-web"]
    assert archive.calls[0].password == "s3cret"
    assert {d["destination"] for d in job.delivered} == {"archive"}
    assert len(job.delivered) == 2  # SEG and SR


@pytest.mark.parametrize(
    ("error", "refuse", "reason"),
    [
        ("STOW-RS: 401 Unauthorized from https://archive.example", False, "401 Unauthorized"),
        (None, True, "destination archive refused 2 of 2 instances"),
    ],
)
def test_stow_failures_are_transient_like_c_store(
    web_runtime: tuple[Runtime, FakeArchive],
    phantom: list[Dataset],
    error: str | None,
    refuse: bool,
    reason: str,
) -> None:
    rt, archive = web_runtime
    archive.error, archive.refuse = error, refuse
    job_id = spool_study(rt, phantom, calling_ae="web")
    with pytest.raises(TransientDeliveryError, match=reason):
        process_job(rt, job_id)
    job = rt.store.get(job_id)  # waiting for its retry, saying why
    assert job.state is JobState.QUEUED and reason in (job.error or "")
