"""RTSTRUCT: contours that give the masks back, SEG colours, detections, valid objects.

Contours are read back by filling them on the source grid with the even-odd rule
(``rasterize_contours``) and compared with the masks (Dice >= 0.95 per segment, the
issue's bar) on the CT phantom with holes, islands and a mask touching the border added,
and on the real CT. dciodvfy and DCMTK's drtdump must find nothing wrong.
"""

from __future__ import annotations

import math
from pathlib import Path

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RTStructureSetStorage

from pipelines.contours import trace_plane
from pipelines.findings import Algorithm, Findings, Segment
from pipelines.rtstruct import build_rtstruct, contour_data_element, rasterize_contours
from pipelines.seg import build_seg, non_empty_segments
from pipelines.volume import Volume
from tests.support.dicom_validate import validation_reports

LESION = codes.SCT.MorphologicallyAbnormalStructure
ALGORITHM = Algorithm("test-algorithm", "1.0")


def _build(volume: Volume, findings: Findings) -> Dataset:
    return build_rtstruct(
        volume,
        findings,
        series_uid="2.25.1",
        sop_uid="2.25.2",
        series_number=2003,
        software_version="9.9.9",
    )


def _dice(a: npt.NDArray[np.bool_], b: npt.NDArray[np.bool_]) -> float:
    return 2.0 * float(np.count_nonzero(a & b)) / float(np.count_nonzero(a) + np.count_nonzero(b))


def _shapes(shape: tuple[int, int, int]) -> dict[str, npt.NDArray[np.bool_]]:
    """Masks a tracer gets wrong easily: a ring with an island in its hole and a second
    island, a square touching two image borders, a diagonal chain, one voxel."""
    _, rows, cols = shape
    yy, xx = np.mgrid[:rows, :cols]
    r = np.hypot(yy - rows / 2, xx - cols / 2)
    ring = np.zeros(shape, dtype=bool)
    ring[10:14] = (r < 30) & (r >= 15)  # outer boundary and a hole
    ring[10:14] |= r < 6  # an island inside the hole
    ring[12, 5:12, 5:12] = True  # a second island apart
    border = np.zeros(shape, dtype=bool)
    border[20:23, :20, cols - 20 :] = True
    diagonal = np.zeros(shape, dtype=bool)
    for i in range(12):
        diagonal[30, 40 + i, 40 + i] = True
    single = np.zeros(shape, dtype=bool)
    single[35, 60, 70] = True
    return {"Ring": ring, "Border": border, "Diagonal": diagonal, "Single": single}


@pytest.fixture(scope="module")
def shaped(phantom_volume: Volume, phantom_findings: Findings) -> Findings:
    masks = _shapes(phantom_volume.voxels.shape)
    added = tuple(Segment(label, mask, LESION, codes.SCT.Lesion) for label, mask in masks.items())
    return Findings(phantom_findings.algorithm, segments=(*phantom_findings.segments, *added))


@pytest.fixture(scope="module")
def shaped_rtstruct(phantom_volume: Volume, shaped: Findings) -> Dataset:
    return _build(phantom_volume, shaped)


@pytest.fixture(scope="module")
def nodule_rtstruct(nodule_volume: Volume, nodule_findings: Findings) -> Dataset:
    return _build(nodule_volume, nodule_findings)


def test_every_segment_rasterises_back_to_its_mask(
    phantom_volume: Volume, shaped: Findings, shaped_rtstruct: Dataset
) -> None:
    segments = non_empty_segments(shaped)
    names = [str(roi.ROIName) for roi in shaped_rtstruct.StructureSetROISequence]
    assert names == [segment.label for segment in segments]
    for segment, contours in zip(segments, shaped_rtstruct.ROIContourSequence, strict=True):
        drawn = rasterize_contours(phantom_volume, contours)
        assert _dice(drawn, segment.mask) >= 0.95, segment.label
        # Every slice the segment covers has contours, and no other slice does.
        covered = segment.mask.any(axis=(1, 2))
        assert np.array_equal(drawn.any(axis=(1, 2)), covered), segment.label


def test_holes_and_islands_give_one_contour_per_boundary(phantom_volume: Volume) -> None:
    ring = _shapes(phantom_volume.voxels.shape)["Ring"]
    assert len(trace_plane(ring[11])) == 3  # outer boundary, hole, island in the hole
    assert len(trace_plane(ring[12])) == 4  # and the island apart
    assert trace_plane(np.zeros((8, 8), dtype=bool)) == []


