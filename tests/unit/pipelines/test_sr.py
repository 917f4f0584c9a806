"""TID 1500 SR: dciodvfy-clean, reads back with highdicom, shaped like dcmqi's and highdicom's."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from pipelines import ct_basic, ct_lung_nodules
from pipelines.findings import Algorithm, Classification, Findings, Segment
from pipelines.measurements import measure_segment, round_to
from pipelines.seg import build_seg, non_empty_segments
from pipelines.sr import build_sr
from pipelines.sr_root import CLASSIFICATION, NO_FINDING
from pipelines.volume import Volume
from tests.conftest import shared_data_path
from tests.support.dicom_validate import dciodvfy_errors
from tests.support.phantom import image_point_mm

SR_SERIES, SR_SOP = "2.25.7001", "2.25.7002"


def _sr(volume: Volume, *results: tuple[Findings, Dataset | None]) -> Dataset:
    return build_sr(
        volume.datasets,
        [(volume, findings, seg) for findings, seg in results],
        series_uid=SR_SERIES,
        sop_uid=SR_SOP,
        series_number=9000,
        software_version="9.9.9",
    )


def _save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def nodule_seg(nodule_volume: Volume, nodule_basic_findings: Findings) -> Dataset:
    return build_seg(
        nodule_volume,
        nodule_basic_findings,
        series_uid="2.25.7003",
        sop_uid="2.25.7004",
        series_number=1003,
        software_version="9.9.9",
    )


@pytest.fixture(scope="module")
def sr_path(
    tmp_path_factory: pytest.TempPathFactory,
    nodule_volume: Volume,
    nodule_basic_findings: Findings,
    nodule_findings: Findings,
    nodule_seg: Dataset,
) -> Path:
    sr = _sr(nodule_volume, (nodule_basic_findings, nodule_seg), (nodule_findings, None))
    return _save(sr, tmp_path_factory.mktemp("sr") / "sr.dcm")


def _nothing(volume: Volume) -> Findings:
    empty = Segment(
        "Lesion",
        np.zeros(volume.voxels.shape, dtype=bool),
        codes.SCT.MorphologicallyAbnormalStructure,
        codes.SCT.Lesion,
    )
    return Findings(Algorithm("finds-nothing", "2.0"), segments=(empty,))


def test_sr_with_findings_passes_dciodvfy(sr_path: Path) -> None:
    assert dciodvfy_errors(sr_path) == []


def test_finding_free_sr_passes_dciodvfy_and_says_nothing_was_found(
    tmp_path: Path, phantom_volume: Volume
) -> None:
    path = _save(_sr(phantom_volume, (_nothing(phantom_volume), None)), tmp_path / "sr.dcm")
    assert dciodvfy_errors(path) == []
    sr = hd.sr.srread(path)
    assert sr.content.get_image_measurement_groups() == []
    assert "126010" not in {_code(i.ConceptNameCodeSequence[0])[0] for i in sr.ContentSequence}
    assert _evaluations(sr) == [
        ("Finding", NO_FINDING.meaning),
        ("Comment", "No findings (finds-nothing 2.0, series 3)"),
    ]


def _evaluations(sr: Dataset) -> list[tuple[str, str]]:
    """The root's "Qualitative Evaluations": (concept, value) of each item."""
    [container] = [
        item
        for item in sr.ContentSequence
        if _code(item.ConceptNameCodeSequence[0]) == ("C0034375", "UMLS")
    ]
    return [
        (
            str(item.ConceptNameCodeSequence[0].CodeMeaning),
            str(item.ConceptCodeSequence[0].CodeMeaning)
            if item.ValueType == "CODE"
            else str(item.TextValue),
        )
        for item in container.ContentSequence
    ]


