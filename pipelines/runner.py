"""One study in, result datasets out: the single code path of the Celery task and the CLI.

Every series ends with exactly one recorded outcome per selected pipeline (or one
"skipped"/"failed" outcome when none applies), so a job report can say what happened to
each series and why. Output UIDs are derived from the inputs, so a re-run produces the
same SOP Instance UIDs and the PACS keeps one copy.

After all series ran, one TID 1500 SR covers every (series, pipeline) that finished: what
each found, or that it found nothing, so "ran, found nothing" differs from "never ran".
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    EnhancedCTImageStorage,
    EnhancedMRImageStorage,
    LegacyConvertedEnhancedCTImageStorage,
    MRImageStorage,
    SegmentationStorage,
)

from pipelines.base import Pipeline
from pipelines.errors import InputError
from pipelines.findings import Findings
from pipelines.routing import RoutingRule, select_pipelines
from pipelines.seg import build_seg, non_empty_segments
from pipelines.sr import build_sr
from pipelines.sr_root import SeriesResult
from pipelines.uids import derive_uid
from pipelines.volume import SeriesVolumes, Volume, load_volumes, scan_files

logger = logging.getLogger(__name__)

Status = Literal["done", "skipped", "failed"]
_OutcomeFactory = Callable[[str | None, Status, str | None, tuple[Dataset, ...]], "SeriesOutcome"]

#: SOP classes that carry pixel data but are results, not images to segment.
_RESULT_SOP_CLASSES = frozenset({str(SegmentationStorage)})
#: Image SOP classes: an instance of these without Pixel Data is damaged, not "not an image".
_IMAGE_SOP_CLASSES = frozenset(
    str(uid)
    for uid in (
        CTImageStorage,
        EnhancedCTImageStorage,
        LegacyConvertedEnhancedCTImageStorage,
        MRImageStorage,
        EnhancedMRImageStorage,
    )
)
#: SeriesNumber of the study's SR (SEGs use source + 1000).
REPORT_SERIES_NUMBER = 9000


@dataclass(frozen=True)
class SeriesOutcome:
    """What happened to one series with one pipeline (``pipeline`` None: none was run).

    An unreadable file gets its own failed outcome with an empty ``series_uid``.
    """

    series_uid: str
    modality: str
    pipeline: str | None
    status: Status
    reason: str | None
    outputs: tuple[Dataset, ...]


@dataclass(frozen=True)
class StudyResult:
    """Outcomes per series and pipeline, plus the study's SR (None when nothing ran)."""

    outcomes: tuple[SeriesOutcome, ...]
    report: Dataset | None = None
    #: Seconds spent per stage ("load", "pipelines", "write"), for benchmarks and logs.
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def outputs(self) -> tuple[Dataset, ...]:
        """Everything to deliver: the SEGs, then the SR."""
        per_series = tuple(ds for outcome in self.outcomes for ds in outcome.outputs)
        return per_series if self.report is None else (*per_series, self.report)

    @property
    def failures(self) -> tuple[SeriesOutcome, ...]:
        return tuple(outcome for outcome in self.outcomes if outcome.status == "failed")

    @property
    def skipped(self) -> tuple[SeriesOutcome, ...]:
        return tuple(outcome for outcome in self.outcomes if outcome.status == "skipped")


def annotate_study(
    paths: Iterable[Path],
    *,
    rules: Sequence[RoutingRule],
    pipelines: Mapping[str, Pipeline],
    software_version: str,
    only: str | None = None,
) -> StudyResult:
    """Run the routed (or ``only`` the named) pipelines on every image series in ``paths``.

    Raises ``ValueError`` when a rule or ``only`` names a pipeline that does not exist
    (a configuration error, found before any work). Bad input never raises: it becomes a
    "failed" outcome with the reason, and the other series go on.
    """
    _check_pipeline_names(rules, pipelines, only)
    timings = {"load": 0.0, "pipelines": 0.0, "write": 0.0}
    started = time.perf_counter()
    scan = scan_files(paths)
    timings["load"] += time.perf_counter() - started
    outcomes = [
        SeriesOutcome("", "", None, "failed", f"unreadable file {bad.path}: {bad.reason}", ())
        for bad in scan.unreadable
    ]
    results: list[SeriesResult] = []
    for series_uid in sorted(scan.series):
        outcomes.extend(
            _annotate_series(
                scan.series[series_uid], rules, pipelines, software_version, only, results, timings
            )
        )
    started = time.perf_counter()
    report = _report(results, software_version, outcomes)
    timings["write"] += time.perf_counter() - started
    for outcome in outcomes:
        logger.info(
            "series %s pipeline %s: %s%s",
            outcome.series_uid or "-",
            outcome.pipeline or "-",
            outcome.status,
            f" ({outcome.reason})" if outcome.reason else "",
        )
    return StudyResult(outcomes=tuple(outcomes), report=report, timings=timings)


