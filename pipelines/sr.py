"""Findings -> one TID 1500 Measurement Report (Comprehensive 3D SR) per job.

Written so that viewers draw it (OHIF, 3D Slicer QuantitativeReporting; IHE AI Results),
and so that independent readers (dciodvfy, PixelMed, dcmqi) find nothing wrong:
- root: "Imaging Measurement Report" (DCM 126000), language, one device observer (this
  service; each group names its algorithm with TID 4019), "Procedure reported", and an
  Image Library (TID 1600) listing every source image;
- per detection: a TID 1410 planar ROI group whose image region is an ELLIPSE on the key
  slice (the slice through the lesion's centre, where a lesion is widest), with that image
  referenced, then finding type and site, long axis (mm), volume (mm3) and the detector's
  score (unitless "1");
- per segment of a SEG: a TID 1411 volumetric group referencing the SEG segment, with the
  SEG's own tracking identifier and UID, its volume (mL) and, on CT, mean attenuation (HU);
  each measurement is also INFERRED FROM the segment's outline on its largest slice, so a
  viewer can show where it was measured;
- in the root's "Qualitative Evaluations" container: each classification ("Classification"
  = class) and, per algorithm and series where it found nothing, "Finding" = "Clinical
  finding absent" (so "ran, found nothing" differs from "never ran"), each followed by a
  comment naming the algorithm, the series and the probability.
Values are rounded to what the scanner resolves (``pipelines.measurements.round_to``).
Every algorithm is a Contributing Equipment item (IHE AI Results). All source images and
SEGs are listed as evidence (Current Requested Procedure Evidence Sequence).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from pipelines.findings import Algorithm, Detection, Findings, Segment
from pipelines.measurements import hu_resolution, measure_segment, round_to
from pipelines.regions import KeyImageRegion, detection_region, segment_region
from pipelines.seg import (
    PROCESSING_PURPOSE,
    copy_required_source_attributes,
    non_empty_segments,
)
from pipelines.uids import derive_uid
from pipelines.volume import Volume

logger = logging.getLogger(__name__)

#: Stated in a group when an algorithm ran on a series and reported nothing.
NO_FINDING = Code("373572006", "SCT", "Clinical finding absent")
#: The concept of a detection's score: a ranking in 0..1, not a calibrated probability.
DETECTION_SCORE = codes.SCT.Score
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")
#: Concept name of a classification's qualitative evaluation (the value is the class).
CLASSIFICATION = Code("278201002", "SCT", "Classification")
UNITLESS = codes.UCUM.NoUnits
#: Scores and probabilities are stated to two decimals (0.87), finer means nothing.
SCORE_DECIMALS = 2
MILLILITER = Code("ml", "UCUM", "milliliter")
#: "Procedure reported" per source modality (LOINC radiology playbook codes).
PROCEDURES: dict[str, Code] = {
    "CT": Code("25045-6", "LN", "CT unspecified body region"),
    "MR": Code("25056-3", "LN", "MR unspecified body region"),
}
#: An image library entry's concept (as highdicom and dcmqi write it).
SOURCE = Code("260753009", "SCT", "Source")
IMAGING_PROCEDURE = Code("363679005", "SCT", "Imaging")

SeriesResult = tuple[Volume, Findings, Dataset | None]


#: The device observer of every report: this service (each group names its algorithm).
SERVICE_NAME = "pacs-annotator"


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
    algorithms = _distinct_algorithms(results)
    groups = [group for result in results for group in _groups(result, sop_uid)]
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(
            observer_device_context=_device_observer(software_version)
        ),
        procedure_reported=_procedures(results),
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
    content.insert(measurements_at, _image_library(sources))
    if not groups:
        del content[measurements_at + 1]
    evaluations = _qualitative_evaluations(results)
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
        contributing_equipment=[_equipment(algorithm) for algorithm in algorithms],
    )
    copy_required_source_attributes(sources[0], sr)
    logger.info(
        "built SR %s: %d measurement group(s) from %d result(s)", sop_uid, len(groups), len(results)
    )
    return sr


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
        yield _detection_group(context, number, detection)
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
            yield from _segment_groups(context, seg, number, segment)


def _detection_group(
    context: _Context, number: int, detection: Detection
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    volume = context.volume
    region = detection_region(volume, detection)
    length_resolution = min(volume.spacing)
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=context.tracking(detection.label, "detection", str(number)),
        referenced_region=_image_region(region),
        finding_type=detection.finding_type,
        finding_category=codes.SCT.MorphologicallyAbnormalStructure,
        finding_sites=(
            [hd.sr.FindingSite(detection.finding_site)] if detection.finding_site else None
        ),
        algorithm_id=context.algorithm_id,
        measurements=[
            hd.sr.Measurement(
                name=codes.SCT.LongAxis,
                value=round_to(detection.longest_diameter_mm, length_resolution),
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
    )


def _segment_groups(
    context: _Context, seg: Dataset, number: int, segment: Segment
) -> tuple[
    hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations,
    hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations,
]:
    """The segment's volumetric group and its largest cross-section, one tracking identity.

    TID 1411 references the SEG segment (what 3D Slicer and dcmqi read); it may carry no
    image coordinates, so a TID 1410 group with the same tracking UID outlines the segment
    (its largest piece) on the slice where it is largest. Viewers that merge groups by
    tracking UID (OHIF) show that outline with the volume and mean HU.
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
    tracking = hd.sr.TrackingIdentifier(uid=str(item.TrackingUID), identifier=str(item.TrackingID))
    volumetric = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        referenced_segment=_referenced_segment(seg, number, volume.series_uid),
        finding_type=segment.property_type,
        finding_category=segment.category,
        algorithm_id=context.algorithm_id,
        measurements=measurements,
    )
    planar = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        referenced_region=_image_region(segment_region(volume, segment.mask)),
        finding_type=segment.property_type,
        finding_category=segment.category,
        algorithm_id=context.algorithm_id,
    )
    return volumetric, planar


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
        source_image=hd.sr.SourceImageForRegion(
            referenced_sop_class_uid=str(region.image.SOPClassUID),
            referenced_sop_instance_uid=str(region.image.SOPInstanceUID),
        ),
    )


