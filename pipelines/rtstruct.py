"""Findings -> RT Structure Set: contours that radiotherapy systems and most viewers draw.

Many PACS viewers show an RTSTRUCT but not a SEG. Each non-empty segment becomes one ROI
whose contours are traced from its mask on every source slice it covers, and each detection
one ROI with a small closed contour (a circle of its longest diameter on the slice through
its centre). The ROI colours are the SEG's (``pipelines.colors``), so a structure looks the
same whichever object a viewer shows.

Contours lie on the source planes, never on the voxel grid: the mask is taken onto every
source image (``Volume.plane_masks``, which undoes the resampling of a tilted or unevenly
spaced stack) and traced there (``pipelines.contours.plane_outlines``), and each point is
placed with that image's own position, directions and pixel spacing. A plane gives one
CLOSED_PLANAR contour per boundary: the outline of every island and of every hole. Read
with the even-odd rule, the usual reading of nested contours (a point inside an odd number
of an ROI's contours on a plane is inside the ROI), they give the mask back:
``rasterize_contours`` does that, and the tests compare it with the mask. Each contour
references the image it lies on (Contour Image Sequence), with its Referenced Frame Number
when that image is a frame of a multi-frame instance (enhanced or legacy-converted CT/MR).

Contour Data is the bulk of the object (tens of thousands of points on a real CT): the
values are formatted here at once with a fixed three decimals (a thousandth of a mm, well
within the 16 characters of a DS) and handed to pydicom as the encoded value, rather than
created and formatted by pydicom one ``DSfloat`` at a time (see docs/benchmarks.md).

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
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag
from pydicom.uid import RTStructureSetStorage

from pipelines.colors import RGB, segment_rgb
from pipelines.contours import (
    fill_polygons,
    nearest_plane,
    patient_to_plane,
    plane_outlines,
)
from pipelines.findings import Detection, Findings, Segment
from pipelines.planes import Plane
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
#: Contour Data decimals: a thousandth of a mm is far below a pixel and keeps values short.
CONTOUR_DECIMALS = 3
#: Largest |coordinate| (mm) the fixed format keeps within DS's 16 characters.
_MAX_FIXED_MM = 1e10
_CONTOUR_DATA = Tag("ContourData")
_CONTOUR_FORMAT = f"%.{CONTOUR_DECIMALS}f"
#: A contour read back lies in its image's plane within this (mm; other systems round).
ON_PLANE_MM = 0.1


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
    """The frame, study, series and every source image the contours may lie on.

    One item per source instance; a multi-frame instance names the frames of this volume
    (Referenced Frame Number, required when a reference is not to all of its frames).
    """
    frames: dict[str, list[int]] = {}
    for plane in volume.planes:
        listed = frames.setdefault(str(plane.dataset.SOPInstanceUID), [])
        if plane.frame is not None:
            listed.append(plane.frame)
    images = DicomSequence()
    for ds in volume.datasets:
        numbers = sorted(frames.get(str(ds.SOPInstanceUID), []))
        images.append(_image_reference(ds, numbers))
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


def _image_reference(source: Dataset, frames: list[int] | None = None) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = str(source.SOPClassUID)
    item.ReferencedSOPInstanceUID = str(source.SOPInstanceUID)
    if frames:
        item.ReferencedFrameNumber = frames if len(frames) > 1 else frames[0]
    return item


def _contour(plane: Plane, points_mm: npt.NDArray[np.float64]) -> Dataset:
    """One CLOSED_PLANAR contour on ``plane``'s image or frame (first point not repeated)."""
    item = Dataset()
    frames = [plane.frame] if plane.frame is not None else None
    item.ContourImageSequence = DicomSequence([_image_reference(plane.dataset, frames)])
    item.ContourGeometricType = "CLOSED_PLANAR"
    item.NumberOfContourPoints = len(points_mm)
    item[_CONTOUR_DATA] = contour_data_element(points_mm)
    return item