def test_detections_are_boxes_on_their_key_slice_then_their_measurements(
    sr_path: Path, nodule_volume: Volume, nodule_findings: Findings
) -> None:
    report = hd.sr.srread(sr_path).content
    groups = report.get_planar_roi_measurement_groups(finding_type=codes.SCT.Nodule)
    detections = nodule_findings.detections
    assert len(groups) == 2 * len(detections) >= 10
    by_uid = {str(ds.SOPInstanceUID): ds for ds in nodule_volume.datasets}
    slice_step = nodule_volume.spacing[0]
    normal = nodule_volume.affine[:3, 0] / slice_step
    uids = set()
    for number, detection in enumerate(detections):
        where, measured = groups[2 * number], groups[2 * number + 1]
        # One finding: the same tracking identity, finding and region in both groups.
        assert where.tracking_identifier == measured.tracking_identifier == detection.label
        assert where.tracking_uid == measured.tracking_uid
        uids.add(where.tracking_uid)
        assert where.roi.value.tolist() == measured.roi.value.tolist()
        for group in (where, measured):
            [site] = group.finding_sites
            assert site.value == detection.finding_site
        region = where.roi
        assert region.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
        image = by_uid[region.ContentSequence[0].referenced_sop_instance_uid]
        points = region.value
        assert len(points) == 5 and np.array_equal(points[0], points[-1])
        centre = image_point_mm(image, *points[:4].mean(axis=0))
        # The key image is the slice through the centre; the box is centred on it.
        offset = centre - np.array(detection.centre_mm)
        assert abs(offset @ normal) <= slice_step / 2 + 1e-3
        assert np.linalg.norm(offset - (offset @ normal) * normal) < 1e-3
        # The first group has no numbers (what OHIF tracks), the second has them all.
        assert where.get_measurements() == []
        [comment] = [
            item.TextValue
            for item in where[0].ContentSequence
            if item.ConceptNameCodeSequence[0].CodeValue == "121106"
        ]
        [diameter] = measured.get_measurements(name=codes.SCT.LongAxis)
        assert diameter.value == round_to(detection.longest_diameter_mm, min(nodule_volume.spacing))
        assert diameter.unit.value == "mm"
        assert (
            comment
            == f"{detection.label}: {diameter.value:g} mm, score {round(detection.score, 2):g}"
        )
        [volume] = measured.get_measurements(name=codes.SCT.Volume)
        assert volume.value == round_to(detection.volume_mm3, nodule_volume.voxel_volume_mm3)
        assert volume.unit.value == "mm3"
        [score] = measured.get_measurements(name=codes.SCT.Score)
        assert score.value == round(detection.score, 2)
        assert score.unit.value == "1"
    assert len(uids) == len(detections)


def test_segments_read_back_with_their_seg_reference_and_outline(
    sr_path: Path, nodule_volume: Volume, nodule_basic_findings: Findings, nodule_seg: Dataset
) -> None:
    report = hd.sr.srread(sr_path).content
    groups = report.get_volumetric_roi_measurement_groups(
        reference_type=codes.DCM.ReferencedSegment
    )
    segments = non_empty_segments(nodule_basic_findings)
    assert len(groups) == len(segments) == 3
    for number, (group, segment) in enumerate(zip(groups, segments, strict=True), start=1):
        reference = group.roi if group.referenced_segment is None else group.referenced_segment
        assert isinstance(reference, hd.sr.ReferencedSegment)
        assert reference.referenced_sop_instance_uid == nodule_seg.SOPInstanceUID
        assert reference.referenced_segment_numbers == [number]
        seg_item = nodule_seg.SegmentSequence[number - 1]
        assert seg_item.SegmentLabel == segment.label
        # One identity in both objects: the SEG's tracking identifier and UID.
        assert (group.tracking_identifier, group.tracking_uid) == (
            seg_item.TrackingID,
            seg_item.TrackingUID,
        )
        assert group.finding_type == segment.property_type
        expected = measure_segment(nodule_volume, segment)
        [volume] = group.get_measurements(name=codes.SCT.Volume)
        resolution_ml = nodule_volume.voxel_volume_mm3 / 1000
        assert volume.value == round_to(expected.volume_ml, resolution_ml)
        assert volume.value == pytest.approx(expected.volume_ml, abs=resolution_ml)
        assert volume.unit.value == "ml"
        [mean] = group.get_measurements(name=codes.DCM.AttenuationCoefficient)
        assert mean.value == round(expected.mean_hu)
        assert mean.unit.value == "[hnsf'U]"
        # Both were measured on the segment, shown by its outline on its largest slice.
        largest = int(np.argmax(segment.mask.sum(axis=(1, 2))))
        image = nodule_volume.datasets[largest]
        for measurement in (volume, mean):
            [outline] = measurement.referenced_coordinates
            assert outline.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
            assert outline.ContentSequence[0].referenced_sop_instance_uid == image.SOPInstanceUID
            points = outline.value
            assert np.array_equal(points[0], points[-1])
            rows, cols = np.nonzero(segment.mask[largest])
            centre_col, centre_row = points.mean(axis=0)
            assert rows.min() - 1 <= centre_row <= rows.max() + 2
            assert cols.min() - 1 <= centre_col <= cols.max() + 2
    # Detections aside, no planar group: the outline is where the measurements come from.
    planar = report.get_planar_roi_measurement_groups()
    assert {group.finding_type for group in planar} == {codes.SCT.Nodule}


