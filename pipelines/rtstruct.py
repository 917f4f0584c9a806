"""Findings -> RT Structure Set: contours that radiotherapy systems and most viewers draw.

Many PACS viewers show an RTSTRUCT but not a SEG. Each non-empty segment becomes one ROI
whose contours are traced from its mask on every source slice it covers, and each detection
one ROI with a small closed contour (a circle of its longest diameter on the slice through
its centre). The ROI colours are the SEG's (``pipelines.colors``), so a structure looks the
same whichever object a viewer shows.

Contours: scikit-image's ``find_contours`` traces the 0.5 iso-line of each slice's mask
(the boundary between inside and outside, padded so a mask touching the image border
still closes), points inside straight runs dropped. A slice gives one CLOSED_PLANAR
contour per boundary: the outline of every island and of every hole. Read with the
even-odd rule, the usual reading of nested contours (a point inside an odd number of an
ROI's contours on a plane is inside the ROI), they give the mask back:
``rasterize_contours`` does that, and the tests compare it with the mask. Points are in
patient coordinates (mm) on the slice's plane; each contour references the source image
it lies on (Contour Image Sequence).

highdicom does not write RTSTRUCT; ``rt-utils`` does, but needs OpenCV, gives each
structure set random UIDs and writes no Contributing Equipment, so this module builds the
dataset with pydicom on highdicom's ``SOPClass`` (patient and study copied as for the
SEG): see the README's "Result objects, per destination".
"""

from __future__ import annotations

import datetime
import logging
import math
from dataclasses import dataclass

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import RTStructureSetStorage
from skimage import draw, measure

from pipelines.colors import RGB, segment_rgb
from pipelines.findings import Detection, Findings, Segment
from pipelines.seg import (
    check_mask_shapes,
    copy_required_source_attributes,
    non_empty_segments,
)
from pipelines.sr_root import equipment
from pipelines.volume import Volume

logger = logging.getLogger(__name__)

#: The "study component" SOP class RT objects name to reference a study (PS3.3 C.8.8.5).
STUDY_COMPONENT_SOP_CLASS = "1.2.840.10008.3.1.2.3.1"
#: Points of a detection's circle.
CIRCLE_POINTS = 24
#: A detection's circle is at least this many pixels across, so a tiny lesion still shows.
MIN_CIRCLE_RADIUS_PX = 1.5


@dataclass(frozen=True)
class _Roi:
    label: str
    interpreted_type: str  # RT ROI Interpreted Type; empty (type 2) unless an organ
    color: RGB
    contours: list[Dataset]


def has_structures(findings: Findings) -> bool:
    """Whether an RTSTRUCT has anything to hold: a non-empty segment or a detection."""
    return bool(findings.detections) or bool(non_empty_segments(findings))


