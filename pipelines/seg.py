"""Findings -> DICOM Segmentation (binary), with IHE AI Results provenance.

The SEG is a new series in the source study whose frames sit exactly on the source
slices (highdicom derives the plane positions from ``source_images``, frame by frame for a
multi-frame source), so every viewer overlays it without resampling, also when the
pipeline ran on a resampled grid (a tilted or unevenly spaced stack).
"""

from __future__ import annotations

import logging
from typing import Any

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from pipelines.colors import segment_colors
from pipelines.findings import Findings, Segment
from pipelines.uids import derive_uid
from pipelines.volume import Volume

logger = logging.getLogger(__name__)

#: Purpose of reference of the algorithm in ContributingEquipmentSequence. DICOM CID 7005
#: has no "Processing Algorithm" concept; (DCM 109102, "Processing Equipment") is the
#: concept of that value set for equipment that processed the data to make this instance.
PROCESSING_PURPOSE = codes.DCM.ProcessingEquipment

#: Attributes of the Patient/Study level that the standard requires to travel together:
#: copied verbatim from the source when present so the SEG adds no dciodvfy errors.
_DEIDENTIFICATION_KEYWORDS = (
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "DeidentificationMethodCodeSequence",
)


#: The coding schemes for which PixelMed accepts a Coding Scheme Version in a code item.
_VERSIONED_SCHEMES = frozenset({"BI", "SCPECG", "BARI", "UCUM", "NCDR"})


class EmptySegmentationError(ValueError):
    """Every segment is empty: a SEG with no segments is not a valid DICOM object."""


def non_empty_segments(findings: Findings) -> tuple[Segment, ...]:
    """The segments that will appear in the SEG (empty masks are left out)."""
    return tuple(segment for segment in findings.segments if segment.mask.any())


def check_mask_shapes(volume: Volume, findings: Findings) -> None:
    """``ValueError`` naming the first segment whose mask is not on the volume's grid."""
    for segment in findings.segments:
        if segment.mask.shape != volume.voxels.shape:
            raise ValueError(
                f"segment {segment.label!r}: mask shape {segment.mask.shape} does not match "
                f"the volume {volume.voxels.shape}"
            )


