"""Annotations read onto an image volume's grid: structures (masks) and lesions (points).

The same readers serve the reference annotations (SEG, RTSTRUCT, TID 1500 SR written by
anyone) and the pipelines' own SEG and SR, so predictions are judged from what the PACS
receives, not from in-memory values.

- SEG (binary, fractional, labelmap): highdicom's ``Segmentation.get_volume``, resampled
  (nearest voxel) onto the image grid through both affines; fractional >= 0.5 is inside.
- RTSTRUCT: each closed planar contour is mapped to the image's voxel indices and filled
  on its slice with ``skimage.draw.polygon`` (contours of one ROI on one slice are XORed,
  so an inner contour is a hole).
- TID 1500 SR: each measurement group with an image region (2D on a referenced image, or
  3D) is a lesion: its centre (the region's centroid), its diameter (the "Long Axis" /
  "Diameter" measurement, else the region's extent), its class (the finding type) and
  its score (a "Score" measurement, else 1). Groups that share a tracking UID are one
  lesion (our SR writes a where-group and a measured-group per finding).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from scipy import ndimage
from skimage.draw import polygon

from pipelines.volume import Volume

SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
RTSTRUCT_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
SR_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR
        "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
        "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
        "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR
    }
)
ANNOTATION_CLASSES = frozenset({SEG_CLASS, RTSTRUCT_CLASS, *SR_CLASSES})

Mask = npt.NDArray[np.bool_]
_SIZE_CONCEPTS = {("G-A193", "SRT"), ("103339001", "SCT"), ("81827009", "SCT"), ("M-02550", "SRT")}
_SCORE = (codes.SCT.Score.value, codes.SCT.Score.scheme_designator)


class AnnotationError(ValueError):
    """An annotation object that cannot be read onto the image (with the reason)."""


@dataclass(frozen=True)
class Lesion:
    """One annotated or detected lesion: centre (LPS mm), diameter (mm), class, score."""

    centre_mm: tuple[float, float, float]
    diameter_mm: float
    label: str
    score: float = 1.0


@dataclass
class Annotations:
    """Everything read for one image series: masks by structure name, and lesions."""

    structures: dict[str, Mask]
    lesions: list[Lesion]

    def add_structure(self, name: str, mask: Mask) -> None:
        previous = self.structures.get(name)
        self.structures[name] = mask if previous is None else previous | mask


def read_annotations(datasets: list[Dataset], volume: Volume) -> Annotations:
    """All SEG, RTSTRUCT and SR content of ``datasets`` on ``volume``'s grid."""
    result = Annotations({}, [])
    images = {str(ds.SOPInstanceUID): ds for ds in volume.datasets}
    for ds in datasets:
        sop_class = str(ds.SOPClassUID)
        if sop_class == SEG_CLASS:
            for name, mask in seg_masks(ds, volume).items():
                result.add_structure(name, mask)
        elif sop_class == RTSTRUCT_CLASS:
            for name, mask in rtstruct_masks(ds, volume).items():
                result.add_structure(name, mask)
        elif sop_class in SR_CLASSES:
            result.lesions.extend(sr_lesions(ds, images))
    return result


def seg_masks(ds: Dataset, volume: Volume) -> dict[str, Mask]:
    """Each segment of a SEG, by its label, resampled onto ``volume``'s grid."""
    if str(ds.get("FrameOfReferenceUID", "")) != str(
        volume.datasets[0].get("FrameOfReferenceUID", "")
    ):
        raise AnnotationError(
            f"SEG {ds.SOPInstanceUID} is in another frame of reference than series "
            f"{volume.series_uid}"
        )
    seg = hd.seg.Segmentation.from_dataset(ds, copy=False)
    masks: dict[str, Mask] = {}
    for number in seg.segment_numbers:
        label = str(seg.get_segment_description(number).segment_label)
        try:
            source = seg.get_volume(segment_numbers=[number], combine_segments=False)
        except (RuntimeError, ValueError) as exc:
            raise AnnotationError(f"SEG {ds.SOPInstanceUID}: {exc}") from exc
        array = np.asarray(source.array, dtype=np.float32)[..., 0]
        mask = _resample(array, np.asarray(source.affine), volume) >= 0.5
        masks[label] = masks.get(label, np.zeros_like(mask)) | mask
    return masks


def _resample(
    array: npt.NDArray[np.float32], affine: npt.NDArray[np.float64], volume: Volume
) -> npt.NDArray[np.float32]:
    """``array`` (indexed through ``affine``) sampled at ``volume``'s voxel centres."""
    # index in ``array`` = inv(affine) @ volume.affine @ index in the volume
    mapping = np.linalg.inv(affine) @ volume.affine
    resampled: npt.NDArray[np.float32] = ndimage.affine_transform(
        array,
        mapping[:3, :3],
        offset=mapping[:3, 3],
        output_shape=volume.voxels.shape,
        order=0,
        mode="constant",
        cval=0.0,
    )
    return resampled


