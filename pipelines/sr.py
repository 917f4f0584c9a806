"""Findings -> one TID 1500 Measurement Report (Comprehensive 3D SR) per job.

Structure follows the established writers (dcmqi, highdicom): root container "Imaging
Measurement Report" (DCM 126000, TID 1500), language, observer context, "Procedure
reported", then one "Measurement Group" (DCM 125007) per reported thing:
- per detection: TID 1411 with its centre as an SCOORD3D POINT ("Volume Surface") in the
  source frame of reference, finding type and site, long axis (mm), volume (mm3) and the
  detector's score (unitless "1");
- per segment of a SEG: TID 1411 referencing the SEG instance and segment number
  ("Referenced Segment"), with its volume (mL) and, on CT, mean attenuation (HU);
- per classification: TID 1501 with the class as a qualitative evaluation
  ("Classification" = class) and its probability;
- per algorithm and series where it found nothing: TID 1501 whose Finding is "Clinical
  finding absent", with the images it looked at, so "ran, found nothing" differs from "never ran".
Every group names its algorithm (TID 4019); every algorithm is a device observer and a
Contributing Equipment item (IHE AI Results). All source images and SEGs are listed as
evidence (Current Requested Procedure Evidence Sequence).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from pipelines.findings import Algorithm, Classification, Detection, Findings, Segment
from pipelines.measurements import measure_segment
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
CLASSIFICATION_PROBABILITY = codes.DCM.Probability
#: Concept name of a classification's qualitative evaluation (the value is the class).
CLASSIFICATION = Code("278201002", "SCT", "Classification")
UNITLESS = codes.UCUM.NoUnits
MILLILITER = Code("ml", "UCUM", "milliliter")
#: "Procedure reported" per source modality (LOINC radiology playbook codes).
PROCEDURES: dict[str, Code] = {
    "CT": Code("25045-6", "LN", "CT unspecified body region"),
    "MR": Code("25056-3", "LN", "MR unspecified body region"),
}
PROCEDURES_BY_BODY_PART: dict[tuple[str, str], Code] = {
    ("CT", "CHEST"): Code("24627-2", "LN", "CT Chest"),
}
IMAGING_PROCEDURE = Code("363679005", "SCT", "Imaging")

SeriesResult = tuple[Volume, Findings, Dataset | None]


@dataclass(frozen=True)
class _Context:
    """What every group of one (series, algorithm) result needs."""

    volume: Volume
    findings: Findings
    seg: Dataset | None
    sop_uid: str
    algorithm_id: hd.sr.AlgorithmIdentification

    @property
    def where(self) -> str:
        number = self.volume.datasets[0].get("SeriesNumber")
        series = f"series {number}" if number not in (None, "") else self.volume.series_uid
        return f"{self.findings.algorithm.name}, {series}"

    def tracking(self, identifier: str, *key: str) -> hd.sr.TrackingIdentifier:
        uid = derive_uid(
            "sr-tracking", self.sop_uid, self.volume.series_uid, self.findings.algorithm.name, *key
        )
        return hd.sr.TrackingIdentifier(uid=uid, identifier=f"{identifier} ({self.where})")


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

    ``sources`` are the processed source images (all become evidence); each result is a
    volume, what one pipeline found in it, and the SEG written for it (or None when the
    pipeline made no segments). Raises ``ValueError`` when there is nothing to report on,
    when the sources span several studies, or when segments come without their SEG.
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
            observer_device_context=_device_observer(algorithms[0])
        ),
        procedure_reported=_procedures(results),
        imaging_measurements=groups,
        language_of_content_item_and_descendants=hd.sr.LanguageOfContentItemAndDescendants(
            hd.sr.CodedConcept("en", "RFC5646", "English")
        ),
    )
    _add_device_observers(report, algorithms[1:])
    segs = [seg for _, _, seg in results if seg is not None]
    sr = hd.sr.Comprehensive3DSR(
        evidence=[*sources, *segs],
        content=report,
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer=algorithms[0].manufacturer,
        manufacturer_model_name="pacs-annotator",
        software_versions=software_version,
        series_description="AI findings (TID 1500)",
        is_complete=True,
        is_final=False,  # machine output, not verified by a physician
        contributing_equipment=[
            _equipment(algorithm, software_version) for algorithm in algorithms
        ],
    )
    copy_required_source_attributes(sources[0], sr)
    logger.info(
        "built SR %s: %d measurement group(s) from %d result(s)", sop_uid, len(groups), len(results)
    )
    return sr


_Group = (
    hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
    | hd.sr.MeasurementsAndQualitativeEvaluations
)


def _groups(result: SeriesResult, sop_uid: str) -> Iterator[_Group]:
    volume, findings, seg = result
    algorithm = findings.algorithm
    context = _Context(
        volume=volume,
        findings=findings,
        seg=seg,
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
            yield _segment_group(context, seg, number, segment)
    for number, classification in enumerate(findings.classifications, start=1):
        yield _classification_group(context, number, classification)
    if findings.is_empty:
        yield _no_finding_group(context)


def _detection_group(
    context: _Context, number: int, detection: Detection
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    frame_of_reference = context.volume.datasets[0].get("FrameOfReferenceUID")
    if not frame_of_reference:
        raise ValueError(
            f"series {context.volume.series_uid} has no FrameOfReferenceUID: a detection "
            "cannot be located in patient coordinates"
        )
    centre = np.array([detection.centre_mm], dtype=np.float64)
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=context.tracking(detection.label, "detection", str(number)),
        referenced_volume_surface=hd.sr.VolumeSurface(
            graphic_type=hd.sr.GraphicTypeValues3D.POINT,
            graphic_data=centre,
            frame_of_reference_uid=str(frame_of_reference),
            source_series=hd.sr.SourceSeriesForSegmentation(context.volume.series_uid),
        ),
        finding_type=detection.finding_type,
        finding_category=codes.SCT.MorphologicallyAbnormalStructure,
        finding_sites=(
            [hd.sr.FindingSite(detection.finding_site)] if detection.finding_site else None
        ),
        algorithm_id=context.algorithm_id,
        measurements=[
            hd.sr.Measurement(
                name=codes.SCT.LongAxis,
                value=detection.longest_diameter_mm,
                unit=codes.UCUM.Millimeter,
            ),
            hd.sr.Measurement(
                name=codes.SCT.Volume,
                value=detection.volume_mm3,
                unit=codes.UCUM.CubicMillimeter,
            ),
            hd.sr.Measurement(
                name=DETECTION_SCORE,
                value=detection.score,
                unit=UNITLESS,
            ),
        ],
    )


def _segment_group(
    context: _Context, seg: Dataset, number: int, segment: Segment
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    measured = measure_segment(context.volume, segment)
    measurements = [
        hd.sr.Measurement(
            name=codes.SCT.Volume,
            value=measured.volume_ml,
            unit=MILLILITER,
            method=codes.DCM.SumOfSegmentedVoxelMethodForVolume,
        )
    ]
    if measured.mean_hu is not None:
        measurements.append(
            hd.sr.Measurement(
                name=codes.DCM.AttenuationCoefficient,
                value=measured.mean_hu,
                unit=codes.UCUM.HounsfieldUnit,
                derivation=codes.SCT.Mean,
            )
        )
    # The SEG's own Tracking UID for this segment: one ROI, one identity across objects.
    item = seg.SegmentSequence[number - 1]
    tracking_uid = str(item.get("TrackingUID", "")) or derive_uid(
        "sr-tracking", context.sop_uid, str(seg.SOPInstanceUID), str(number)
    )
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=tracking_uid, identifier=f"{segment.label} ({context.where})"
        ),
        referenced_segment=hd.sr.ReferencedSegment(
            sop_class_uid=str(seg.SOPClassUID),
            sop_instance_uid=str(seg.SOPInstanceUID),
            segment_number=number,
            source_series=hd.sr.SourceSeriesForSegmentation(context.volume.series_uid),
        ),
        finding_type=segment.property_type,
        finding_category=segment.category,
        algorithm_id=context.algorithm_id,
        measurements=measurements,
    )


def _classification_group(
    context: _Context, number: int, classification: Classification
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=context.tracking(
            f"Classification {number}", "classification", str(number)
        ),
        algorithm_id=context.algorithm_id,
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(name=CLASSIFICATION, value=classification.code)
        ],
        measurements=[
            hd.sr.Measurement(
                name=CLASSIFICATION_PROBABILITY,
                value=classification.probability,
                unit=UNITLESS,
            )
        ],
        source_images=_source_images(context.volume),
    )


def _no_finding_group(context: _Context) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=context.tracking("No findings", "no-finding"),
        algorithm_id=context.algorithm_id,
        finding_type=NO_FINDING,
        source_images=_source_images(context.volume),
    )


def _source_images(volume: Volume) -> list[hd.sr.SourceImageForMeasurementGroup]:
    return [
        hd.sr.SourceImageForMeasurementGroup(
            referenced_sop_class_uid=str(ds.SOPClassUID),
            referenced_sop_instance_uid=str(ds.SOPInstanceUID),
        )
        for ds in volume.datasets
    ]


def _procedures(results: Sequence[SeriesResult]) -> list[Code]:
    """The imaging procedure(s) the report is about, from the source series' headers."""
    found: dict[Code, None] = {}
    for volume, _, _ in results:
        modality = volume.modality
        body_part = str(volume.datasets[0].get("BodyPartExamined", "")).upper()
        code = PROCEDURES_BY_BODY_PART.get((modality, body_part)) or PROCEDURES.get(
            modality, IMAGING_PROCEDURE
        )
        found[code] = None
    return list(found)


