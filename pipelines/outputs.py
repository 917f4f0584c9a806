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
2. add its name to ``OUTPUT_KINDS`` (the settings accept exactly these names);
3. add one entry to ``SERIES_KINDS`` or ``STUDY_KINDS``: the SOP classes it writes (how a
   saved object's kind is known again), its series number offset, ``applies`` (is there
   anything to draw?) and a small adapter from ``(volume, findings, ids, version,
   options)`` to your builder. A builder raises ``ValueError`` for findings it cannot write:
   the series' outcome then fails with that reason, the other kinds are still written.
4. a setting of one kind is a field of ``OutputOptions``, filled from the settings where
   ``worker/run/processing.py`` calls ``annotate_study(options=...)``; never read here.
5. tests: the kind's SOP class in ``tests/support/dicom_validate.py``'s readers, and the
   end-to-end test ``tests/integration/test_outputs_per_destination.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from pydicom.dataset import Dataset
from pydicom.uid import (
    Comprehensive3DSRStorage,
    GrayscaleSoftcopyPresentationStateStorage,
    KeyObjectSelectionDocumentStorage,
    RTStructureSetStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
)

from pipelines.findings import Algorithm, Findings
from pipelines.gsps import build_gsps
from pipelines.kos import build_kos, has_key_images
from pipelines.marks import has_marks
from pipelines.rtstruct import build_rtstruct, has_structures
from pipelines.sc import build_sc
from pipelines.seg import build_seg, non_empty_segments
from pipelines.sr import build_sr
from pipelines.sr_root import SeriesResult
from pipelines.uids import derive_uid
from pipelines.volume import Volume

#: Every output kind a destination may ask for, in the order they are built and sent.
OUTPUT_KINDS: Final = ("seg", "rtstruct", "gsps", "sc", "sr", "kos")
#: What a destination receives when nobody says otherwise.
DEFAULT_OUTPUTS: Final = ("seg", "sr")


@dataclass(frozen=True)
class OutputOptions:
    """Settings of single kinds (the ``outputs_options`` settings)."""

    #: sc: one image per source slice (True) or only per slice with a finding (False).
    sc_every_slice: bool = False


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
        frozenset({str(SegmentationStorage)}),
        1000,
        _has_segments,
        _one_instance(build_seg),
    ),
    "rtstruct": SeriesKind(
        "rtstruct",
        "RTSTRUCT",
        frozenset({str(RTStructureSetStorage)}),
        2000,
        has_structures,
        _one_instance(build_rtstruct),
    ),
    "gsps": SeriesKind(
        "gsps",
        "GSPS",
        frozenset({str(GrayscaleSoftcopyPresentationStateStorage)}),
        3000,
        has_marks,
        _one_instance(build_gsps),
    ),
    "sc": SeriesKind(
        "sc",
        "secondary capture",
        frozenset({str(SecondaryCaptureImageStorage)}),
        4000,
        has_marks,
        _sc,
    ),
}

STUDY_KINDS: dict[str, StudyKind] = {
    "sr": StudyKind(
        "sr",
        "SR",
        frozenset({str(Comprehensive3DSRStorage)}),
        REPORT_SERIES_NUMBER,
        bool,  # every finished result is reported, findings or not
        _sr,
    ),
    "kos": StudyKind(
        "kos",
        "KOS",
        frozenset({str(KeyObjectSelectionDocumentStorage)}),
        KEY_IMAGES_SERIES_NUMBER,
        has_key_images,
        _kos,
    ),
}


def check_kinds(names: Collection[str]) -> tuple[str, ...]:
    """``names`` in build order, each once; ``ValueError`` naming any unknown one."""
    unknown = [name for name in names if name not in OUTPUT_KINDS]
    if unknown:
        raise ValueError(
            f"unknown output {', '.join(repr(n) for n in unknown)} "
            f"(known: {', '.join(OUTPUT_KINDS)})"
        )
    return tuple(kind for kind in OUTPUT_KINDS if kind in names)


def kinds_to_build(wanted: Collection[str]) -> tuple[str, ...]:
    """What a job builds for ``wanted``: the SR needs the SEG it refers to, so sr adds seg."""
    names = set(check_kinds(wanted))
    if "sr" in names:
        names.add("seg")
    return tuple(kind for kind in OUTPUT_KINDS if kind in names)


def output_kind(ds: Dataset) -> str:
    """The kind of an object we wrote, from its SOP class; ``ValueError`` if not ours."""
    sop_class = str(ds.get("SOPClassUID", ""))
    kinds: list[SeriesKind | StudyKind] = [*SERIES_KINDS.values(), *STUDY_KINDS.values()]
    for kind in kinds:
        if sop_class in kind.sop_classes:
            return kind.name
    raise ValueError(f"SOP class {sop_class or '-'} is not one of the output kinds")


def series_number(volume: Volume, offset: int) -> int:
    """Source SeriesNumber + ``offset``, so results sort next to their source in viewers."""
    source = volume.datasets[0].get("SeriesNumber")
    number = int(source) if source not in (None, "") else 0
    return offset + number % 1_000_000
