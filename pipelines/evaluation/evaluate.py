"""Run the configured pipelines on studies with reference annotations, and score them.

The pipelines run through ``pipelines.runner.annotate_study``, the worker's own code path,
on each study's image files; the SEG and SR it produces are read back with the same
readers as the references (``pipelines.evaluation.references``) on the image series the
references annotate. Studies pair with their references by Study Instance UID; a study
without any reference is listed and not scored.

Detection metrics count only the studies whose references include an SR (a study
annotated with a SEG alone says nothing about lesions).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from pipelines.base import Pipeline
from pipelines.evaluation.metrics import (
    DetectionScore,
    Match,
    StructureScore,
    detection_score,
    match_lesions,
    structure_score,
)
from pipelines.evaluation.references import (
    ANNOTATION_CLASSES,
    SEG_CLASS,
    SR_CLASSES,
    AnnotationError,
    Annotations,
    Lesion,
    read_annotations,
)
from pipelines.routing import RoutingRule
from pipelines.runner import annotate_study
from pipelines.volume import Volume, load_series, scan_files

logger = logging.getLogger(__name__)

#: Names to merge: target name -> the structure or class names that count as it.
NameMap = Mapping[str, Sequence[str]]


@dataclass
class StudyFiles:
    images: list[Path] = field(default_factory=list)
    references: list[Dataset] = field(default_factory=list)


@dataclass
class CaseResult:
    """One study: what ran, how long, and the scores (or why it was not scored)."""

    study_uid: str
    series_uid: str | None
    seconds: float
    status: str  # "scored", "no reference", "failed"
    reason: str | None = None
    pipelines: list[str] = field(default_factory=list)
    structures: dict[str, StructureScore] = field(default_factory=dict)
    detections: dict[str, Match] = field(default_factory=dict)
    scored_for_detection: bool = False
    volume: Volume | None = None
    reference: Annotations | None = None
    predicted: Annotations | None = None


@dataclass
class Evaluation:
    cases: list[CaseResult]
    structures: dict[str, dict[str, float | int | None]]
    detections: dict[str, DetectionScore]
    match_mm: float


#: A study to evaluate: its Study Instance UID and its files.
Study = tuple[str, StudyFiles]


def collect_studies(folder: Path) -> dict[str, StudyFiles]:
    """Every DICOM file under ``folder``, by Study Instance UID: images and annotations."""
    studies: dict[str, StudyFiles] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError):
            continue  # not DICOM (a README, a thumbnail): the folder is the user's
        study = studies.setdefault(str(header.get("StudyInstanceUID", "")), StudyFiles())
        if str(header.get("SOPClassUID", "")) in ANNOTATION_CLASSES:
            study.references.append(pydicom.dcmread(path))
        else:
            study.images.append(path)
    studies.pop("", None)
    return studies


def rename(annotations: Annotations, mapping: NameMap) -> Annotations:
    """Structures and lesion classes renamed (and merged) by ``mapping``."""
    reverse = {source: target for target, sources in mapping.items() for source in sources}
    result = Annotations({}, [])
    for name, mask in annotations.structures.items():
        result.add_structure(reverse.get(name, name), mask)
    for lesion in annotations.lesions:
        label = reverse.get(lesion.label, lesion.label)
        result.lesions.append(Lesion(lesion.centre_mm, lesion.diameter_mm, label, lesion.score))
    return result


def evaluate_studies(
    folder: Path,
    *,
    rules: Sequence[RoutingRule],
    pipelines: Mapping[str, Pipeline],
    software_version: str,
    only: str | None = None,
    mapping: NameMap | None = None,
    match_mm: float = 10.0,
    progress: Callable[[Iterable[Study]], Iterable[Study]] | None = None,
) -> Evaluation:
    """Score every study of ``folder`` (see the module's docstring)."""
    studies = collect_studies(folder)
    items: Iterable[Study] = sorted(studies.items())
    if progress is not None:
        items = progress(items)
    cases = []
    for study_uid, files in items:
        case = _evaluate_case(
            study_uid, files, rules, pipelines, software_version, only, mapping or {}, match_mm
        )
        logger.info(
            "evaluate study %s: %s%s (%.1f s)",
            study_uid,
            case.status,
            f", {case.reason}" if case.reason else "",
            case.seconds,
        )
        cases.append(case)
    return summarise(cases, match_mm)


def _evaluate_case(
    study_uid: str,
    files: StudyFiles,
    rules: Sequence[RoutingRule],
    pipelines: Mapping[str, Pipeline],
    software_version: str,
    only: str | None,
    mapping: NameMap,
    match_mm: float,
) -> CaseResult:
    if not files.references:
        return CaseResult(study_uid, None, 0.0, "no reference", "no SEG, RTSTRUCT or SR")
    if not files.images:
        return CaseResult(study_uid, None, 0.0, "failed", "references but no images")
    started = time.perf_counter()
    result = annotate_study(
        files.images,
        rules=rules,
        pipelines=pipelines,
        software_version=software_version,
        only=only,
    )
    seconds = time.perf_counter() - started
    ran = sorted({o.pipeline for o in result.outcomes if o.pipeline and o.status == "done"})
    series = _annotated_series(files)
    scan = scan_files(files.images).series
    if series not in scan:
        series = max(scan, key=lambda uid: len(scan[uid]), default=None)
    case = CaseResult(study_uid, series, seconds, "scored", pipelines=ran)
    if result.failures:
        case.reason = "; ".join(f"{o.pipeline}: {o.reason}" for o in result.failures)
    if series is None:
        case.status, case.reason = "failed", "no readable image series"
        return case
    try:
        volume = load_series(scan[series])
        reference = rename(read_annotations(files.references, volume), mapping)
        predicted = rename(read_annotations(_outputs_for(result.outputs, series), volume), mapping)
    except (AnnotationError, ValueError) as exc:
        case.status, case.reason = "failed", str(exc)
        return case
    case.volume, case.reference, case.predicted = volume, reference, predicted
    for name, mask in reference.structures.items():
        guess = predicted.structures.get(name, np.zeros_like(mask))
        case.structures[name] = structure_score(guess, mask, volume.spacing)
    case.scored_for_detection = any(str(ds.SOPClassUID) in SR_CLASSES for ds in files.references)
    if case.scored_for_detection:
        classes = {lesion.label for lesion in reference.lesions}
        classes |= {lesion.label for lesion in predicted.lesions}
        for label in sorted(classes):
            case.detections[label] = match_lesions(
                [p for p in predicted.lesions if p.label == label],
                [r for r in reference.lesions if r.label == label],
                match_mm,
            )
    return case


def _annotated_series(files: StudyFiles) -> str | None:
    """The image series the references name (SEG or RTSTRUCT), if any."""
    for ds in files.references:
        for item in ds.get("ReferencedSeriesSequence", []):
            return str(item.SeriesInstanceUID)
        for frame in ds.get("ReferencedFrameOfReferenceSequence", []):
            for study in frame.get("RTReferencedStudySequence", []):
                for series in study.get("RTReferencedSeriesSequence", []):
                    return str(series.SeriesInstanceUID)
    return None


def _outputs_for(outputs: Sequence[Dataset], series_uid: str) -> list[Dataset]:
    """Our SEGs of ``series_uid`` and the study's SR."""
    kept = []
    for ds in outputs:
        if str(ds.SOPClassUID) == SEG_CLASS:
            refs = {str(i.SeriesInstanceUID) for i in ds.get("ReferencedSeriesSequence", [])}
            if series_uid not in refs:
                continue
        kept.append(ds)
    return kept


def summarise(cases: list[CaseResult], match_mm: float) -> Evaluation:
    """Per structure (mean, median Dice and HD95 over the scored cases) and per class."""
    names = sorted({name for case in cases for name in case.structures})
    structures: dict[str, dict[str, float | int | None]] = {}
    for name in names:
        scores = [case.structures[name] for case in cases if name in case.structures]
        dice = [s.dice for s in scores]
        hd95 = [s.hd95_mm for s in scores if s.hd95_mm is not None]
        structures[name] = {
            "cases": len(scores),
            "dice_mean": float(np.mean(dice)),
            "dice_median": float(np.median(dice)),
            "hd95_mm_mean": float(np.mean(hd95)) if hd95 else None,
            "hd95_mm_median": float(np.median(hd95)) if hd95 else None,
        }
    scanned = [case for case in cases if case.scored_for_detection]
    classes = sorted({label for case in scanned for label in case.detections})
    detections = {
        label: detection_score(
            [case.detections[label] for case in scanned if label in case.detections],
            len(scanned),
        )
        for label in classes
    }
    return Evaluation(cases, structures, detections, match_mm)