def test_provenance_evidence_and_procedure(
    sr_path: Path, nodule_volume: Volume, nodule_seg: Dataset
) -> None:
    sr = hd.sr.srread(sr_path)
    assert (sr.SOPInstanceUID, sr.SeriesInstanceUID) == (SR_SOP, SR_SERIES)
    assert sr.StudyInstanceUID == nodule_volume.study_uid
    assert sr.SOPClassUID == pydicom.uid.Comprehensive3DSRStorage
    observers = sr.content.get_observer_contexts(observer_type=codes.DCM.Device)
    assert [o.observer_identifying_attributes.name for o in observers] == ["pacs-annotator"]
    assert sr.SoftwareVersions == "9.9.9"
    names = ["ct-basic", "ct-lung-nodules"]
    equipment = {
        e.ManufacturerModelName: e
        for e in sr.ContributingEquipmentSequence
        if e.get("ManufacturerModelName") in names
    }
    assert set(equipment) == set(names)
    versions = {"ct-basic": ct_basic.VERSION, "ct-lung-nodules": ct_lung_nodules.VERSION}
    for name, item in equipment.items():
        assert item.SoftwareVersions == versions[name]
        assert item.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
    [procedure] = [
        item.ConceptCodeSequence[0]
        for item in sr.ContentSequence
        if item.ConceptNameCodeSequence[0].CodeValue == "121058"
    ]
    assert (procedure.CodeValue, procedure.CodingSchemeDesignator) == ("25045-6", "LN")
    evidence = {
        ref.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    }
    sources = {ds.SOPInstanceUID for ds in nodule_volume.datasets}
    assert evidence == sources | {nodule_seg.SOPInstanceUID}
    [library] = [
        i for i in sr.ContentSequence if _code(i.ConceptNameCodeSequence[0])[0] == "111028"
    ]
    listed = {
        image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        for group in library.ContentSequence
        for image in group.ContentSequence
        if image.ValueType == "IMAGE"
    }
    assert listed == sources
    assert sr.CompletionFlag == "COMPLETE" and sr.VerificationFlag == "UNVERIFIED"


def _root_shape(ds: Dataset) -> dict[str, object]:
    template = ds.ContentTemplateSequence[0]
    containers = [i for i in ds.ContentSequence if i.ValueType == "CONTAINER"]
    [measurements] = [i for i in containers if i.ConceptNameCodeSequence[0].CodeValue == "126010"]
    group = measurements.ContentSequence[0]
    return {
        "template": (template.MappingResource, template.TemplateIdentifier),
        "root": _code(ds.ConceptNameCodeSequence[0]),
        "group": _code(group.ConceptNameCodeSequence[0]),
        "tracking": {
            _code(i.ConceptNameCodeSequence[0])
            for i in group.ContentSequence
            if i.RelationshipType == "HAS OBS CONTEXT"
        },
        "language": _code(ds.ContentSequence[0].ConceptNameCodeSequence[0]),
        "procedure": any(
            _code(i.ConceptNameCodeSequence[0]) == ("121058", "DCM") for i in ds.ContentSequence
        ),
        "observer": any(
            _code(i.ConceptNameCodeSequence[0]) == ("121005", "DCM") for i in ds.ContentSequence
        ),
        "evidence": "CurrentRequestedProcedureEvidenceSequence" in ds,
    }


def _code(item: Dataset) -> tuple[str, str]:
    return str(item.CodeValue), str(item.CodingSchemeDesignator)


