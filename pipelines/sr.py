"""Findings -> one TID 1500 Measurement Report (Comprehensive 3D SR) per job.

This module writes the measurement groups; ``pipelines.sr_root`` the rest of the root.

Written so that viewers draw it (OHIF, 3D Slicer QuantitativeReporting; IHE AI Results),
and so that independent readers (dciodvfy, PixelMed, dcmqi) find nothing wrong:
- root: "Imaging Measurement Report" (DCM 126000), language, one device observer (this
  service; each group names its algorithm with TID 4019), "Procedure reported", and an
  Image Library (TID 1600) listing every source image;
- per detection: two TID 1410 planar ROI groups with one tracking identity, whose image
  region is the detection's box on its key slice (the slice through the lesion's centre,
  where a lesion is widest) with that image referenced: finding type and site, then its
  long axis (mm), volume (mm3) and the detector's score (unitless "1");
- per segment of a SEG: a TID 1411 volumetric group referencing the SEG segment, with the
  SEG's own tracking identifier and UID, its volume (mL) and, on CT, mean attenuation (HU),
  each INFERRED FROM the segment's outline on its largest slice (where viewers show it);
- in the root's "Qualitative Evaluations" container: each classification ("Classification"
  = class) and, per algorithm and series where it found nothing, "Finding" = "Clinical
  finding absent" (so "ran, found nothing" differs from "never ran"), each followed by a
  comment naming the algorithm, the series and the probability.
Values are rounded to what the scanner resolves (``pipelines.measurements.round_to``).
Every algorithm is a Contributing Equipment item (IHE AI Results). All source images and
SEGs are listed as evidence (Current Requested Procedure Evidence Sequence).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from pipelines.findings import Detection, Findings, Segment
from pipelines.measurements import hu_resolution, measure_segment, round_to
from pipelines.regions import KeyImageRegion, detection_region, segment_region
from pipelines.seg import (
    copy_required_source_attributes,
    non_empty_segments,
)
from pipelines.sr_root import (
    SCORE_DECIMALS,
    SERVICE_NAME,
    SeriesResult,
    device_observer,
    distinct_algorithms,
    equipment,
    image_library,
    procedures,
    qualitative_evaluations,
    text_item,
)
from pipelines.uids import derive_uid
from pipelines.volume import Volume

logger = logging.getLogger(__name__)

#: The concept of a detection's score: a ranking in 0..1, not a calibrated probability.
DETECTION_SCORE = codes.SCT.Score
UNITLESS = codes.UCUM.NoUnits
MILLILITER = Code("ml", "UCUM", "milliliter")


@dataclass(frozen=True)
class _Context:
    """What every group of one (series, algorithm) result needs."""

    volume: Volume
    findings: Findings
    sop_uid: str
    algorithm_id: hd.sr.AlgorithmIdentification

    def tracking(self, identifier: str, *key: str) -> hd.sr.TrackingIdentifier:
        uid = derive_uid(
            "sr-tracking", self.sop_uid, self.volume.series_uid, self.findings.algorithm.name, *key
        )
        return hd.sr.TrackingIdentifier(uid=uid, identifier=identifier)


def build_sr(
    sources: Sequence[Dataset],
    results: Sequence[SeriesResult],
    *,
    series_uid: str,
    sop_uid: str,
    series_number: int,
    software_version: str,
) -> Dataset:
    """A Comprehensive 3D SR (TID 1500) of every result of one job.

    ``sources`` are the processed source images (all become evidence and the image
    library); each result is a volume, what one pipeline found in it, and the SEG written
    for it (or None when the pipeline made no segments). Raises ``ValueError`` when there
    is nothing to report on, when the sources span several studies, or when segments come
    without their SEG.
    """
    if not results:
        raise ValueError("build_sr needs at least one (volume, findings, seg) result")
    if not sources:
        raise ValueError("build_sr needs the source images the results were made from")
    studies = {str(ds.StudyInstanceUID) for ds in sources}
    if len(studies) != 1:
        raise ValueError(f"sources span {len(studies)} studies; one SR covers one study")
    algorithms = distinct_algorithms(results)
    groups = [group for result in results for group in _groups(result, sop_uid)]
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(
            observer_device_context=device_observer(software_version)
        ),
        procedure_reported=procedures(results),
        # highdicom always writes "Imaging Measurements" with at least one group; TID 1500
        # needs it only when there is no other container. A report of classifications or
        # absences alone drops it again below (a group there without a place on an image
        # would stop viewers such as OHIF from loading the report).
        imaging_measurements=groups or [_placeholder_group()],
        language_of_content_item_and_descendants=hd.sr.LanguageOfContentItemAndDescendants(
            hd.sr.CodedConcept("en", "RFC5646", "English")
        ),
    )
    content = report[0].ContentSequence
    measurements_at = next(
        i
        for i, item in enumerate(content)
        if item.ConceptNameCodeSequence[0].CodeValue == codes.DCM.ImagingMeasurements.value
    )
    # The Image Library and the groups are added after highdicom's constructor, which
    # deep-copies and searches every item it is given (see _insert_after_construction).
    measurements = content[measurements_at]
    del content[measurements_at]
    evaluations = qualitative_evaluations(results)
    if evaluations is not None:
        content.append(evaluations)
    segs = [seg for _, _, seg in results if seg is not None]
    sr = hd.sr.Comprehensive3DSR(
        evidence=[*sources, *segs],
        content=report,
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer=SERVICE_NAME,
        manufacturer_model_name=SERVICE_NAME,
        software_versions=software_version,
        series_description="AI findings (TID 1500)",
        is_complete=True,
        is_final=False,  # machine output, not verified by a physician
        contributing_equipment=[equipment(algorithm) for algorithm in algorithms],
    )
    late = [image_library(sources), *([measurements] if groups else [])]
    _insert_after_construction(sr, measurements_at, late)
    copy_required_source_attributes(sources[0], sr)
    logger.info(
        "built SR %s: %d measurement group(s) from %d result(s)", sop_uid, len(groups), len(results)
    )
    return sr


def _insert_after_construction(
    sr: hd.sr.Comprehensive3DSR, at: int, items: Sequence[hd.sr.ContentItem]
) -> None:
    """Put the Image Library and the measurement groups into the built SR, at ``at``.

    highdicom's constructor deep-copies the content tree it is given, parses the copy
    again and searches every item for the images it references: about 0.5 s of a 300-slice
    report, nearly all of it for these two containers (one library item per source image;
    a dozen items per group). Handed to it afterwards, they are where TID 1500 has them
    and the evidence is the same: every source image and SEG is evidence whether an item
    references it or not, and each of these items references only those (the library the
    sources, the groups their volume's images and their SEG). They go into the dataset and
    into highdicom's parsed tree (``sr.content``) alike. tests/unit/pipelines/test_sr.py
    checks the SR equals the one built with the whole tree handed to highdicom.
    """
    parsed = sr.content[0].ContentSequence
    for offset, item in enumerate(items):
        sr.ContentSequence.insert(at + offset, item)
        if parsed is not sr.ContentSequence:
            parsed.insert(at + offset, item)


_Group = (
    hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
    | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
    | hd.sr.MeasurementsAndQualitativeEvaluations
)


def _groups(result: SeriesResult, sop_uid: str) -> Iterator[_Group]:
    volume, findings, seg = result
    algorithm = findings.algorithm
    context = _Context(
        volume=volume,
        findings=findings,
        sop_uid=sop_uid,
        algorithm_id=hd.sr.AlgorithmIdentification(name=algorithm.name, version=algorithm.version),
    )
    for number, detection in enumerate(findings.detections, start=1):
        yield from _detection_groups(context, number, detection)
    segments = non_empty_segments(findings)
    if segments and seg is None:
        raise ValueError(
            f"{algorithm.name} on series {volume.series_uid} has segments but no SEG to "
            "reference: write the SEG first"
        )
    if seg is not None:
        labels = [str(item.SegmentLabel) for item in seg.SegmentSequence]
        if labels != [segment.label for segment in segments]:
            raise ValueError(
                f"SEG {seg.SOPInstanceUID} has segments {labels}, not the non-empty "
                f"segments {[segment.label for segment in segments]} of {algorithm.name}"
            )
        for number, segment in enumerate(segments, start=1):
            yield _segment_group(context, seg, number, segment)


def _detection_groups(
    context: _Context, number: int, detection: Detection
) -> tuple[
    hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations,
    hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations,
]:
    """The detection's box on its key slice, then its measurements, one tracking identity.

    Two TID 1410 groups with the same tracking UID and region: the first states where and
    what the finding is, the second its long axis, volume and score. OHIF merges them into
    one measurement for display, and takes the first, a rectangle without numbers, into its
    measurement list (its rectangle reader needs each number tied to a region, which TID
    1410's measurements are not).
    """
    volume = context.volume
    region = detection_region(volume, detection)
    tracking = context.tracking(detection.label, "detection", str(number))
    common: dict[str, Any] = {
        "tracking_identifier": tracking,
        "finding_type": detection.finding_type,
        "finding_category": codes.SCT.MorphologicallyAbnormalStructure,
        "finding_sites": (
            [hd.sr.FindingSite(detection.finding_site)] if detection.finding_site else None
        ),
        "algorithm_id": context.algorithm_id,
    }
    where = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        referenced_region=_image_region(region), **common
    )
    where[0].ContentSequence.append(text_item(detection_summary(detection, volume)))
    measured = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        referenced_region=_image_region(region),
        measurements=[
            hd.sr.Measurement(
                name=codes.SCT.LongAxis,
                value=round_to(detection.longest_diameter_mm, min(volume.spacing)),
                unit=codes.UCUM.Millimeter,
            ),
            hd.sr.Measurement(
                name=codes.SCT.Volume,
                value=round_to(detection.volume_mm3, volume.voxel_volume_mm3),
                unit=codes.UCUM.CubicMillimeter,
            ),
            hd.sr.Measurement(
                name=DETECTION_SCORE,
                value=round(detection.score, SCORE_DECIMALS),
                unit=UNITLESS,
            ),
        ],
        **common,
    )
    return where, measured


def detection_summary(detection: Detection, volume: Volume) -> str:
    """One line a viewer can show as the finding's label (OHIF lists it by its comment)."""
    diameter = round_to(detection.longest_diameter_mm, min(volume.spacing))
    return f"{detection.label}: {diameter:g} mm, score {round(detection.score, SCORE_DECIMALS):g}"


def _segment_group(
    context: _Context, seg: Dataset, number: int, segment: Segment
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    """TID 1411 for one SEG segment: its volume and mean HU, and where they were measured.

    The group references the SEG segment (what 3D Slicer and dcmqi read) with the SEG's
    tracking identifier and UID. Each measurement is also INFERRED FROM the segment's
    outline (its largest piece) on the slice where it is largest (TID 300's image region),
    so a viewer can show where it is: OHIF draws that outline with the values, and fails to
    load a report with a group it cannot place on an image. highdicom's constructor does
    not take coordinates for an ROI group's measurements, so they are added after it.
    """
    volume = context.volume
    measured = measure_segment(volume, segment)
    measurements = [
        hd.sr.Measurement(
            name=codes.SCT.Volume,
            value=round_to(measured.volume_ml, volume.voxel_volume_mm3 / 1000.0),
            unit=MILLILITER,
            method=codes.DCM.SumOfSegmentedVoxelMethodForVolume,
        )
    ]
    if measured.mean_hu is not None:
        measurements.append(
            hd.sr.Measurement(
                name=codes.DCM.AttenuationCoefficient,
                value=round_to(measured.mean_hu, hu_resolution(volume)),
                unit=codes.UCUM.HounsfieldUnit,
                derivation=codes.SCT.Mean,
            )
        )
    # The SEG's own tracking identifier and UID: one ROI, one identity across objects.
    item = seg.SegmentSequence[number - 1]
    group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=str(item.TrackingUID), identifier=str(item.TrackingID)
        ),
        referenced_segment=_referenced_segment(seg, number, volume.series_uid),
        finding_type=segment.property_type,
        finding_category=segment.category,
        algorithm_id=context.algorithm_id,
        measurements=measurements,
    )
    region = segment_region(volume, segment.mask)
    for content_item in group[0].ContentSequence:
        if content_item.ValueType == "NUM":
            children = list(content_item.get("ContentSequence", []))
            content_item.ContentSequence = DicomSequence([*children, _coordinates(region)])
    return group


def _coordinates(region: KeyImageRegion) -> hd.sr.CoordinatesForMeasurement:
    return hd.sr.CoordinatesForMeasurement(
        graphic_type=hd.sr.GraphicTypeValues(region.graphic_type),
        graphic_data=region.points,
        source_image=_source_image_for_region(region),
    )


def _referenced_segment(seg: Dataset, number: int, series_uid: str) -> hd.sr.ReferencedSegment:
    referenced = hd.sr.ReferencedSegment(
        sop_class_uid=str(seg.SOPClassUID),
        sop_instance_uid=str(seg.SOPInstanceUID),
        segment_number=number,
        source_series=hd.sr.SourceSeriesForSegmentation(series_uid),
    )
    # TID 1411 names the concept "Source series for segmentation"; pydicom's code carries
    # another capitalisation, which PixelMed reports as a mismatch with the template.
    for item in referenced:
        concept = item.ConceptNameCodeSequence[0]
        if (concept.CodeValue, concept.CodingSchemeDesignator) == ("121232", "DCM"):
            concept.CodeMeaning = "Source series for segmentation"
    return referenced


def _image_region(region: KeyImageRegion) -> hd.sr.ImageRegion:
    return hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues(region.graphic_type),
        graphic_data=region.points,
        source_image=_source_image_for_region(region),
    )


def _source_image_for_region(region: KeyImageRegion) -> hd.sr.SourceImageForRegion:
    return hd.sr.SourceImageForRegion(
        referenced_sop_class_uid=str(region.image.SOPClassUID),
        referenced_sop_instance_uid=str(region.image.SOPInstanceUID),
    )


def _placeholder_group() -> hd.sr.MeasurementsAndQualitativeEvaluations:
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(identifier="placeholder")
    )
