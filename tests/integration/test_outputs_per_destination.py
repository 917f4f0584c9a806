"""End to end: one job, two PACS, each receives the result objects it asked for.

`pacs-annotator up` with two destinations, both real Orthancs: "pacs" (the default
outputs, SEG and SR) and "rtpacs" (``outputs: [rtstruct, gsps, kos]``, as a PACS whose
viewer shows neither SEG nor SR but draws presentation states). One study sent from the
first gives one job; each PACS then holds exactly its own objects, valid per dciodvfy and
drtdump (PixelMed checks the same builders' output in tests/unit/pipelines, one JVM less
here), the RTSTRUCT one PACS received draws the same structures as the SEG the other one
did, and its GSPS outlines them in the SEG's colours over the series that PACS holds.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
import yaml
from pydicom.dataset import Dataset

from pipelines.rtstruct import rasterize_contours
from pipelines.volume import load_series
from tests.integration.conftest import ANNOTATOR_AET, RunningService, run_up
from tests.integration.test_round_trip import masks_on_source_grid, send_and_wait
from tests.support.dicom_validate import dciodvfy_errors, drtdump_messages
from tests.support.orthanc import Orthanc, require_orthanc
from tests.support.phantom import make_nodule_phantom
from tests.support.processes import free_port, require_binaries

pytestmark = pytest.mark.integration

#: What the second destination asks for.
RT_OUTPUTS = ["rtstruct", "gsps", "kos"]


@pytest.fixture(scope="module")
def rtpacs() -> Iterator[Orthanc]:
    require_orthanc()
    with Orthanc(aet="RTPACS", graceful_stop=False) as server:
        yield server


@pytest.fixture(scope="module")
def two_destinations(
    orthanc: Orthanc, rtpacs: Orthanc, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningService]:
    require_binaries("redis-server")
    root = tmp_path_factory.mktemp("outputs")
    port = free_port()
    config = {
        "data_dir": str(root / "data"),
        "log_level": "INFO",
        "scp": {"ae_title": ANNOTATOR_AET, "host": "127.0.0.1", "port": port},
        "completion": {"quiet_seconds": 1.0},
        "destinations": {
            "pacs": {"ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port},
            "rtpacs": {
                "ae_title": rtpacs.aet,
                "host": "127.0.0.1",
                "port": rtpacs.dicom_port,
                "outputs": RT_OUTPUTS,
            },
        },
        "delivery": {
            "to": ["pacs", "rtpacs"],
            "max_retries": 2,
            "retry_delay_seconds": 1,
            "timeout_seconds": 30,
        },
        "monitor": {"port": free_port()},
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    with run_up(path, port=port, orthanc=orthanc) as running:
        yield running


def _held(orthanc: Orthanc, study_uid: str) -> dict[str, list[str]]:
    """Orthanc instance ids of the study, by modality."""
    study_id = orthanc.study_id_for_uid(study_uid)
    assert study_id, f"{orthanc.aet} holds no study {study_uid}"
    held: dict[str, list[str]] = {}
    for series in orthanc.series_of_study(study_id):
        held.setdefault(series["MainDicomTags"]["Modality"], []).extend(series["Instances"])
    return held


def _download(orthanc: Orthanc, ids: list[str], folder: Path) -> list[Path]:
    return [orthanc.download_instance(i, folder / f"{i}.dcm") for i in ids]


def test_each_destination_receives_exactly_its_outputs_from_one_job(
    orthanc: Orthanc, rtpacs: Orthanc, two_destinations: RunningService, tmp_path: Path
) -> None:
    phantom = make_nodule_phantom(seed=23)
    for i, ds in enumerate(phantom.datasets):
        path = tmp_path / "ct" / f"{i:03d}.dcm"
        path.parent.mkdir(exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        orthanc.upload(path)
    sources = sorted(phantom.datasets, key=lambda ds: float(ds.ImagePositionPatient[2]))
    study_uid = str(sources[0].StudyInstanceUID)

    job = send_and_wait(orthanc, two_destinations, study_uid)
    by_destination: dict[str, list[str]] = {}
    for record in job["delivered"]:
        by_destination.setdefault(record["destination"], []).append(record["kind"])
    assert sorted(by_destination["pacs"]) == ["seg", "sr"]
    # One RTSTRUCT and one GSPS per pipeline that drew something (ct-basic's anatomy, the
    # nodules), one KOS.
    assert sorted(by_destination["rtpacs"]) == ["gsps", "gsps", "kos", "rtstruct", "rtstruct"]

    pacs_held = _held(orthanc, study_uid)
    rt_held = _held(rtpacs, study_uid)
    assert {m: len(ids) for m, ids in pacs_held.items()} == {
        "CT": len(sources),
        "SEG": 1,
        "SR": 1,
    }
    assert {m: len(ids) for m, ids in rt_held.items()} == {
        "RTSTRUCT": 2,
        "PR": 2,
        "KO": 1,
    }

    rt_files = _download(rtpacs, rt_held["RTSTRUCT"] + rt_held["KO"], tmp_path / "rt")
    pr_files = _download(rtpacs, rt_held["PR"], tmp_path / "pr")
    (seg_file,) = _download(orthanc, pacs_held["SEG"], tmp_path / "pacs")
    for path in rt_files + pr_files:
        assert dciodvfy_errors(path) == [], path.name
    for path in rt_files[:2]:
        assert drtdump_messages(path).errors == (), path.name

    # The RTSTRUCT one PACS holds draws what the SEG the other PACS holds does.
    seg = pydicom.dcmread(seg_file)
    masks = masks_on_source_grid(seg, sources)
    volume = load_series(sources)
    structures = [pydicom.dcmread(p) for p in rt_files[:2]]
    basic = next(s for s in structures if "ct-basic" in s.SeriesDescription)
    for roi, contours in zip(basic.StructureSetROISequence, basic.ROIContourSequence, strict=True):
        drawn = rasterize_contours(volume, contours)
        mask = masks[str(roi.ROIName)]
        dice = 2 * np.count_nonzero(drawn & mask) / (np.count_nonzero(drawn) + mask.sum())
        assert dice >= 0.95, f"{roi.ROIName}: Dice {dice:.3f}"
    nodules = next(s for s in structures if "ct-lung-nodules" in s.SeriesDescription)
    assert [str(r.ROIName) for r in nodules.StructureSetROISequence][:1] == ["Nodule 1"]
    kos: Dataset = pydicom.dcmread(rt_files[-1])
    assert kos.ConceptNameCodeSequence[0].CodeMeaning == "Of Interest"
    source_uids = {str(ds.SOPInstanceUID) for ds in sources}
    (evidence,) = kos.CurrentRequestedProcedureEvidenceSequence
    key_images = [
        ref.ReferencedSOPInstanceUID
        for item in evidence.ReferencedSeriesSequence
        for ref in item.ReferencedSOPSequence
    ]
    assert key_images and set(key_images) <= source_uids

    # The GSPS: over the series that PACS holds, the SEG's structures in the SEG's colours,
    # and the nodules circled.
    presentation_states = [pydicom.dcmread(p) for p in pr_files]
    for gsps in presentation_states:
        (series,) = gsps.ReferencedSeriesSequence
        assert {str(i.ReferencedSOPInstanceUID) for i in series.ReferencedImageSequence} == (
            source_uids
        )
    basic_pr = next(p for p in presentation_states if "ct-basic" in p.SeriesDescription)
    layers = {
        str(item.GraphicLayerDescription): list(item.GraphicLayerRecommendedDisplayCIELabValue)
        for item in basic_pr.GraphicLayerSequence
    }
    assert layers == {
        str(item.SegmentLabel): list(item.RecommendedDisplayCIELabValue)
        for item in seg.SegmentSequence
    }
    nodules_pr = next(p for p in presentation_states if "ct-lung-nodules" in p.SeriesDescription)
    shapes = {
        str(graphic.GraphicType)
        for annotation in nodules_pr.GraphicAnnotationSequence
        for graphic in annotation.get("GraphicObjectSequence", [])
    }
    assert shapes and shapes <= {"CIRCLE", "ELLIPSE"}
