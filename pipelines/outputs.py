"""Every kind of result object a job can write, each built from the same findings.

A site chooses per destination which kinds it receives (``outputs`` in the delivery
settings); the job builds the union its destinations need, and delivery gives each
destination its own set. Every kind is derived from the same ``Findings`` and ``Volume``,
carries the same algorithm identity (a Contributing Equipment item and a SeriesDescription
naming the algorithm, see ``series_description``) and has UIDs derived from the inputs
(``OutputIds``), so a re-run replaces instead of adding a copy.

Two shapes:
- a **per-series kind** (seg, rtstruct, gsps, sc) is built once per (source series,
  pipeline) from ``(volume, findings, ids, software_version, options)`` and returns the
  datasets of one new series;
- a **study-level kind** (sr, kos) is built once per job from every finished result
  (``SeriesResult``: volume, findings, SEG or None) and returns one document.

How to add a kind:
1. write its builder in ``pipelines/<kind>.py`` (a function taking the volume and the
   findings and returning datasets; keyword arguments for UIDs, series number, version);
2. its name in ``pipelines.output_kinds.OUTPUT_KINDS`` (gsps and sc are there already) and
   the SOP classes it writes in ``SOP_CLASSES`` beside it (how a saved object's kind is
   known again; the settings accept a kind once it has them);
3. add one entry to ``SERIES_KINDS`` or ``STUDY_KINDS``: its ``SOP_CLASSES``, its series
   number offset, ``applies`` (is there anything to draw?) and a small adapter from
   ``(volume, findings, ids, version, options)`` to your builder (``_one_instance`` for a
   builder of one instance per series). A builder raises ``ValueError`` for findings it
   cannot write: the series' outcome then fails with that reason, the other kinds are
   still written.
4. a setting of one kind is a field of ``OutputOptions`` (``pipelines.output_kinds``) and
   of ``OutputsOptionsSettings`` (``delivery.outputs_options``), whose ``output_options()``
   the worker and ``run`` pass as ``annotate_study(options=...)``; never read here.
5. tests: the kind's SOP class in ``tests/support/dicom_validate.py``'s readers, and the
   end-to-end test ``tests/integration/test_outputs_per_destination.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from pydicom.dataset import Dataset

from pipelines.findings import Algorithm, Findings
from pipelines.gsps import build_gsps
from pipelines.kos import build_kos, has_key_images
from pipelines.marks import has_marks
from pipelines.output_kinds import (
    DEFAULT_OUTPUTS,
    OUTPUT_KINDS,
    SOP_CLASSES,
    OutputOptions,
    check_kinds,
    output_kind,
)
from pipelines.rtstruct import build_rtstruct, has_structures
from pipelines.sc import build_sc
from pipelines.seg import build_seg, non_empty_segments
from pipelines.sr import build_sr
from pipelines.sr_root import SeriesResult
from pipelines.uids import derive_uid
from pipelines.volume import Volume

__all__ = [
    "DEFAULT_OPTIONS",
    "DEFAULT_OUTPUTS",
    "OUTPUT_KINDS",
    "SERIES_KINDS",
    "STUDY_KINDS",
    "OutputIds",
    "OutputOptions",
    "SeriesKind",
    "StudyKind",
    "check_kinds",
    "kinds_to_build",
    "output_kind",
    "series_description",
    "series_number",
]


DEFAULT_OPTIONS: Final = OutputOptions()


@dataclass(frozen=True)
class OutputIds:
    """UIDs and series number of one output series, derived from what identifies it.

    ``key`` is everything that identifies the result (study, series, pipeline, algorithm
    version, source SOP instances): the same inputs give the same UIDs, a re-run replaces.
    """

    kind: str
    key: tuple[str, ...]
    series_number: int

    @property
    def series_uid(self) -> str:
        return derive_uid(f"{self.kind}-series", *self.key)

    @property
    def sop_uid(self) -> str:
        """The SOP Instance UID of a kind that writes one instance."""
        return derive_uid(f"{self.kind}-instance", *self.key)

    def sop_uid_for(self, index: int) -> str:
        """The SOP Instance UID of instance ``index`` of a kind that writes several."""
        return derive_uid(f"{self.kind}-instance", *self.key, str(index))


SeriesBuilder = Callable[[Volume, Findings, OutputIds, str, OutputOptions], tuple[Dataset, ...]]
StudyBuilder = Callable[[Sequence[Dataset], Sequence[SeriesResult], OutputIds, str], Dataset]


@dataclass(frozen=True)
class SeriesKind:
    """A kind written once per (source series, pipeline)."""

    name: str
    #: What the reason of a failed outcome calls it ("cannot write the RTSTRUCT: ...").
    title: str
    sop_classes: frozenset[str]
    #: SeriesNumber = offset + source SeriesNumber, so results sort next to their source.
    series_offset: int
    applies: Callable[[Findings], bool]
    build: SeriesBuilder


@dataclass(frozen=True)
class StudyKind:
    """A kind written once per job over every finished result."""

    name: str
    title: str
    sop_classes: frozenset[str]
    series_number: int
    applies: Callable[[Sequence[SeriesResult]], bool]
    build: StudyBuilder


def series_description(what: str, algorithm: Algorithm) -> str:
    """The SeriesDescription of a per-series output: what it is and which algorithm made it."""
    return f"AI {what} ({algorithm.name})"[:64]


class _OneInstance(Protocol):
    """A builder of one dataset per series: ``build_seg``, ``build_rtstruct``, ``build_gsps``."""

    def __call__(
        self,
        volume: Volume,
        findings: Findings,
        *,
        series_uid: str,
        sop_uid: str,
        series_number: int,
        software_version: str,
    ) -> Dataset: ...


def _one_instance(build: _OneInstance) -> SeriesBuilder:
    """The registry's adapter for a builder that writes one instance per series."""

    def adapter(
        volume: Volume, findings: Findings, ids: OutputIds, version: str, _: OutputOptions
    ) -> tuple[Dataset, ...]:
        return (
            build(
                volume,
                findings,
                series_uid=ids.series_uid,
                sop_uid=ids.sop_uid,
                series_number=ids.series_number,
                software_version=version,
            ),
        )

    return adapter