@pytest.mark.parametrize(
    "reference",
    [
        ("dcmqi", "sr-example", "sr.dcm"),
        ("highdicom", "sr_document_with_multiple_groups.dcm"),
    ],
)
def test_structure_matches_established_writers(sr_path: Path, reference: tuple[str, ...]) -> None:
    theirs = pydicom.dcmread(shared_data_path("reference-seg-sr", *reference))
    ours = pydicom.dcmread(sr_path)
    shape, expected = _root_shape(ours), _root_shape(theirs)
    # dcmqi adds session and time point context to its groups; both have tracking.
    assert {("112039", "DCM"), ("112040", "DCM")} <= shape.pop("tracking")  # type: ignore[operator]
    assert {("112039", "DCM"), ("112040", "DCM")} <= expected.pop("tracking")  # type: ignore[operator]
    assert shape == expected
    assert _root_shape(ours)["template"] == ("DCMR", "1500")
    assert _root_shape(ours)["root"] == ("126000", "DCM")
    assert _root_shape(ours)["group"] == ("125007", "DCM")
    # References: content items point at instances with Referenced SOP Sequence items of
    # the same keywords, and the evidence sequence names study, series and instances.
    ref_keys = {"ReferencedSOPClassUID", "ReferencedSOPInstanceUID"}
    for ds in (theirs, ours):
        images = _find(ds, "IMAGE")
        assert images
        for item in images:
            assert ref_keys <= {e.keyword for e in item.ReferencedSOPSequence[0]}
    ours_segment = [
        i for i in _find(ours, "IMAGE") if "ReferencedSegmentNumber" in i.ReferencedSOPSequence[0]
    ]
    if reference[0] == "dcmqi":
        theirs_segment = [
            i
            for i in _find(theirs, "IMAGE")
            if "ReferencedSegmentNumber" in i.ReferencedSOPSequence[0]
        ]
        assert _code(theirs_segment[0].ConceptNameCodeSequence[0]) == _code(
            ours_segment[0].ConceptNameCodeSequence[0]
        )
    theirs_evidence = theirs.CurrentRequestedProcedureEvidenceSequence[0]
    ours_evidence = ours.CurrentRequestedProcedureEvidenceSequence[0]
    assert {e.keyword for e in theirs_evidence} == {e.keyword for e in ours_evidence}
    assert {e.keyword for e in theirs_evidence.ReferencedSeriesSequence[0]} == {
        e.keyword for e in ours_evidence.ReferencedSeriesSequence[0]
    }


def test_structure_matches_highdicom_sr_document(sr_path: Path) -> None:
    theirs = pydicom.dcmread(shared_data_path("reference-seg-sr", "highdicom", "sr_document.dcm"))
    ours = pydicom.dcmread(sr_path)
    assert theirs.SOPClassUID == ours.SOPClassUID == pydicom.uid.Comprehensive3DSRStorage
    for ds in (theirs, ours):
        assert _root_shape(ds)["template"] == ("DCMR", "1500")
        assert _root_shape(ds)["root"] == ("126000", "DCM")
        assert _root_shape(ds)["group"] == ("125007", "DCM")


def _find(ds: Dataset, value_type: str) -> list[Dataset]:
    found = []
    for item in ds.get("ContentSequence", []):
        if item.ValueType == value_type:
            found.append(item)
        found.extend(_find(item, value_type))
    return found


def test_classifications_are_qualitative_evaluations(
    tmp_path: Path, phantom_volume: Volume
) -> None:
    findings = Findings(
        Algorithm("classifier", "1.0"),
        classifications=(Classification(codes.SCT.Nodule, 0.7512),),
    )
    path = _save(_sr(phantom_volume, (findings, None)), tmp_path / "sr.dcm")
    assert dciodvfy_errors(path) == []
    sr = hd.sr.srread(path)
    assert sr.content.get_image_measurement_groups() == []
    assert _evaluations(sr) == [
        (CLASSIFICATION.meaning, "Nodule"),
        ("Comment", "Nodule: probability 0.75 (classifier 1.0, series 3)"),
    ]


def test_segments_without_their_seg_are_refused(
    nodule_volume: Volume, nodule_basic_findings: Findings
) -> None:
    with pytest.raises(ValueError, match="no SEG to reference"):
        _sr(nodule_volume, (nodule_basic_findings, None))


def test_nothing_to_report_on_is_refused(nodule_volume: Volume) -> None:
    with pytest.raises(ValueError, match="at least one"):
        build_sr(
            nodule_volume.datasets,
            [],
            series_uid=SR_SERIES,
            sop_uid=SR_SOP,
            series_number=1,
            software_version="1",
        )