def rtstruct_masks(ds: Dataset, volume: Volume) -> dict[str, Mask]:
    """Each ROI of an RTSTRUCT with closed planar contours, by its name, on the grid."""
    names = {int(roi.ROINumber): str(roi.ROIName) for roi in ds.get("StructureSetROISequence", [])}
    to_index = np.linalg.inv(volume.affine)
    shape = volume.voxels.shape
    masks: dict[str, Mask] = {}
    for roi in ds.get("ROIContourSequence", []):
        number = int(roi.ReferencedROINumber)
        mask = np.zeros(shape, dtype=bool)
        for contour in roi.get("ContourSequence", []):
            if str(contour.get("ContourGeometricType", "")) not in ("CLOSED_PLANAR", ""):
                continue
            points = np.asarray(contour.ContourData, dtype=np.float64).reshape(-1, 3)
            index = (to_index[:3, :3] @ points.T).T + to_index[:3, 3]
            slices = np.rint(index[:, 0])
            if np.ptp(index[:, 0]) > 0.5 or not 0 <= slices[0] < shape[0]:
                continue  # not on one of the image's slices
            rows, cols = polygon(index[:, 1], index[:, 2], shape=shape[1:])  # type: ignore[no-untyped-call]
            plane = np.zeros(shape[1:], dtype=bool)
            plane[rows, cols] = True
            mask[int(slices[0])] ^= plane
        name = names.get(number, f"ROI {number}")
        masks[name] = masks.get(name, np.zeros(shape, dtype=bool)) | mask
    return masks


def sr_lesions(ds: Dataset, images: dict[str, Dataset]) -> list[Lesion]:
    """The lesions of a TID 1500 SR (see the module's docstring)."""
    try:
        sr = _as_sr(ds)
    except (ValueError, AttributeError) as exc:
        raise AnnotationError(f"SR {ds.SOPInstanceUID} is not a readable TID 1500: {exc}") from exc
    content = cast(hd.sr.MeasurementReport, sr.content)
    groups = [
        *content.get_planar_roi_measurement_groups(),
        *content.get_volumetric_roi_measurement_groups(),
    ]
    merged: dict[str, dict[str, object]] = {}
    for number, group in enumerate(groups):
        region = _region_points(group, images)
        if region is None:
            continue
        key = str(group.tracking_uid) if group.tracking_uid else f"group {number}"
        entry = merged.setdefault(key, {"points": region, "size": None, "score": None})
        finding = group.finding_type
        if finding is not None:
            entry["label"] = str(finding.meaning)
        for measurement in group.get_measurements():
            concept = (measurement.name.value, measurement.name.scheme_designator)
            if concept in _SIZE_CONCEPTS:
                entry["size"] = float(measurement.value)
            elif concept == _SCORE:
                entry["score"] = float(measurement.value)
    lesions = []
    for entry in merged.values():
        points = np.asarray(entry["points"], dtype=np.float64)
        extent = float(np.ptp(points, axis=0).max()) if len(points) > 1 else 0.0
        size = entry["size"] if entry["size"] is not None else extent
        score = entry["score"] if entry["score"] is not None else 1.0
        centre = points.mean(axis=0)
        lesions.append(
            Lesion(
                centre_mm=(float(centre[0]), float(centre[1]), float(centre[2])),
                diameter_mm=float(size),  # type: ignore[arg-type]
                label=str(entry.get("label", "Finding")),
                score=min(1.0, max(0.0, float(score))),  # type: ignore[arg-type]
            )
        )
    return lesions


def _as_sr(ds: Dataset) -> hd.sr.ComprehensiveSR | hd.sr.Comprehensive3DSR | hd.sr.EnhancedSR:
    sop_class = str(ds.SOPClassUID)
    if sop_class == "1.2.840.10008.5.1.4.1.1.88.34":
        return hd.sr.Comprehensive3DSR.from_dataset(ds, copy=False)
    if sop_class == "1.2.840.10008.5.1.4.1.1.88.22":
        return cast(hd.sr.EnhancedSR, hd.sr.EnhancedSR.from_dataset(ds, copy=False))
    return hd.sr.ComprehensiveSR.from_dataset(ds, copy=False)


def _region_points(
    group: object,
    images: dict[str, Dataset],
) -> npt.NDArray[np.float64] | None:
    """The group's region in patient mm, or None (no region, or on an image not here)."""
    roi = getattr(group, "roi", None)
    if roi is None:
        return None
    data = np.asarray(roi.value, dtype=np.float64)
    if isinstance(roi, hd.sr.Scoord3DContentItem):
        return data.reshape(-1, 3)
    if not isinstance(roi, hd.sr.ScoordContentItem):
        return None
    references = [item for item in roi.ContentSequence if "ReferencedSOPSequence" in item]
    if not references:
        return None
    uid = str(references[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
    image = images.get(uid)
    if image is None:
        return None
    return image_points_mm(image, data.reshape(-1, 2))


def image_points_mm(image: Dataset, points: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Patient mm of DICOM image coordinates (column, row; pixel centres at +0.5)."""
    orientation = np.asarray(image.ImageOrientationPatient, dtype=np.float64)
    row_spacing, col_spacing = (float(v) for v in image.PixelSpacing)
    origin = np.asarray(image.ImagePositionPatient, dtype=np.float64)
    columns, rows = points[:, 0] - 0.5, points[:, 1] - 0.5
    result: npt.NDArray[np.float64] = (
        origin
        + np.outer(columns * col_spacing, orientation[:3])
        + np.outer(rows * row_spacing, orientation[3:])
    )
    return result