def build_rtstruct(
    volume: Volume,
    findings: Findings,
    *,
    series_uid: str,
    sop_uid: str,
    series_number: int,
    software_version: str,
) -> Dataset:
    """An RT Structure Set of the non-empty segments and the detections over ``volume``.

    Raises ``ValueError`` when there is nothing to write, when a mask does not fit the
    volume, or when the source has no Frame of Reference (contours need one).
    """
    check_mask_shapes(volume, findings)
    segments = non_empty_segments(findings)
    if not segments and not findings.detections:
        raise ValueError(f"no segment or detection to write for series {volume.series_uid}")
    source = volume.datasets[0]
    frame_of_reference = source.get("FrameOfReferenceUID")
    if not frame_of_reference:
        raise ValueError("the source images have no FrameOfReferenceUID to place contours in")
    algorithm = findings.algorithm
    ds = hd.SOPClass(
        study_instance_uid=volume.study_uid,
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=sop_uid,
        sop_class_uid=str(RTStructureSetStorage),
        instance_number=1,
        modality="RTSTRUCT",
        manufacturer=algorithm.manufacturer,
        manufacturer_model_name=algorithm.name,
        software_versions=software_version,
        device_serial_number="0",
        series_description=f"AI structures ({algorithm.name})"[:64],
    )
    ds.copy_patient_and_study_information(source)
    copy_required_source_attributes(source, ds)
    ds.OperatorsName = ""
    # Frame of Reference module (in the IOD since DICOM 2020): the source's frame.
    ds.FrameOfReferenceUID = str(frame_of_reference)
    ds.PositionReferenceIndicator = source.get("PositionReferenceIndicator", "")
    ds.StructureSetLabel = "AI"
    ds.StructureSetName = algorithm.name[:64]
    ds.StructureSetDescription = f"Automatic structures by {algorithm.name} {algorithm.version}"
    now = datetime.datetime.now()
    ds.StructureSetDate = now.strftime("%Y%m%d")
    ds.StructureSetTime = now.strftime("%H%M%S")
    ds.ReferencedFrameOfReferenceSequence = DicomSequence(
        [_referenced_frame_of_reference(volume, str(frame_of_reference))]
    )
    ds.ContributingEquipmentSequence = [equipment(algorithm)]

    wanted = [(s.color, s.property_type) for s in segments]
    wanted += [(None, d.finding_type) for d in findings.detections]
    colors = iter(segment_rgb(wanted))
    rois = [
        _Roi(s.label, "ORGAN" if s.is_anatomy else "", next(colors), _segment_contours(volume, s))
        for s in segments
    ]
    rois += [
        _Roi(d.label, "", next(colors), [_detection_contour(volume, d)])
        for d in findings.detections
    ]
    ds.StructureSetROISequence = DicomSequence()
    ds.ROIContourSequence = DicomSequence()
    ds.RTROIObservationsSequence = DicomSequence()
    generation = f"{algorithm.name} {algorithm.version}"[:64]
    for number, structure in enumerate(rois, start=1):
        label, contours = structure.label, structure.contours
        roi = Dataset()
        roi.ROINumber = number
        roi.ReferencedFrameOfReferenceUID = str(frame_of_reference)
        roi.ROIName = label[:64]
        roi.ROIGenerationAlgorithm = "AUTOMATIC"
        roi.ROIGenerationDescription = generation
        ds.StructureSetROISequence.append(roi)
        item = Dataset()
        item.ROIDisplayColor = list(structure.color)
        for index, contour in enumerate(contours, start=1):
            contour.ContourNumber = index
        item.ContourSequence = DicomSequence(contours)
        item.ReferencedROINumber = number
        ds.ROIContourSequence.append(item)
        observation = Dataset()
        observation.ObservationNumber = number
        observation.ReferencedROINumber = number
        observation.ROIObservationLabel = label[:16]
        observation.RTROIInterpretedType = structure.interpreted_type
        observation.ROIInterpreter = ""
        ds.RTROIObservationsSequence.append(observation)
    logger.info(
        "built RTSTRUCT %s for series %s: %d ROI(s), %d contour(s)",
        sop_uid,
        volume.series_uid,
        len(rois),
        sum(len(structure.contours) for structure in rois),
    )
    return ds


def _referenced_frame_of_reference(volume: Volume, frame_of_reference: str) -> Dataset:
    """The frame, study, series and every source image the contours may lie on."""
    images = DicomSequence([_image_reference(ds) for ds in volume.datasets])
    series = Dataset()
    series.SeriesInstanceUID = volume.series_uid
    series.ContourImageSequence = images
    study = Dataset()
    study.ReferencedSOPClassUID = STUDY_COMPONENT_SOP_CLASS
    study.ReferencedSOPInstanceUID = volume.study_uid
    study.RTReferencedSeriesSequence = DicomSequence([series])
    item = Dataset()
    item.FrameOfReferenceUID = frame_of_reference
    item.RTReferencedStudySequence = DicomSequence([study])
    return item