def test_measure_segment_is_exact(phantom_volume: Volume) -> None:
    mask = np.zeros(phantom_volume.voxels.shape, dtype=bool)
    mask[3:5, 10:20, 10:15] = True
    segment = Segment("Box", mask, codes.SCT.AnatomicalStructure, codes.SCT.Lung)
    measured = measure_segment(phantom_volume, segment)
    assert measured.voxel_count == 100
    assert measured.volume_mm3 == pytest.approx(100 * phantom_volume.voxel_volume_mm3)
    assert measured.volume_ml == pytest.approx(measured.volume_mm3 / 1000)
    assert measured.mean_hu == pytest.approx(float(phantom_volume.voxels[mask].mean()), abs=1e-3)
    with pytest.raises(ValueError, match="does not match"):
        measure_segment(
            phantom_volume, Segment("Bad", mask[:1], segment.category, segment.category)
        )


# The real CT's PatientName is a single-component ID: highdicom warns, the source is as is.
@pytest.mark.filterwarnings("ignore:The string .* person name:UserWarning")
def test_real_ct_sr_is_valid(tmp_path: Path, real_volume: Volume, real_findings: Findings) -> None:
    seg = build_seg(
        real_volume,
        real_findings,
        series_uid="2.25.7005",
        sop_uid="2.25.7006",
        series_number=1003,
        software_version="9.9.9",
    )
    nothing = Findings(Algorithm("ct-lung-nodules", "0.1.0"))
    path = _save(_sr(real_volume, (real_findings, seg), (nothing, None)), tmp_path / "sr.dcm")
    assert dciodvfy_errors(path) == []
    evaluations = _evaluations(hd.sr.srread(path))
    assert evaluations[0] == ("Finding", NO_FINDING.meaning)
    assert evaluations[1][1].startswith("No findings (ct-lung-nodules 0.1.0, series")


_LIBRARY, _MEASUREMENTS = ("111028", "DCM"), ("126010", "DCM")


def test_library_and_groups_are_not_handed_to_highdicoms_constructor(
    monkeypatch: pytest.MonkeyPatch,
    nodule_volume: Volume,
    nodule_basic_findings: Findings,
    nodule_seg: Dataset,
) -> None:
    """highdicom deep-copies and searches what it is given: the big containers come after."""
    handed: list[set[tuple[str, str]]] = []

    class Recording(hd.sr.Comprehensive3DSR):  # type: ignore[misc]
        def __init__(self, *args: Any, content: Any, **kwargs: Any) -> None:
            items = content[0].ContentSequence  # a one-item sequence: the root container
            handed.append({_code(i.ConceptNameCodeSequence[0]) for i in items})
            super().__init__(*args, content=content, **kwargs)

    monkeypatch.setattr(hd.sr, "Comprehensive3DSR", Recording)
    sr = _sr(nodule_volume, (nodule_basic_findings, nodule_seg))
    assert len(handed) == 1
    assert not handed[0] & {_LIBRARY, _MEASUREMENTS}
    root = [_code(i.ConceptNameCodeSequence[0]) for i in sr.ContentSequence]
    assert root.index(_LIBRARY) + 1 == root.index(_MEASUREMENTS)


def test_sr_equals_the_one_highdicom_builds_from_the_whole_tree(
    nodule_volume: Volume, nodule_basic_findings: Findings, nodule_seg: Dataset
) -> None:
    """Same content, same evidence, and highdicom's parsed tree (``sr.content``) whole."""
    ours = _sr(nodule_volume, (nodule_basic_findings, nodule_seg))
    root = Dataset()
    for keyword in (
        "ValueType",
        "ConceptNameCodeSequence",
        "ContinuityOfContent",
        "ContentTemplateSequence",
        "ContentSequence",
    ):
        setattr(root, keyword, copy.deepcopy(ours[keyword].value))
    # Handed the whole tree, highdicom also checks every referenced image is evidence.
    whole = hd.sr.Comprehensive3DSR(
        evidence=[*nodule_volume.datasets, nodule_seg],
        content=root,
        series_instance_uid=SR_SERIES,
        series_number=9000,
        sop_instance_uid=SR_SOP,
        instance_number=1,
    )
    assert ours.ContentSequence == whole.ContentSequence
    for keyword in ("CurrentRequestedProcedureEvidenceSequence", "ContentTemplateSequence"):
        assert ours[keyword] == whole[keyword]
    assert "PertinentOtherEvidenceSequence" not in ours
    assert list(ours.content[0].ContentSequence) == list(whole.content[0].ContentSequence)
    images = _find(ours.content[0], "IMAGE")
    assert len(images) >= len(nodule_volume.datasets)