def test_contours_lie_on_the_image_they_reference(
    phantom_volume: Volume, shaped_rtstruct: Dataset
) -> None:
    images = {str(ds.SOPInstanceUID): ds for ds in phantom_volume.datasets}
    contours = [c for roi in shaped_rtstruct.ROIContourSequence for c in roi.ContourSequence]
    assert contours
    for contour in contours:
        assert contour.ContourGeometricType == "CLOSED_PLANAR"
        image = images[str(contour.ContourImageSequence[0].ReferencedSOPInstanceUID)]
        assert contour.ContourImageSequence[0].ReferencedSOPClassUID == image.SOPClassUID
        points = np.asarray(contour.ContourData, dtype=np.float64).reshape(-1, 3)
        assert len(points) == int(contour.NumberOfContourPoints) >= 3
        normal = np.cross(*np.asarray(image.ImageOrientationPatient, dtype=float).reshape(2, 3))
        offsets = (points - np.asarray(image.ImagePositionPatient, dtype=float)) @ normal
        assert np.abs(offsets).max() < 0.01


def test_roi_colours_are_the_seg_colours(
    phantom_volume: Volume, shaped: Findings, shaped_rtstruct: Dataset
) -> None:
    seg = build_seg(
        phantom_volume,
        shaped,
        series_uid="2.25.3",
        sop_uid="2.25.4",
        series_number=1003,
        software_version="9.9.9",
    )
    seg_colours = [list(s.RecommendedDisplayCIELabValue) for s in seg.SegmentSequence]
    roi_colours = [
        list(hd.color.CIELabColor.from_rgb(*roi.ROIDisplayColor).value)
        for roi in shaped_rtstruct.ROIContourSequence
    ]
    assert roi_colours == seg_colours
    assert len({tuple(c) for c in roi_colours}) == len(roi_colours)


def test_anatomy_is_an_organ_and_the_algorithm_is_named(
    phantom_volume: Volume, shaped: Findings, shaped_rtstruct: Dataset
) -> None:
    ds = shaped_rtstruct
    algorithm = shaped.algorithm
    types = {
        str(ds.StructureSetROISequence[o.ReferencedROINumber - 1].ROIName): o.RTROIInterpretedType
        for o in ds.RTROIObservationsSequence
    }
    assert types["Lungs"] == "ORGAN" and types["Ring"] == ""
    assert ds.Modality == "RTSTRUCT"
    assert ds.SeriesDescription == f"AI structures ({algorithm.name})"
    assert ds.FrameOfReferenceUID == phantom_volume.datasets[0].FrameOfReferenceUID
    assert {roi.ROIGenerationAlgorithm for roi in ds.StructureSetROISequence} == {"AUTOMATIC"}
    (equipment,) = ds.ContributingEquipmentSequence
    assert (equipment.ManufacturerModelName, equipment.SoftwareVersions) == (
        algorithm.name,
        algorithm.version,
    )
    assert ds.PatientID == phantom_volume.datasets[0].PatientID
    assert ds.StudyInstanceUID == phantom_volume.study_uid
    referenced = ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
    images = referenced.RTReferencedSeriesSequence[0].ContourImageSequence
    assert [i.ReferencedSOPInstanceUID for i in images] == [
        d.SOPInstanceUID for d in phantom_volume.datasets
    ]


def test_a_detection_is_a_circle_of_its_diameter_on_its_centre_slice(
    nodule_volume: Volume, nodule_findings: Findings, nodule_rtstruct: Dataset
) -> None:
    assert nodule_findings.detections
    offset = len(non_empty_segments(nodule_findings))
    for number, detection in enumerate(nodule_findings.detections, start=offset + 1):
        roi = nodule_rtstruct.ROIContourSequence[number - 1]
        assert nodule_rtstruct.StructureSetROISequence[number - 1].ROIName == detection.label
        (contour,) = roi.ContourSequence
        centre = np.append(detection.centre_mm, 1.0)
        # The slice through the centre; a centre halfway between two slices may take either
        # (it takes the one the SR and KOS draw it on).
        k = float(np.linalg.solve(nodule_volume.affine, centre)[0])
        nearest = {math.floor(k + 1e-6), math.ceil(k - 1e-6)}
        image = contour.ContourImageSequence[0].ReferencedSOPInstanceUID
        assert image in {nodule_volume.datasets[i].SOPInstanceUID for i in nearest}
        points = np.asarray(contour.ContourData, dtype=np.float64).reshape(-1, 3)
        normal = nodule_volume.affine[:3, 0] / np.linalg.norm(nodule_volume.affine[:3, 0])
        in_plane = points.mean(axis=0) - np.asarray(detection.centre_mm)
        in_plane -= (in_plane @ normal) * normal
        assert np.linalg.norm(in_plane) < 1.0
        radii = np.linalg.norm(points - points.mean(axis=0), axis=1)
        assert np.allclose(radii, detection.longest_diameter_mm / 2, atol=0.01)


