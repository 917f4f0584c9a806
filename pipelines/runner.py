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
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
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
from pipelines.outputs import (
    DEFAULT_OPTIONS,
    DEFAULT_OUTPUTS,
    REPORT_SERIES_NUMBER,
    SERIES_KINDS,
    STUDY_KINDS,
    OutputIds,
    OutputOptions,
    kinds_to_build,
    series_number,
)
from pipelines.routing import RoutingRule, select_pipelines
from pipelines.seg import non_empty_segments
from pipelines.sr_root import SeriesResult
from pipelines.volume import Volume, load_series, scan_files

logger = logging.getLogger(__name__)

Status = Literal["done", "skipped", "failed"]
#: Which output kinds the job needs, from the modalities of its series and the pipelines
#: that ran (what delivery rules match on): ``worker`` asks its destinations.
OutputPlanner = Callable[[Sequence[str], Sequence[str]], Collection[str]]

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
__all__ = [
    "REPORT_SERIES_NUMBER",
    "OutputPlanner",
    "SeriesOutcome",
    "Status",
    "StudyResult",
    "annotate_study",
]


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
    """Outcomes per series and pipeline, the study's SR (None when nothing ran or it was
    not wanted) and its other study-level documents (the KOS)."""

    outcomes: tuple[SeriesOutcome, ...]
    report: Dataset | None = None
    #: Seconds spent per stage ("load", "pipelines", "write"), for benchmarks and logs.
    timings: dict[str, float] = field(default_factory=dict)
    documents: tuple[Dataset, ...] = ()
    #: The output kinds this run was asked for (what it built where there was something).
    kinds: tuple[str, ...] = DEFAULT_OUTPUTS

    @property
    def outputs(self) -> tuple[Dataset, ...]:
        """Everything to deliver: the per-series objects (SEG, RTSTRUCT...), the SR, the KOS."""
        per_series = tuple(ds for outcome in self.outcomes for ds in outcome.outputs)
        report = () if self.report is None else (self.report,)
        return (*per_series, *report, *self.documents)

    @property
    def failures(self) -> tuple[SeriesOutcome, ...]:
        return tuple(outcome for outcome in self.outcomes if outcome.status == "failed")

    @property
    def skipped(self) -> tuple[SeriesOutcome, ...]:
        return tuple(outcome for outcome in self.outcomes if outcome.status == "skipped")


@dataclass(frozen=True, eq=False)
class _Ran:
    """A pipeline that ran on a series; its outputs are written once the job knows which."""

    series_uid: str
    modality: str
    pipeline: str
    volume: Volume
    findings: Findings

    def outcome(
        self, status: Status, reason: str | None, outputs: tuple[Dataset, ...] = ()
    ) -> SeriesOutcome:
        return SeriesOutcome(self.series_uid, self.modality, self.pipeline, status, reason, outputs)


