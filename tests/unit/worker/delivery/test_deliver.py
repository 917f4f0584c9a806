"""Delivering one job's results: each chosen destination gets its kinds of output, by its
protocol.

Fake C-STORE and STOW-RS senders stand behind the sender seams; settings are real.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    Comprehensive3DSRStorage,
    KeyObjectSelectionDocumentStorage,
    RTStructureSetStorage,
    SegmentationStorage,
    generate_uid,
)

from scu_scp.dicomweb import DicomwebEndpoint
from scu_scp.models import DeliveryError, DeliveryResult, DicomNode, InstanceResult
from worker.config import Settings, load_settings
from worker.delivery.deliver import TransientDeliveryError, deliver
from worker.delivery.destinations import NoDestinationError

PACS = {"ae_title": "PACS", "host": "pacs.example", "port": 104}
ARCHIVE = {"type": "dicomweb", "url": "https://archive.example/dicom-web", "auth": {"type": "none"}}


def output(sop_class: str) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    return ds


OUTPUTS = [output(SegmentationStorage), output(Comprehensive3DSRStorage)]
DONE_CT = [{"modality": "CT", "pipeline": "ct-basic", "status": "done"}]


class Recorder:
    """A sender that records what it was given; ``errors`` and ``refuse`` by target."""

    def __init__(self) -> None:
        self.sent: list[tuple[Any, list[str]]] = []
        self.errors: dict[str, str] = {}
        self.refuse: set[str] = set()

    def _answer(self, target: str, datasets: Sequence[Dataset]) -> DeliveryResult:
        if target in self.errors:
            raise DeliveryError(self.errors[target])
        status = 0xA700 if target in self.refuse else 0x0000
        error = "out of resources" if status else None
        return DeliveryResult(
            target,
            tuple(
                InstanceResult(ds.SOPInstanceUID, ds.SOPClassUID, status, error) for ds in datasets
            ),
        )

    def dicom(self, node: DicomNode, datasets: Sequence[Dataset]) -> DeliveryResult:
        self.sent.append((node, [ds.SOPInstanceUID for ds in datasets]))
        return self._answer(node.ae_title, datasets)

    def web(self, endpoint: DicomwebEndpoint, datasets: Sequence[Dataset]) -> DeliveryResult:
        self.sent.append((endpoint, [ds.SOPInstanceUID for ds in datasets]))
        return self._answer(endpoint.url, datasets)


def settings(tmp_path: Path, **extra: Any) -> Settings:
    extra.setdefault("destinations", {"pacs": PACS, "archive": ARCHIVE})
    return load_settings(None, data_dir=tmp_path, **extra)


def run(
    s: Settings,
    senders: Recorder,
    calling_ae: str = "PACS",
    outcomes: Sequence[dict[str, Any]] = DONE_CT,
) -> list[dict[str, Any]]:
    return deliver(
        s, "job-1", calling_ae, OUTPUTS, outcomes, send=senders.dicom, send_web=senders.web
    )


def test_every_destination_gets_all_outputs_by_its_protocol(tmp_path: Path) -> None:
    s = settings(
        tmp_path,
        delivery={"to": ["pacs", "archive"], "timeout_seconds": 12.5},
    )
    senders = Recorder()
    delivered = run(s, senders)
    uids = [ds.SOPInstanceUID for ds in OUTPUTS]
    (node, to_pacs), (endpoint, to_archive) = senders.sent
    assert node == DicomNode("PACS", "pacs.example", 104) and to_pacs == uids
    assert isinstance(endpoint, DicomwebEndpoint) and to_archive == uids  # SEG and SR together
    assert (endpoint.url, endpoint.timeout) == ("https://archive.example/dicom-web", 12.5)
    assert delivered == [
        {
            "destination": name,
            "sop_instance_uid": ds.SOPInstanceUID,
            "sop_class_uid": ds.SOPClassUID,
            "kind": kind,
        }
        for name in ("pacs", "archive")
        for ds, kind in zip(OUTPUTS, ("seg", "sr"), strict=True)
    ]


def test_rules_see_the_modalities_and_only_the_pipelines_that_did_not_fail(
    tmp_path: Path,
) -> None:
    rules = [
        {"to": ["archive"], "pipelines": ["ct-lung-nodules"]},
        {"to": ["pacs"], "modality": "MR"},
    ]
    s = settings(tmp_path, delivery={"rules": rules})
    nodules_failed = [
        {"modality": "CT", "pipeline": "ct-basic", "status": "done"},
        {"modality": "CT", "pipeline": "ct-lung-nodules", "status": "failed"},
    ]
    senders = Recorder()
    # No rule matches: the caller's own node (its AE title) gets the results.
    assert {d["destination"] for d in run(s, senders, outcomes=nodules_failed)} == {"pacs"}
    nodules_done = [{**o, "status": "done"} for o in nodules_failed]
    assert {d["destination"] for d in run(s, senders, outcomes=nodules_done)} == {"archive"}
    mr = [{"modality": "MR", "pipeline": None, "status": "skipped"}]
    assert {d["destination"] for d in run(s, senders, calling_ae="OTHER", outcomes=mr)} == {"pacs"}


def test_a_destination_that_cannot_be_reached_is_transient_and_named(tmp_path: Path) -> None:
    s = settings(tmp_path, delivery={"to": ["pacs", "archive"]})
    senders = Recorder()
    senders.errors["https://archive.example/dicom-web"] = "STOW-RS: 503 Service Unavailable"
    with pytest.raises(
        TransientDeliveryError, match=r"^destination archive: STOW-RS: 503 Service Unavailable$"
    ) as info:
        run(s, senders)
    assert isinstance(info.value.__cause__, DeliveryError)


def test_refused_instances_are_transient_with_the_count_and_the_first_reason(
    tmp_path: Path,
) -> None:
    s = settings(tmp_path)
    senders = Recorder()
    senders.refuse.add("PACS")
    first = OUTPUTS[0].SOPInstanceUID
    with pytest.raises(
        TransientDeliveryError,
        match=rf"^destination pacs refused 2 of 2 instances \(first: {first}: out of resources\)$",
    ):
        run(s, senders)


def test_no_destination_is_a_configuration_error_not_a_retry(tmp_path: Path) -> None:
    s = settings(tmp_path)
    senders = Recorder()
    with pytest.raises(NoDestinationError, match="no destination for calling AE 'STRANGER'"):
        run(s, senders, calling_ae="STRANGER")
    assert senders.sent == []


EVERY_KIND = [
    output(SegmentationStorage),
    output(RTStructureSetStorage),
    output(RTStructureSetStorage),
    output(Comprehensive3DSRStorage),
    output(KeyObjectSelectionDocumentStorage),
]


def _sent_kinds(senders: Recorder) -> list[list[str]]:
    kinds = {ds.SOPInstanceUID: ds.SOPClassUID.name for ds in EVERY_KIND}
    return [[kinds[uid] for uid in uids] for _, uids in senders.sent]


def test_each_destination_gets_exactly_its_own_kinds(tmp_path: Path) -> None:
    s = settings(
        tmp_path,
        destinations={"pacs": {**PACS, "outputs": ["rtstruct", "kos"]}, "archive": ARCHIVE},
        delivery={"to": ["pacs", "archive"]},
    )
    senders = Recorder()
    delivered = deliver(
        s, "job-1", "PACS", EVERY_KIND, DONE_CT, send=senders.dicom, send_web=senders.web
    )
    assert _sent_kinds(senders) == [
        [
            "RT Structure Set Storage",
            "RT Structure Set Storage",
            "Key Object Selection Document Storage",
        ],
        ["Segmentation Storage", "Comprehensive 3D SR Storage"],
    ]
    assert [(d["destination"], d["kind"]) for d in delivered] == [
        ("pacs", "rtstruct"),
        ("pacs", "rtstruct"),
        ("pacs", "kos"),
        ("archive", "seg"),
        ("archive", "sr"),
    ]


def test_a_rule_overrides_what_its_destinations_receive(tmp_path: Path) -> None:
    rules = [
        {"to": ["pacs"], "pipelines": ["ct-lung-nodules"], "outputs": ["kos"]},
        {"to": ["archive"], "modality": "CT"},
    ]
    s = settings(
        tmp_path,
        destinations={"pacs": {**PACS, "outputs": ["rtstruct"]}, "archive": ARCHIVE},
        delivery={"rules": rules, "outputs": ["sr"]},
    )
    senders = Recorder()
    nodules = [{"modality": "CT", "pipeline": "ct-lung-nodules", "status": "done"}]
    deliver(s, "job-1", "PACS", EVERY_KIND, nodules, send=senders.dicom, send_web=senders.web)
    # The rule's kos for pacs, the global default sr for archive (no outputs of its own).
    assert _sent_kinds(senders) == [
        ["Key Object Selection Document Storage"],
        ["Comprehensive 3D SR Storage"],
    ]
    senders = Recorder()
    basic = [{"modality": "CT", "pipeline": "ct-basic", "status": "done"}]
    s = settings(
        tmp_path,
        destinations={"pacs": {**PACS, "outputs": ["rtstruct"]}, "archive": ARCHIVE},
        delivery={"rules": [*rules, {"to": ["pacs"], "modality": "CT"}]},
    )
    deliver(s, "job-1", "PACS", EVERY_KIND, basic, send=senders.dicom, send_web=senders.web)
    # The kos rule does not match: pacs gets its own rtstruct.
    assert _sent_kinds(senders) == [
        ["Segmentation Storage", "Comprehensive 3D SR Storage"],
        ["RT Structure Set Storage", "RT Structure Set Storage"],
    ]


def test_the_recorded_kinds_decide_and_a_destination_with_nothing_is_skipped(
    tmp_path: Path,
) -> None:
    s = settings(
        tmp_path,
        destinations={"pacs": {**PACS, "outputs": ["kos"]}, "archive": ARCHIVE},
        delivery={"to": ["pacs", "archive"]},
    )
    senders = Recorder()
    send = partial(
        deliver, s, "job-1", "PACS", OUTPUTS, DONE_CT, send=senders.dicom, send_web=senders.web
    )
    delivered = send(kinds=["seg", "sr"])
    ((endpoint, uids),) = senders.sent  # pacs wants a KOS, and the job has none
    assert isinstance(endpoint, DicomwebEndpoint) and len(uids) == 2
    assert {d["destination"] for d in delivered} == {"archive"}
    with pytest.raises(ValueError):
        send(kinds=["seg"])  # a kind for each output