def test_nothing_to_draw_and_a_wrong_mask_are_refused(phantom_volume: Volume) -> None:
    empty = np.zeros(phantom_volume.voxels.shape, dtype=bool)
    nothing = Findings(ALGORITHM, segments=(Segment("Lesion", empty, LESION, codes.SCT.Lesion),))
    with pytest.raises(ValueError, match="no segment or detection"):
        _build(phantom_volume, nothing)
    wrong = Findings(
        ALGORITHM,
        segments=(Segment("Lesion", np.ones((2, 2, 2), dtype=bool), LESION, codes.SCT.Lesion),),
    )
    with pytest.raises(ValueError, match="does not match the volume"):
        _build(phantom_volume, wrong)


def test_the_real_ct_rasterises_back_to_every_segment(
    real_volume: Volume, real_findings: Findings
) -> None:
    rtstruct = _build(real_volume, real_findings)
    segments = non_empty_segments(real_findings)
    assert len(segments) == len(rtstruct.ROIContourSequence) >= 2
    for segment, contours in zip(segments, rtstruct.ROIContourSequence, strict=True):
        assert _dice(rasterize_contours(real_volume, contours), segment.mask) >= 0.95


def test_dciodvfy_and_drtdump_find_nothing_wrong(
    tmp_path: Path,
    shaped_rtstruct: Dataset,
    nodule_rtstruct: Dataset,
    real_volume: Volume,
    real_findings: Findings,
) -> None:
    paths = []
    for name, ds in (
        ("shapes", shaped_rtstruct),
        ("nodules", nodule_rtstruct),
        ("real", _build(real_volume, real_findings)),
    ):
        path = tmp_path / f"{name}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    reports = validation_reports(paths, tmp_path / "work")
    assert {path.name: report.errors for path, report in reports.items()} == {
        path.name: [] for path in paths
    }
    for path in paths:  # what was written is what reads back
        again = pydicom.dcmread(path)
        assert again.SOPClassUID == "1.2.840.10008.5.1.4.1.1.481.3"
        assert len(again.ROIContourSequence) == len(again.StructureSetROISequence)


def test_contour_data_is_encoded_at_once_and_reads_back_as_the_points(tmp_path: Path) -> None:
    """The bulk DS encoding: what pydicom reads back is every point to a thousandth of a mm,
    each value a valid DS (at most 16 characters), the value of even length."""
    rng = np.random.default_rng(7)
    points = np.vstack(
        [rng.uniform(-2000.0, 2000.0, size=(500, 3)), [[-0.0001, 0.0, 1e-9], [9999999.9996, -1, 2]]]
    )
    element = contour_data_element(points)
    raw = bytes(element.value)
    assert len(raw) % 2 == 0 and element.length == len(raw)
    values = raw.decode("ascii").rstrip(" ").split("\\")
    assert len(values) == points.size
    assert max(len(value) for value in values) <= 16
    assert "-0.000" not in values
    item = Dataset()
    item[element.tag] = element
    assert np.array_equal(np.asarray(item.ContourData, dtype=float), np.round(points.ravel(), 3))
    for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        contour = Dataset()
        contour[element.tag] = contour_data_element(points)
        roi = Dataset()
        roi.ContourSequence = [contour]
        ds = Dataset()
        ds.SOPClassUID = RTStructureSetStorage
        ds.SOPInstanceUID = "2.25.9"
        ds.ROIContourSequence = [roi]
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = syntax
        path = tmp_path / f"contour-{syntax}.dcm"
        ds.save_as(path, enforce_file_format=True)
        again = pydicom.dcmread(path).ROIContourSequence[0].ContourSequence[0]
        assert np.allclose(np.asarray(again.ContourData, dtype=float), points.ravel(), atol=5e-4)
    with pytest.raises(ValueError, match="finite"):
        contour_data_element(np.array([[0.0, np.nan, 1.0]]))