def _image_reference(source: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = str(source.SOPClassUID)
    item.ReferencedSOPInstanceUID = str(source.SOPInstanceUID)
    return item


def _contour(source: Dataset, points_mm: npt.NDArray[np.float64]) -> Dataset:
    """One CLOSED_PLANAR contour on ``source``'s plane (the first point is not repeated)."""
    item = Dataset()
    item.ContourImageSequence = DicomSequence([_image_reference(source)])
    item.ContourGeometricType = "CLOSED_PLANAR"
    item.NumberOfContourPoints = len(points_mm)
    # mm to a thousandth is far below a pixel, and keeps each DS value short.
    item.ContourData = (np.round(points_mm.reshape(-1), 3) + 0.0).tolist()
    return item


def trace_slice(plane: npt.NDArray[np.bool_]) -> list[npt.NDArray[np.float64]]:
    """Every boundary of a 2D mask (islands and holes) as closed (row, col) polygons.

    The first point of each is not repeated at its end; the even-odd fill of all of them is
    the mask (``rasterize_contours``).
    """
    rows, cols = np.nonzero(plane.any(axis=1))[0], np.nonzero(plane.any(axis=0))[0]
    if not len(rows):
        return []
    # Trace only the mask's bounding box (padded, so contours touching it close).
    top, left = int(rows[0]), int(cols[0])
    box = plane[top : int(rows[-1]) + 1, left : int(cols[-1]) + 1]
    padded = np.pad(box, 1).astype(np.float32)
    offset = np.array([top - 1.0, left - 1.0])
    polygons = []
    for contour in measure.find_contours(padded, 0.5):  # type: ignore[no-untyped-call]
        outline = _without_straight_runs(contour[:-1] if _closed(contour) else contour)
        if len(outline) >= 3:
            polygons.append(outline + offset)
    return polygons


def _closed(contour: npt.NDArray[np.float64]) -> bool:
    return len(contour) > 1 and bool(np.allclose(contour[0], contour[-1]))


def _without_straight_runs(ring: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """The closed polygon ``ring`` without the points inside straight runs (same shape).

    A traced pixel boundary has a point at every pixel edge; those between two collinear
    neighbours carry nothing and make up most of the points.
    """
    before = ring - np.roll(ring, 1, axis=0)
    after = np.roll(ring, -1, axis=0) - ring
    cross = before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]
    return ring[np.abs(cross) > 1e-9]


def _segment_contours(volume: Volume, segment: Segment) -> list[Dataset]:
    """The segment's contours on every slice it covers, in slice order."""
    contours = []
    for k in np.flatnonzero(segment.mask.reshape(segment.mask.shape[0], -1).any(axis=1)):
        for polygon in trace_slice(segment.mask[k]):
            contours.append(_contour(volume.datasets[k], _to_patient(volume, int(k), polygon)))
    return contours


def _to_patient(
    volume: Volume, k: int, polygon: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """(row, col) points on slice ``k`` -> (n, 3) patient LPS millimetres."""
    index = np.column_stack(
        [np.full(len(polygon), float(k)), polygon[:, 0], polygon[:, 1], np.ones(len(polygon))]
    )
    return (index @ volume.affine.T)[:, :3]


def _detection_contour(volume: Volume, detection: Detection) -> Dataset:
    """A circle of the detection's longest diameter around its centre, on its centre slice."""
    centre = np.linalg.solve(volume.affine, np.append(detection.centre_mm, 1.0))
    k = int(np.clip(round(float(centre[0])), 0, volume.voxels.shape[0] - 1))
    _, row_spacing, col_spacing = volume.spacing
    radius_mm = max(
        detection.longest_diameter_mm / 2, MIN_CIRCLE_RADIUS_PX * min(row_spacing, col_spacing)
    )
    angles = np.linspace(0.0, 2 * math.pi, CIRCLE_POINTS, endpoint=False)
    polygon = np.column_stack(
        [
            centre[1] + radius_mm / row_spacing * np.sin(angles),
            centre[2] + radius_mm / col_spacing * np.cos(angles),
        ]
    )
    return _contour(volume.datasets[k], _to_patient(volume, k, polygon))


def rasterize_contours(volume: Volume, roi_contours: Dataset) -> npt.NDArray[np.bool_]:
    """The mask an ROI Contour Sequence item draws on ``volume``'s grid (even-odd rule).

    Each contour is placed on the source slice its Contour Image Sequence references and
    filled at the pixel centres; contours on one slice combine by exclusive or.
    """
    slices = {str(ds.SOPInstanceUID): k for k, ds in enumerate(volume.datasets)}
    inverse = np.linalg.inv(volume.affine)
    mask = np.zeros(volume.voxels.shape, dtype=np.bool_)
    rows, cols = volume.voxels.shape[1:]
    for contour in roi_contours.get("ContourSequence", []):
        k = slices[str(contour.ContourImageSequence[0].ReferencedSOPInstanceUID)]
        points = np.asarray([float(v) for v in contour.ContourData]).reshape(-1, 3)
        index = np.column_stack([points, np.ones(len(points))]) @ inverse.T
        filled = np.zeros((rows, cols), dtype=np.bool_)
        rr, cc = draw.polygon(  # type: ignore[no-untyped-call]
            index[:, 1], index[:, 2], shape=(rows, cols)
        )
        filled[rr, cc] = True
        mask[k] ^= filled
    return mask