def _distinct_algorithms(results: Sequence[SeriesResult]) -> list[Algorithm]:
    seen: dict[tuple[str, str, str], Algorithm] = {}
    for _, findings, _ in results:
        algorithm = findings.algorithm
        seen.setdefault((algorithm.name, algorithm.version, algorithm.manufacturer), algorithm)
    return list(seen.values())


def _device_observer(algorithm: Algorithm) -> hd.sr.ObserverContext:
    return hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=derive_uid("device-observer", algorithm.name, algorithm.version),
            name=algorithm.name,
            manufacturer_name=algorithm.manufacturer,
            model_name=f"{algorithm.name} {algorithm.version}",
        ),
    )


def _add_device_observers(report: hd.sr.MeasurementReport, algorithms: Sequence[Algorithm]) -> None:
    """TID 1001 allows several observers: one device per further algorithm of the job.

    They go right after the existing observer context items, before "Procedure reported".
    """
    if not algorithms:
        return
    content = report[0].ContentSequence
    position = max(
        index for index, item in enumerate(content) if item.RelationshipType == "HAS OBS CONTEXT"
    )
    extra = [item for algorithm in algorithms for item in _device_observer(algorithm)]
    for offset, item in enumerate(extra, start=1):
        content.insert(position + offset, item)


def _equipment(algorithm: Algorithm, software_version: str) -> hd.ContributingEquipment:
    return hd.ContributingEquipment(
        manufacturer=algorithm.manufacturer,
        purpose_of_reference=PROCESSING_PURPOSE,
        manufacturer_model_name=algorithm.name,
        software_versions=[software_version, algorithm.version],
        contribution_description=f"Automatic findings by {algorithm.name} {algorithm.version}",
    )