def _sc(
    volume: Volume, findings: Findings, ids: OutputIds, version: str, options: OutputOptions
) -> tuple[Dataset, ...]:
    return tuple(
        build_sc(
            volume,
            findings,
            series_uid=ids.series_uid,
            series_number=ids.series_number,
            software_version=version,
            sop_uid_for=ids.sop_uid_for,
            every_slice=options.sc_every_slice,
        )
    )


def _sr(
    sources: Sequence[Dataset], results: Sequence[SeriesResult], ids: OutputIds, version: str
) -> Dataset:
    return build_sr(sources, results, **_document_ids(ids, version))


def _kos(
    _: Sequence[Dataset], results: Sequence[SeriesResult], ids: OutputIds, version: str
) -> Dataset:
    return build_kos(results, **_document_ids(ids, version))


def _document_ids(ids: OutputIds, version: str) -> dict[str, Any]:
    return {
        "series_uid": ids.series_uid,
        "sop_uid": ids.sop_uid,
        "series_number": ids.series_number,
        "software_version": version,
    }


def _has_segments(findings: Findings) -> bool:
    return bool(non_empty_segments(findings))


#: SeriesNumber of the study's SR and KOS (SEGs use source + 1000).
REPORT_SERIES_NUMBER = 9000
KEY_IMAGES_SERIES_NUMBER = 9001

SERIES_KINDS: dict[str, SeriesKind] = {
    "seg": SeriesKind(
        "seg",
        "SEG",
        SOP_CLASSES["seg"],
        1000,
        _has_segments,
        _one_instance(build_seg),
    ),
    "rtstruct": SeriesKind(
        "rtstruct",
        "RTSTRUCT",
        SOP_CLASSES["rtstruct"],
        2000,
        has_structures,
        _one_instance(build_rtstruct),
    ),
    "gsps": SeriesKind(
        "gsps",
        "GSPS",
        SOP_CLASSES["gsps"],
        3000,
        has_marks,
        _one_instance(build_gsps),
    ),
    "sc": SeriesKind(
        "sc",
        "secondary capture",
        SOP_CLASSES["sc"],
        4000,
        has_marks,
        _sc,
    ),
}

STUDY_KINDS: dict[str, StudyKind] = {
    "sr": StudyKind(
        "sr",
        "SR",
        SOP_CLASSES["sr"],
        REPORT_SERIES_NUMBER,
        bool,  # every finished result is reported, findings or not
        _sr,
    ),
    "kos": StudyKind(
        "kos",
        "KOS",
        SOP_CLASSES["kos"],
        KEY_IMAGES_SERIES_NUMBER,
        has_key_images,
        _kos,
    ),
}


def kinds_to_build(wanted: Collection[str]) -> tuple[str, ...]:
    """What a job builds for ``wanted``: the SR needs the SEG it refers to, so sr adds seg."""
    names = set(check_kinds(wanted))
    if "sr" in names:
        names.add("seg")
    return tuple(kind for kind in OUTPUT_KINDS if kind in names)


def series_number(volume: Volume, offset: int) -> int:
    """Source SeriesNumber + ``offset``, so results sort next to their source in viewers."""
    source = volume.datasets[0].get("SeriesNumber")
    number = int(source) if source not in (None, "") else 0
    return offset + number % 1_000_000