def annotate_study(
    paths: Iterable[Path],
    *,
    rules: Sequence[RoutingRule],
    pipelines: Mapping[str, Pipeline],
    software_version: str,
    only: str | None = None,
    outputs: Collection[str] | OutputPlanner = DEFAULT_OUTPUTS,
    options: OutputOptions = DEFAULT_OPTIONS,
) -> StudyResult:
    """Run the routed (or ``only`` the named) pipelines on every image series in ``paths``.

    ``outputs`` are the kinds to write (``pipelines.outputs.OUTPUT_KINDS``), or a function
    of the study's modalities and the pipelines that ran which says so (the job's
    destinations decide). Raises ``ValueError`` when a rule or ``only`` names a pipeline that
    does not exist, or an output kind is unknown (configuration errors, found before any
    work). Bad input never raises: it becomes a "failed" outcome with the reason, and the
    other series go on.
    """
    _check_pipeline_names(rules, pipelines, only)
    if not callable(outputs):
        kinds_to_build(outputs)  # an unknown kind is refused before any work
    timings = {"load": 0.0, "pipelines": 0.0, "write": 0.0}
    started = time.perf_counter()
    scan = scan_files(paths)
    timings["load"] += time.perf_counter() - started
    entries: list[SeriesOutcome | _Ran] = [
        SeriesOutcome("", "", None, "failed", f"unreadable file {bad.path}: {bad.reason}", ())
        for bad in scan.unreadable
    ]
    for series_uid in sorted(scan.series):
        entries.extend(_run_series(scan.series[series_uid], rules, pipelines, only, timings))
    wanted = kinds_to_build(outputs(*_delivery_facts(entries)) if callable(outputs) else outputs)
    started = time.perf_counter()
    outcomes: list[SeriesOutcome] = []
    results: list[SeriesResult] = []
    for entry in entries:
        if isinstance(entry, SeriesOutcome):
            outcomes.append(entry)
            continue
        written, seg, reportable = _write_results(entry, wanted, software_version, options)
        outcomes.append(written)
        if reportable:
            results.append((entry.volume, entry.findings, seg))
    documents = _study_documents(results, wanted, software_version, outcomes)
    timings["write"] += time.perf_counter() - started
    for outcome in outcomes:
        logger.info(
            "series %s pipeline %s: %s%s",
            outcome.series_uid or "-",
            outcome.pipeline or "-",
            outcome.status,
            f" ({outcome.reason})" if outcome.reason else "",
        )
    report = documents.pop("sr", None)
    return StudyResult(
        outcomes=tuple(outcomes),
        report=report,
        timings=timings,
        documents=tuple(documents.values()),
        kinds=wanted,
    )


def _delivery_facts(entries: Sequence[SeriesOutcome | _Ran]) -> tuple[list[str], list[str]]:
    """The study's modalities and the pipelines that ran, as delivery rules see them."""
    modalities = [entry.modality for entry in entries]
    ran = [
        entry.pipeline
        for entry in entries
        if entry.pipeline and (isinstance(entry, _Ran) or entry.status != "failed")
    ]
    return modalities, ran


def _study_documents(
    results: list[SeriesResult],
    wanted: Collection[str],
    software_version: str,
    outcomes: list[SeriesOutcome],
) -> dict[str, Dataset]:
    """The study-level kinds (SR, KOS) over every finished result; a failure is an outcome."""
    if not results:
        return {}
    sources = {str(ds.SOPInstanceUID): ds for volume, _, _ in results for ds in volume.datasets}
    keys = sorted(
        "|".join(_uid_key(volume, findings.algorithm.name, findings.algorithm.version))
        for volume, findings, _ in results
    )
    study_uid = results[0][0].study_uid
    documents: dict[str, Dataset] = {}
    for kind in STUDY_KINDS.values():
        if kind.name not in wanted or not kind.applies(results):
            continue
        ids = OutputIds(kind.name, (study_uid, *keys), kind.series_number)
        try:
            documents[kind.name] = kind.build(
                list(sources.values()), results, ids, software_version
            )
        except ValueError as exc:
            logger.warning("cannot write the %s for study %s: %s", kind.title, study_uid, exc)
            reason = f"cannot write the {kind.title}: {exc}"
            outcomes.append(SeriesOutcome("", kind.title, None, "failed", reason, ()))
    return documents