def build_seg(
    volume: Volume,
    findings: Findings,
    *,
    series_uid: str,
    sop_uid: str,
    series_number: int,
    software_version: str,
) -> Dataset:
    """A binary DICOM SEG of the non-empty segments of ``findings`` over ``volume``.

    Empty segments are omitted (a viewer would list a structure it cannot show); the
    caller learns which via ``non_empty_segments``. Raises ``EmptySegmentationError``
    when nothing is left, and ``ValueError`` when a mask does not fit the volume.
    """
    check_mask_shapes(volume, findings)
    segments = non_empty_segments(findings)
    if not segments:
        raise EmptySegmentationError(
            f"all {len(findings.segments)} segments of {findings.algorithm.name} are empty "
            f"for series {volume.series_uid}: there is nothing to write"
        )
    algorithm = findings.algorithm
    identification = hd.AlgorithmIdentificationSequence(
        name=algorithm.name,
        version=algorithm.version,
        family=codes.cid7162.ArtificialIntelligence,
    )
    colors = segment_colors([(segment.color, segment.property_type) for segment in segments])
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=segment.label,
            segmented_property_category=segment.category,
            segmented_property_type=segment.property_type,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=identification,
            tracking_uid=_tracking_uid(sop_uid, number),
            tracking_id=segment.label,
            display_color=color,
        )
        for number, (segment, color) in enumerate(zip(segments, colors, strict=True), start=1)
    ]
    for description, segment in zip(descriptions, segments, strict=True):
        modifier = segment.property_modifier
        if modifier is not None:  # e.g. laterality: highdicom takes no modifier argument
            concept = hd.sr.CodedConcept(
                modifier.value, modifier.scheme_designator, modifier.meaning
            )
            property_type = description.SegmentedPropertyTypeCodeSequence[0]
            property_type.SegmentedPropertyTypeModifierCodeSequence = [concept]
    source_images, pixel_array = _frames_on_sources(volume, segments)
    equipment = hd.ContributingEquipment(
        manufacturer=algorithm.manufacturer,
        purpose_of_reference=PROCESSING_PURPOSE,
        manufacturer_model_name=algorithm.name,
        software_versions=algorithm.version,
        contribution_description=f"Automatic segmentation by {algorithm.name} {algorithm.version}",
    )
    seg = _Segmentation(
        source_images=source_images,
        pixel_array=pixel_array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer=algorithm.manufacturer,
        manufacturer_model_name=algorithm.name,
        software_versions=software_version,
        device_serial_number="0",
        series_description=f"AI segmentation ({algorithm.name})",
        content_label="SEGMENTATION",
        content_description=f"{algorithm.name} {algorithm.version}"[:64],
        content_creator_name=f"{algorithm.name}^",
        contributing_equipment=[equipment],
        omit_empty_frames=True,
    )
    copy_required_source_attributes(volume.datasets[0], seg)
    # PixelMed requires (General Series) Laterality unless Image Laterality is present,
    # and dciodvfy refuses an empty Laterality: state Image Laterality, as the source does,
    # else "U" (unpaired: a scan of the trunk or head, where laterality does not apply).
    source = volume.datasets[0]
    seg.ImageLaterality = source.get("ImageLaterality") or source.get("Laterality") or "U"
    logger.info(
        "built SEG %s for series %s: %d segment(s), %d frame(s)",
        sop_uid,
        volume.series_uid,
        len(segments),
        int(seg.NumberOfFrames),
    )
    return seg


class _Segmentation(hd.seg.Segmentation):  # type: ignore[misc]
    """highdicom's Segmentation, with a fast overlap check for boolean segment stacks.

    highdicom finds overlapping segments by summing the 4D array over its segment axis, a
    strided reduction to int64 that took 1.5-2.6 s for 3 segments of 300 slices of 512x512
    (most of the SEG's cost). For a boolean BINARY stack with segments numbered 1..n the
    same answer takes one AND per segment; every other input goes to highdicom unchanged.
    tests/unit/pipelines/test_seg.py checks the method still exists and answers the same.
    """

    @classmethod
    def _check_and_cast_pixel_array(
        cls,
        pixel_array: Any,
        segment_numbers: npt.NDArray[np.integer[Any]],
        segmentation_type: hd.seg.SegmentationTypeValues,
        dtype: type,
    ) -> tuple[Any, hd.seg.SegmentsOverlapValues]:
        numbered = np.array_equal(segment_numbers, np.arange(1, len(segment_numbers) + 1))
        if not (
            isinstance(pixel_array, np.ndarray)
            and pixel_array.dtype == np.bool_
            and pixel_array.ndim == 4
            and pixel_array.shape[-1] == len(segment_numbers)
            and segmentation_type == hd.seg.SegmentationTypeValues.BINARY
            and numbered
        ):
            return super()._check_and_cast_pixel_array(
                pixel_array, segment_numbers, segmentation_type, dtype
            )
        return pixel_array, _segments_overlap(pixel_array)


#: Slices checked for overlap at a time: two buffers of about this size, reused.
_OVERLAP_CHUNK_BYTES = 1 << 20