def _report(
    results: list[SeriesResult], software_version: str, outcomes: list[SeriesOutcome]
) -> Dataset | None:
    """The study's SR over every finished result; a failure to write it is an outcome."""
    if not results:
        return None
    sources = {str(ds.SOPInstanceUID): ds for volume, _, _ in results for ds in volume.datasets}
    keys = sorted(
        "|".join(_uid_key(volume, findings.algorithm.name, findings.algorithm.version))
        for volume, findings, _ in results
    )
    study_uid = results[0][0].study_uid
    try:
        return build_sr(
            list(sources.values()),
            results,
            series_uid=derive_uid("sr-series", study_uid, *keys),
            sop_uid=derive_uid("sr-instance", study_uid, *keys),
            series_number=REPORT_SERIES_NUMBER,
            software_version=software_version,
        )
    except ValueError as exc:
        logger.warning("cannot write the SR for study %s: %s", study_uid, exc)
        outcomes.append(SeriesOutcome("", "SR", None, "failed", f"cannot write the SR: {exc}", ()))
        return None


def _annotate_series(
    datasets: list[Dataset],
    rules: Sequence[RoutingRule],
    pipelines: Mapping[str, Pipeline],
    software_version: str,
    only: str | None,
    collected: list[SeriesResult],
    timings: dict[str, float],
) -> list[SeriesOutcome]:
    """Outcomes of one series; each finished result is appended to ``collected`` for the SR.

    Time spent loading, running and writing is added to ``timings``.
    """
    first = datasets[0]
    series_uid = str(first.SeriesInstanceUID)
    modality = str(first.get("Modality", ""))
    logger.info(
        "series %s (accession %s): %d instance(s), modality %s",
        series_uid,
        first.get("AccessionNumber", ""),
        len(datasets),
        modality or "-",
    )

    def outcome(
        pipeline: str | None, status: Status, reason: str | None, outputs: tuple[Dataset, ...]
    ) -> SeriesOutcome:
        return SeriesOutcome(series_uid, modality, pipeline, status, reason, outputs)

    names = (only,) if only is not None else select_pipelines(rules, first)
    if not names:
        return [outcome(None, "skipped", f"no routing rule matches modality {modality or '-'}", ())]
    not_image = _why_not_image_series(first)
    if not_image:
        # An image SOP class without pixels is broken input; a document or report is not.
        broken = str(first.get("SOPClassUID", "")) in _IMAGE_SOP_CLASSES
        return [outcome(None, "failed" if broken else "skipped", not_image, ())]

    results: list[SeriesOutcome] = []
    loaded: SeriesVolumes | None = None
    load_error: str | None = None
    for name in names:
        pipeline = pipelines[name]
        if modality not in pipeline.modalities:
            handled = ", ".join(sorted(pipeline.modalities))
            results.append(
                outcome(name, "skipped", f"pipeline {name} handles {handled}, not {modality}", ())
            )
            continue
        if loaded is None and load_error is None:
            started = time.perf_counter()
            try:
                loaded = load_volumes(datasets)
                results.extend(outcome(None, "skipped", why, ()) for why in loaded.set_apart)
            except InputError as exc:
                load_error = str(exc)
            timings["load"] += time.perf_counter() - started
        if loaded is None:
            results.append(outcome(name, "failed", load_error, ()))
            continue
        for volume in loaded.volumes:
            noted = _noted(volume, outcome)
            try:
                started = time.perf_counter()
                findings = pipeline.run(volume)
                timings["pipelines"] += time.perf_counter() - started
            except InputError as exc:
                results.append(noted(name, "failed", str(exc), ()))
                continue
            started = time.perf_counter()
            written, seg = _write_results(volume, name, findings, software_version, noted)
            timings["write"] += time.perf_counter() - started
            results.append(written)
            if written.status == "done":
                collected.append((volume, findings, seg))
    return results