def contour_data_element(points_mm: npt.NDArray[np.float64]) -> RawDataElement:
    """Contour Data of (n, 3) points, encoded at once as a DS value.

    Each coordinate is written with ``CONTOUR_DECIMALS`` fixed decimals ("-123.456": far
    within DS's 16 characters for any coordinate in a patient) and the values joined by
    backslashes, padded with a space to an even length as DS requires; pydicom writes the
    bytes as given and decodes them (to the same DSfloat values) when the element is read.
    """
    values = np.round(np.asarray(points_mm, dtype=np.float64).reshape(-1), CONTOUR_DECIMALS)
    if not np.isfinite(values).all() or np.abs(values).max() >= _MAX_FIXED_MM:
        raise ValueError("contour coordinates must be finite millimetres within a patient")
    values = values + 0.0  # no "-0.000"
    text = "\\".join([_CONTOUR_FORMAT % value for value in values.tolist()])
    encoded = text.encode("ascii")
    if len(encoded) % 2:
        encoded += b" "
    return RawDataElement(_CONTOUR_DATA, "DS", len(encoded), encoded, 0, False, True)


def _segment_contours(volume: Volume, segment: Segment) -> list[Dataset]:
    """The segment's contours on every source plane it covers, in plane order."""
    return [
        _contour(outline.plane, outline.points_mm)
        for outline in plane_outlines(volume, segment.mask)
    ]


def _detection_contour(volume: Volume, detection: Detection) -> Dataset:
    """A circle of the detection's longest diameter around its centre, on the source plane
    nearest the centre (the centre projected onto it), drawn with that plane's directions."""
    plane = volume.planes[nearest_plane(volume, detection.centre_mm)]
    centre = np.asarray(detection.centre_mm, dtype=np.float64)
    centre = centre - float((centre - plane.position) @ plane.normal) * plane.normal
    radius_mm = max(
        detection.longest_diameter_mm / 2,
        MIN_CIRCLE_RADIUS_PX * float(np.min(plane.pixel_spacing)),
    )
    angles = np.linspace(0.0, 2 * math.pi, CIRCLE_POINTS, endpoint=False)
    points = (
        centre
        + np.outer(radius_mm * np.cos(angles), plane.row_dir)
        + np.outer(radius_mm * np.sin(angles), plane.col_dir)
    )
    return _contour(plane, points)


def rasterize_contours(volume: Volume, roi_contours: Dataset) -> npt.NDArray[np.bool_]:
    """The mask an ROI Contour Sequence item draws on ``volume``'s source planes.

    The result has one 2D mask per source plane (``volume.planes``), the shape of
    ``volume.plane_masks``: on a regular volume the planes are the slices, so this is the
    voxel grid; on a resampled one compare it with ``volume.plane_masks(mask)``. Each
    contour is placed on the image (and frame) its Contour Image Sequence references, with
    that image's geometry, and filled at the pixel centres; contours on one plane combine
    by exclusive or (the even-odd rule). Raises ``ValueError`` for a contour that
    references an image of another volume or lies off its image's plane.
    """
    first = volume.planes[0]
    index = {
        _plane_key(plane.dataset.SOPInstanceUID, plane.frame): k
        for k, plane in enumerate(volume.planes)
    }
    on_plane: dict[int, list[npt.NDArray[np.float64]]] = {}
    for contour in roi_contours.get("ContourSequence", []):
        reference = contour.ContourImageSequence[0]
        frame = reference.get("ReferencedFrameNumber")
        key = _plane_key(reference.ReferencedSOPInstanceUID, None if frame is None else int(frame))
        if key not in index:
            raise ValueError(
                f"contour {contour.get('ContourNumber')} references an image not in the volume"
            )
        k = index[key]
        points = np.asarray(contour.ContourData, dtype=np.float64).reshape(-1, 3)
        rows_cols, distances = patient_to_plane(volume.planes[k], points)
        if np.abs(distances).max() > ON_PLANE_MM:
            raise ValueError(
                f"contour {contour.get('ContourNumber')} lies up to "
                f"{np.abs(distances).max():.2f} mm off the plane of the image it references"
            )
        on_plane.setdefault(k, []).append(rows_cols)
    mask = np.zeros((len(volume.planes), first.rows, first.cols), dtype=np.bool_)
    for k, polygons in on_plane.items():
        mask[k] = fill_polygons(polygons, (first.rows, first.cols))
    return mask


def _plane_key(sop_uid: object, frame: int | None) -> tuple[str, int | None]:
    return str(sop_uid), frame