def _segments_overlap(stack: npt.NDArray[np.bool_]) -> hd.seg.SegmentsOverlapValues:
    """YES when a voxel is in two segments of the (slice, row, col, segment) stack, else NO.

    A few slices at a time into two small buffers used over and over: whole-volume
    temporaries (78 MB each for 300 slices of 512x512) are fresh memory the kernel maps page
    by page, which cost 0.2-0.4 s of a 300-slice job on a loaded machine; these stay cached.
    """
    masks = np.moveaxis(stack, -1, 0)  # (segment, slice, row, col)
    depth = masks.shape[1]
    per_slice = max(1, int(np.prod(masks.shape[2:], dtype=np.int64)))
    step = max(1, _OVERLAP_CHUNK_BYTES // per_slice)
    covered = np.empty((min(step, depth), *masks.shape[2:]), dtype=np.bool_)
    both = np.empty_like(covered)
    for start in range(0, depth, step):
        chunk = slice(start, min(start + step, depth))
        seen, shared = covered[: chunk.stop - start], both[: chunk.stop - start]
        np.copyto(seen, masks[0, chunk])
        for index in range(1, masks.shape[0]):
            mask = masks[index, chunk]
            np.logical_and(seen, mask, out=shared)
            if shared.any():
                return hd.seg.SegmentsOverlapValues.YES
            np.logical_or(seen, mask, out=seen)
    return hd.seg.SegmentsOverlapValues.NO


def _frames_on_sources(
    volume: Volume, segments: tuple[Segment, ...]
) -> tuple[list[Dataset], npt.NDArray[np.bool_]]:
    """The source images and the (frame, row, col, segment) array on their planes.

    Each segment is mapped back onto the source planes first (``Volume.plane_masks``:
    the identity for a regular stack, interpolation for a resampled one), so every SEG
    frame lies on a source image. Single-frame sources: one frame per source instance.
    A multi-frame source: one frame per frame of it (frames of other stacks stay empty and
    are omitted), so highdicom references each source frame by its number.
    """
    planes = [volume.plane_masks(segment.mask) for segment in segments]
    source = volume.multiframe_source
    if source is None:
        return [plane.dataset for plane in volume.planes], _segment_stack(planes)
    first = volume.planes[0]
    frames = np.zeros(
        (len(segments), int(source.NumberOfFrames), first.rows, first.cols), dtype=np.bool_
    )
    numbers = np.array([plane.frame for plane in volume.planes], dtype=np.int64) - 1
    for index, masks in enumerate(planes):
        frames[index, numbers] = masks
    return [source], np.moveaxis(frames, 0, -1)


def _segment_stack(masks: list[npt.NDArray[np.bool_]]) -> npt.NDArray[np.bool_]:
    """The (slice, row, col, segment) array highdicom encodes, each segment contiguous.

    A view of an axis-0 stack: every frame highdicom takes out (one slice of one segment)
    is one contiguous block, and stacking copies whole masks instead of interleaving them.
    """
    return np.moveaxis(np.stack(masks), 0, -1)


def copy_required_source_attributes(source: Dataset, target: Dataset) -> None:
    """Copy what must accompany copied patient attributes (e.g. de-identification method).

    A source with PatientIdentityRemoved=YES requires DeidentificationMethod or its code
    sequence; highdicom does not copy them, so without this a SEG or SR would fail dciodvfy.
    """
    for keyword in _DEIDENTIFICATION_KEYWORDS:
        if keyword in source and keyword not in target:
            setattr(target, keyword, source[keyword].value)
    # Codes copied from the source (e.g. a scanner's private procedure code, version "0")
    # keep their Coding Scheme Version only for the schemes PixelMed accepts one for: it
    # reports any other as an error, and dropping it loses nothing.
    for item in target.get("ProcedureCodeSequence", []):
        if "CodingSchemeVersion" in item and item.CodingSchemeDesignator not in _VERSIONED_SCHEMES:
            del item.CodingSchemeVersion
    if target.get("PatientIdentityRemoved") == "YES" and not (
        "DeidentificationMethod" in target or "DeidentificationMethodCodeSequence" in target
    ):
        target.DeidentificationMethod = "unknown (not stated by the source images)"


def _tracking_uid(sop_uid: str, segment_number: int) -> str:
    """Stable per segment of a SEG, so a re-run gives the same UIDs (the SR reuses them)."""
    return derive_uid("tracking", sop_uid, str(segment_number))
