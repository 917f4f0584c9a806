"""The output registry: the kinds a job asks for are what it builds, each derived from the
same findings, with the same algorithm identity and UIDs that a re-run repeats."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import Comprehensive3DSRStorage, CTImageStorage

from pipelines import outputs as registry
from pipelines.output_kinds import available_kinds
from pipelines.outputs import (
    OUTPUT_KINDS,
    SERIES_KINDS,
    STUDY_KINDS,
    check_kinds,
    kinds_to_build,
    output_kind,
)
from pipelines.registry import builtin_pipelines
from pipelines.routing import DEFAULT_RULES
from pipelines.runner import StudyResult, annotate_study
from tests.support.phantom import make_nodule_phantom
from tests.support.studies import write_copy


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The nodule phantom (detections and segments) as a study on disk."""
    folder = tmp_path_factory.mktemp("outputs") / "study"
    return write_copy(make_nodule_phantom().datasets, folder)[1]


def _run(paths: Sequence[Path], outputs: object) -> StudyResult:
    return annotate_study(
        paths,
        rules=DEFAULT_RULES,
        pipelines=builtin_pipelines(),
        software_version="1.2.3",
        outputs=outputs,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def every_kind(study: list[Path]) -> StudyResult:
    return _run(study, ("seg", "sr", "rtstruct", "kos"))


def test_kind_names_are_checked_and_put_in_build_order() -> None:
    assert check_kinds(["kos", "seg", "kos"]) == ("seg", "kos")
    with pytest.raises(ValueError, match=r"unknown output 'pdf' \(known: seg, rtstruct"):
        check_kinds(["seg", "pdf"])
    assert kinds_to_build(["sr"]) == ("seg", "sr")  # the SR measures the SEG's segments
    assert kinds_to_build(["rtstruct"]) == ("rtstruct",)
    assert set(OUTPUT_KINDS) == {"seg", "sr", "rtstruct", "gsps", "kos", "sc"}
    # Every kind the settings accept has a writer, and the other way round.
    assert set(available_kinds()) == set(SERIES_KINDS) | set(STUDY_KINDS)


def test_an_objects_kind_is_known_from_its_sop_class(every_kind: StudyResult) -> None:
    assert [output_kind(ds) for ds in every_kind.outputs] == [
        "seg",
        "rtstruct",
        "rtstruct",
        "sr",
        "kos",
    ]
    other = Dataset()
    other.SOPClassUID = CTImageStorage  # a source image, never one of ours
    with pytest.raises(ValueError, match="not one of the output kinds"):
        output_kind(other)


def test_only_the_kinds_asked_for_are_built(study: list[Path], every_kind: StudyResult) -> None:
    result = _run(study, ("rtstruct", "kos"))
    assert [ds.Modality for ds in result.outputs] == ["RTSTRUCT", "RTSTRUCT", "KO"]
    assert result.report is None and result.kinds == ("rtstruct", "kos")
    nodules = next(o for o in result.outcomes if o.pipeline == "ct-lung-nodules")
    assert nodules.reason == "5 detection(s)"  # no "(in the SR)": there is none
    # The same inputs give the same UIDs, whichever other kinds were built beside them.
    by_uid = {ds.SOPInstanceUID: ds for ds in every_kind.outputs}
    for ds in result.outputs:
        assert ds.SOPInstanceUID in by_uid
        assert ds.SeriesInstanceUID == by_uid[ds.SOPInstanceUID].SeriesInstanceUID
    # A planner decides from the study's modalities and the pipelines that ran.
    asked: list[tuple[list[str], list[str]]] = []

    def planner(modalities: Sequence[str], pipelines: Sequence[str]) -> tuple[str, ...]:
        asked.append((list(modalities), list(pipelines)))
        return ("kos",)

    planned = _run(study, planner)
    assert asked == [(["CT", "CT"], ["ct-basic", "ct-lung-nodules"])]
    assert [ds.Modality for ds in planned.outputs] == ["KO"]


def test_every_output_names_its_algorithm_and_has_its_own_series(
    every_kind: StudyResult,
) -> None:
    outputs = every_kind.outputs
    assert len({ds.SOPInstanceUID for ds in outputs}) == len(outputs)
    assert len({ds.SeriesInstanceUID for ds in outputs}) == len(outputs)
    numbers = {(ds.Modality, int(ds.SeriesNumber)) for ds in outputs}
    assert len({n for _, n in numbers}) == len(numbers)
    for ds in outputs:
        equipment = [  # the algorithms' items (highdicom adds one of its own to some)
            e.ManufacturerModelName
            for e in ds.ContributingEquipmentSequence
            if e.Manufacturer == "pacs-annotator"
        ]
        assert equipment, ds.Modality
        for name in equipment:
            assert name in {"ct-basic", "ct-lung-nodules"}
        if ds.Modality in ("SEG", "RTSTRUCT"):
            assert ds.SeriesDescription.startswith("AI ")
            assert ds.SeriesDescription.endswith(f"({equipment[0]})")
            assert ds.SoftwareVersions == "1.2.3"


def test_a_kind_that_cannot_be_written_fails_its_outcome_and_the_rest_goes_on(
    study: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*_: object) -> tuple[Dataset, ...]:
        raise ValueError("no frame of reference")

    broken = registry.SeriesKind(**{**registry.SERIES_KINDS["rtstruct"].__dict__, "build": refuse})
    monkeypatch.setitem(registry.SERIES_KINDS, "rtstruct", broken)
    result = _run(study, ("seg", "sr", "rtstruct"))
    basic = next(o for o in result.outcomes if o.pipeline == "ct-basic")
    assert basic.status == "failed"
    assert basic.reason == "cannot write the RTSTRUCT: no frame of reference"
    assert [ds.Modality for ds in basic.outputs] == ["SEG"]
    assert result.report is not None and result.report.SOPClassUID == Comprehensive3DSRStorage


def test_an_unknown_kind_is_refused_before_any_work(study: list[Path]) -> None:
    with pytest.raises(ValueError, match="unknown output 'overlay'"):
        _run(study, ("overlay",))