def _noted(volume: Volume, outcome: _OutcomeFactory) -> _OutcomeFactory:
    """``outcome`` with what the admin should know about the volume before the reason.

    A series split into several volumes says which one ("stack 2"); a resampled one says
    why and how (gantry tilt, uneven gaps).
    """

    def make(
        pipeline: str | None, status: Status, reason: str | None, outputs: tuple[Dataset, ...]
    ) -> SeriesOutcome:
        text = "; ".join(part for part in (volume.note, reason) if part)
        return outcome(pipeline, status, text or None, outputs)

    return make


def _write_results(
    volume: Volume,
    name: str,
    findings: Findings,
    software_version: str,
    outcome: _OutcomeFactory,
) -> tuple[SeriesOutcome, Dataset | None]:
    """The outcome and the SEG (None when the pipeline produced no non-empty segment)."""
    present = non_empty_segments(findings)
    if not present:
        if findings.is_empty:
            labels = ", ".join(segment.label for segment in findings.segments)
            detail = f": every segment is empty ({labels})" if labels else ""
            return outcome(name, "done", f"no findings{detail}", ()), None
        return outcome(name, "done", _summary(findings), ()), None
    key = _uid_key(volume, name, findings.algorithm.version)
    try:
        seg = build_seg(
            volume,
            findings,
            series_uid=derive_uid("seg-series", *key),
            sop_uid=derive_uid("seg-instance", *key),
            series_number=_series_number(volume),
            software_version=software_version,
        )
    except ValueError as exc:
        # highdicom refuses source headers it cannot derive a valid SEG from.
        logger.warning("cannot write SEG for series %s: %s", volume.series_uid, exc)
        return outcome(name, "failed", f"cannot write the SEG: {exc}", ()), None
    omitted = [segment.label for segment in findings.segments if segment not in present]
    reason = f"empty segments left out: {', '.join(omitted)}" if omitted else None
    return outcome(name, "done", reason, (seg,)), seg


def _summary(findings: Findings) -> str:
    """What a pipeline without segments reported (the details are in the SR)."""
    parts = []
    if findings.detections:
        parts.append(f"{len(findings.detections)} detection(s)")
    if findings.classifications:
        parts.append(f"{len(findings.classifications)} classification(s)")
    return ", ".join(parts) + " (in the SR)"


def _uid_key(volume: Volume, pipeline_name: str, algorithm_version: str) -> tuple[str, ...]:
    """Everything that identifies one result: same inputs and algorithm, same UIDs."""
    sop_uids = sorted(str(ds.SOPInstanceUID) for ds in volume.datasets)
    # The stacks of one multi-frame instance share its SOP Instance UID: the label tells
    # them apart (left out when empty, so a whole series keeps the UIDs it always had).
    part = (volume.label,) if volume.label else ()
    return (volume.study_uid, volume.series_uid, pipeline_name, algorithm_version, *sop_uids, *part)


def _series_number(volume: Volume) -> int:
    """Source SeriesNumber + 1000, so results sort next to their source in viewers."""
    source = volume.datasets[0].get("SeriesNumber")
    number = int(source) if source not in (None, "") else 0
    return 1000 + number % 1_000_000


def _why_not_image_series(ds: Dataset) -> str | None:
    """A reason to skip a series that is not an image series a pipeline can read."""
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class in _RESULT_SOP_CLASSES:
        return f"series of SOP class {sop_class} (a result object, not images)"
    if "PixelData" not in ds:
        name = UID(sop_class).name if sop_class else "-"
        return f"series of SOP class {name} has no pixel data"
    return None


def _check_pipeline_names(
    rules: Sequence[RoutingRule], pipelines: Mapping[str, Pipeline], only: str | None
) -> None:
    known = ", ".join(sorted(pipelines)) or "none"
    if only is not None and only not in pipelines:
        raise ValueError(f"unknown pipeline {only!r} requested (known pipelines: {known})")
    for rule in rules:
        for name in rule.pipelines:
            if name not in pipelines:
                raise ValueError(
                    f"routing rule {rule} names unknown pipeline {name!r} (known: {known})"
                )