def _run_series(
    datasets: list[Dataset],
    rules: Sequence[RoutingRule],
    pipelines: Mapping[str, Pipeline],
    only: str | None,
    timings: dict[str, float],
) -> list[SeriesOutcome | _Ran]:
    """Outcomes of one series where nothing ran, and the findings of each pipeline that did.

    Time spent loading and running is added to ``timings``.
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

    def outcome(pipeline: str | None, status: Status, reason: str | None) -> SeriesOutcome:
        return SeriesOutcome(series_uid, modality, pipeline, status, reason, ())

    names = (only,) if only is not None else select_pipelines(rules, first)
    if not names:
        return [outcome(None, "skipped", f"no routing rule matches modality {modality or '-'}")]
    not_image = _why_not_image_series(first)
    if not_image:
        # An image SOP class without pixels is broken input; a document or report is not.
        broken = str(first.get("SOPClassUID", "")) in _IMAGE_SOP_CLASSES
        return [outcome(None, "failed" if broken else "skipped", not_image)]

    results: list[SeriesOutcome | _Ran] = []
    volume: Volume | None = None
    for name in names:
        pipeline = pipelines[name]
        if modality not in pipeline.modalities:
            handled = ", ".join(sorted(pipeline.modalities))
            results.append(
                outcome(name, "skipped", f"pipeline {name} handles {handled}, not {modality}")
            )
            continue
        try:
            if volume is None:
                started = time.perf_counter()
                volume = load_series(datasets)
                timings["load"] += time.perf_counter() - started
            started = time.perf_counter()
            findings = pipeline.run(volume)
            timings["pipelines"] += time.perf_counter() - started
        except InputError as exc:
            results.append(outcome(name, "failed", str(exc)))
            continue
        results.append(_Ran(series_uid, modality, name, volume, findings))
    return results


def _write_results(
    ran: _Ran, wanted: Collection[str], software_version: str, options: OutputOptions
) -> tuple[SeriesOutcome, Dataset | None, bool]:
    """The outcome, the SEG (None without segments or when not wanted), and whether the
    result goes into the study's SR and KOS (not when its SEG could not be written)."""
    volume, findings = ran.volume, ran.findings
    present = non_empty_segments(findings)
    if not present and findings.is_empty:
        labels = ", ".join(segment.label for segment in findings.segments)
        detail = f": every segment is empty ({labels})" if labels else ""
        return ran.outcome("done", f"no findings{detail}"), None, True
    key = _uid_key(volume, ran.pipeline, findings.algorithm.version)
    written: list[Dataset] = []
    problems: list[str] = []
    seg: Dataset | None = None
    for kind in SERIES_KINDS.values():
        if kind.name not in wanted or not kind.applies(findings):
            continue
        ids = OutputIds(kind.name, key, series_number(volume, kind.series_offset))
        try:
            datasets = kind.build(volume, findings, ids, software_version, options)
        except ValueError as exc:
            # e.g. highdicom refuses source headers it cannot derive a valid SEG from.
            logger.warning(
                "cannot write the %s for series %s: %s", kind.title, volume.series_uid, exc
            )
            if kind.name == "seg":  # the SR measures the SEG: without it, nothing is written
                return ran.outcome("failed", f"cannot write the SEG: {exc}"), None, False
            problems.append(f"cannot write the {kind.title}: {exc}")
            continue
        written.extend(datasets)
        if kind.name == "seg":
            seg = datasets[0]
    if problems:
        return ran.outcome("failed", "; ".join(problems), tuple(written)), seg, True
    if not present:
        return ran.outcome("done", _summary(findings, wanted), tuple(written)), None, True
    omitted = [segment.label for segment in findings.segments if segment not in present]
    reason = f"empty segments left out: {', '.join(omitted)}" if omitted else None
    return ran.outcome("done", reason, tuple(written)), seg, True


def _summary(findings: Findings, wanted: Collection[str]) -> str:
    """What a pipeline without segments reported (the details are in the SR, if written)."""
    parts = []
    if findings.detections:
        parts.append(f"{len(findings.detections)} detection(s)")
    if findings.classifications:
        parts.append(f"{len(findings.classifications)} classification(s)")
    return ", ".join(parts) + (" (in the SR)" if "sr" in wanted else "")


def _uid_key(volume: Volume, pipeline_name: str, algorithm_version: str) -> tuple[str, ...]:
    """Everything that identifies one result: same inputs and algorithm, same UIDs."""
    sop_uids = sorted(str(ds.SOPInstanceUID) for ds in volume.datasets)
    return (volume.study_uid, volume.series_uid, pipeline_name, algorithm_version, *sop_uids)


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
