"""KOS: the key image of each finding, titled and described, valid per dciodvfy and PixelMed."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from pipelines.findings import Algorithm, Findings
from pipelines.kos import build_kos, has_key_images
from pipelines.sr_root import SeriesResult
from pipelines.volume import Volume
from tests.support.dicom_validate import validation_reports


def _build(results: list[SeriesResult]) -> Dataset:
    return build_kos(
        results, series_uid="2.25.11", sop_uid="2.25.12", series_number=9001, software_version="9"
    )


@pytest.fixture(scope="module")
def nodule_kos(
    nodule_volume: Volume, nodule_findings: Findings, nodule_basic_findings: Findings
) -> Dataset:
    return _build(
        [(nodule_volume, nodule_basic_findings, None), (nodule_volume, nodule_findings, None)]
    )


def _referenced(ds: Dataset) -> list[str]:
    document = hd.ko.KeyObjectSelectionDocument.from_dataset(ds)
    return [
        str(item.referenced_sop_instance_uid)
        for item in document.content.get_references(value_type=hd.sr.ValueTypeValues.IMAGE)
    ]


def _description(ds: Dataset) -> str:
    (text,) = [
        item.TextValue
        for item in ds.ContentSequence
        if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeValue == "113012"
    ]
    return str(text)


def test_each_detection_flags_the_slice_through_its_centre(
    nodule_volume: Volume, nodule_findings: Findings, nodule_kos: Dataset
) -> None:
    assert nodule_findings.detections
    expected = []
    for detection in nodule_findings.detections:
        k = np.linalg.solve(nodule_volume.affine, np.append(detection.centre_mm, 1.0))[0]
        expected.append(str(nodule_volume.datasets[round(float(k))].SOPInstanceUID))
    # Anatomy (body, lungs, bone of ct-basic) is context, not a key image, beside nodules.
    assert sorted(_referenced(nodule_kos)) == sorted(set(expected))
    description = _description(nodule_kos)
    for detection in nodule_findings.detections:
        assert f"{detection.label}: " in description
    assert "(ct-lung-nodules)" in description and "Lungs" not in description


def test_the_title_says_why_and_the_algorithms_are_named(nodule_kos: Dataset) -> None:
    title = nodule_kos.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning) == (
        "113000",
        "DCM",
        "Of Interest",
    )
    assert codes.DCM.OfInterest.value == "113000"
    # The algorithm whose findings are flagged (ct-basic's anatomy is not, beside nodules).
    assert nodule_kos.SeriesDescription == "AI key images (ct-lung-nodules)"
    # Each algorithm is a Contributing Equipment item (highdicom adds itself beside them).
    names = [e.ManufacturerModelName for e in nodule_kos.ContributingEquipmentSequence]
    assert [n for n in names if n != "highdicom"] == ["ct-lung-nodules"]
    evidence = nodule_kos.CurrentRequestedProcedureEvidenceSequence[0]
    listed = [
        i.ReferencedSOPInstanceUID
        for s in evidence.ReferencedSeriesSequence
        for i in s.ReferencedSOPSequence
    ]
    assert sorted(listed) == sorted(_referenced(nodule_kos))


def test_an_organ_model_flags_the_largest_slice_of_each_organ(
    phantom_volume: Volume, phantom_findings: Findings
) -> None:
    kos = _build([(phantom_volume, phantom_findings, None)])
    largest = {
        str(phantom_volume.datasets[int(np.argmax(s.mask.sum(axis=(1, 2))))].SOPInstanceUID)
        for s in phantom_findings.segments
        if s.mask.any()
    }
    assert set(_referenced(kos)) == largest
    assert "Lungs: largest extent" in _description(kos)


def test_nothing_found_means_no_key_images(phantom_volume: Volume) -> None:
    nothing = Findings(Algorithm("quiet", "1"))
    assert not has_key_images([(phantom_volume, nothing, None)])
    with pytest.raises(ValueError, match="no detection or segment"):
        _build([(phantom_volume, nothing, None)])


def test_dciodvfy_and_pixelmed_find_nothing_wrong(tmp_path: Path, nodule_kos: Dataset) -> None:
    path = tmp_path / "kos.dcm"
    nodule_kos.save_as(path, enforce_file_format=True)
    report = validation_reports([path], tmp_path / "work")[path]
    assert report.errors == []