def _image_library(sources: Sequence[Dataset]) -> hd.sr.ContainerContentItem:
    """TID 1600 Image Library: one group per series, sharing modality and frame of reference.

    The per-image descriptors (TID 1602) are optional; highdicom's ``ImageLibrary`` writes
    them for every image at about 20 ms each (6 s for a 300-slice series), so the image
    items here carry only their references, as viewers read them.
    """
    library = hd.sr.ContainerContentItem(
        name=codes.DCM.ImageLibrary, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    by_series: dict[str, list[Dataset]] = {}
    for ds in sources:
        by_series.setdefault(str(ds.SeriesInstanceUID), []).append(ds)
    groups = []
    for images in by_series.values():
        group = hd.sr.ContainerContentItem(
            name=codes.DCM.ImageLibraryGroup,
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
        first = images[0]
        context = hd.sr.RelationshipTypeValues.HAS_ACQ_CONTEXT
        descriptors: list[hd.sr.ContentItem] = []
        modality = _acquisition_modalities().get(str(first.get("Modality", "")))
        if modality is not None:  # the descriptors are optional; an odd modality goes without
            descriptors.append(
                hd.sr.CodeContentItem(
                    name=codes.DCM.Modality, value=modality, relationship_type=context
                )
            )
        if "FrameOfReferenceUID" in first:
            descriptors.append(
                hd.sr.UIDRefContentItem(
                    name=codes.DCM.FrameOfReferenceUID,
                    value=str(first.FrameOfReferenceUID),
                    relationship_type=context,
                )
            )
        entries = [
            hd.sr.ImageContentItem(
                name=SOURCE,
                referenced_sop_class_uid=str(ds.SOPClassUID),
                referenced_sop_instance_uid=str(ds.SOPInstanceUID),
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
            for ds in images
        ]
        group.ContentSequence = DicomSequence([*descriptors, *entries])
        groups.append(group)
    library.ContentSequence = DicomSequence(groups)
    return library


@functools.cache
def _acquisition_modalities() -> dict[str, Code]:
    """CID 29 "Acquisition Modality" by modality (CT -> "Computed Tomography")."""
    return {code.value: code for code in (getattr(codes.cid29, n) for n in codes.cid29.dir())}


def _placeholder_group() -> hd.sr.MeasurementsAndQualitativeEvaluations:
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(identifier="placeholder")
    )


def _qualitative_evaluations(results: Sequence[SeriesResult]) -> hd.sr.ContainerContentItem | None:
    """TID 1500's "Qualitative Evaluations": classifications, and what found nothing.

    These state something about a whole series, with no place on an image. They stay out
    of "Imaging Measurements", whose every group viewers expect to locate on an image (OHIF
    fails to load a report with a group it cannot place). Each class or absence is a CODE,
    followed by a TEXT naming the algorithm, the series and the probability.
    """
    items: list[hd.sr.CodeContentItem | hd.sr.TextContentItem] = []
    for volume, findings, _ in results:
        algorithm = findings.algorithm
        number = volume.datasets[0].get("SeriesNumber")
        series = f"series {number}" if number not in (None, "") else volume.series_uid
        where = f"{algorithm.name} {algorithm.version}, {series}"
        for classification in findings.classifications:
            items.append(_code_item(CLASSIFICATION, classification.code))
            probability = round(classification.probability, SCORE_DECIMALS)
            items.append(
                _text_item(f"{classification.code.meaning}: probability {probability} ({where})")
            )
        if findings.is_empty:
            items.append(_code_item(codes.DCM.Finding, NO_FINDING))
            items.append(_text_item(f"No findings ({where})"))
    if not items:
        return None
    container = hd.sr.ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    container.ContentSequence = DicomSequence(items)
    return container


def _code_item(name: Code, value: Code) -> hd.sr.CodeContentItem:
    return hd.sr.CodeContentItem(
        name=name, value=value, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )


def _text_item(text: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(
        name=codes.DCM.Comment, value=text, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )


def _procedures(results: Sequence[SeriesResult]) -> list[Code]:
    """The imaging procedure(s) the report is about, by modality.

    "Procedure reported" takes its codes from CID 100, which has no body-region codes for
    CT or MR ("CT Chest" is not in it; PixelMed reports it as an error).
    """
    found: dict[Code, None] = {}
    for volume, _, _ in results:
        found[PROCEDURES.get(volume.modality, IMAGING_PROCEDURE)] = None
    return list(found)


def _distinct_algorithms(results: Sequence[SeriesResult]) -> list[Algorithm]:
    seen: dict[tuple[str, str, str], Algorithm] = {}
    for _, findings, _ in results:
        algorithm = findings.algorithm
        seen.setdefault((algorithm.name, algorithm.version, algorithm.manufacturer), algorithm)
    return list(seen.values())


def _device_observer(software_version: str) -> hd.sr.ObserverContext:
    """This service as the one device observer; the algorithms are named per group."""
    return hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=derive_uid("device-observer", SERVICE_NAME),
            name=SERVICE_NAME,
            manufacturer_name=SERVICE_NAME,
            model_name=f"{SERVICE_NAME} {software_version}",
        ),
    )


def _equipment(algorithm: Algorithm) -> hd.ContributingEquipment:
    return hd.ContributingEquipment(
        manufacturer=algorithm.manufacturer,
        purpose_of_reference=PROCESSING_PURPOSE,
        manufacturer_model_name=algorithm.name,
        software_versions=algorithm.version,
        contribution_description=f"Automatic findings by {algorithm.name} {algorithm.version}",
    )
