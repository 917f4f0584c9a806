"""annotate_study: routing, skips, failures, determinism and logging without PHI."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from pipelines.base import Pipeline
from pipelines.ct_basic import CtBasicPipeline
from pipelines.errors import InputError
from pipelines.findings import Algorithm, Findings, Segment
from pipelines.registry import builtin_pipelines
from pipelines.routing import DEFAULT_RULES, RoutingRule
from pipelines.runner import StudyResult, annotate_study
from pipelines.volume import Volume
from tests.support.dicom_validate import dciodvfy_errors
from tests.support.phantom import make_ct_phantom

STUDY_UID = "2.25.4242"


def _save(datasets: list[Dataset], folder: Path, prefix: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, ds in enumerate(datasets):
        path = folder / f"{prefix}{n:03}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


@pytest.fixture
def study_dir(tmp_path: Path) -> Path:
    """One small phantom CT series on disk, slices in random order."""
    datasets = make_ct_phantom(
        slices=40, size=96, pixel_spacing=3.5, shuffle=True, study_uid=STUDY_UID
    ).datasets
    _save(datasets, tmp_path / "study", "ct")
    return tmp_path / "study"


def _run(folder: Path, **kwargs: object) -> StudyResult:
    options: dict[str, object] = {
        "rules": DEFAULT_RULES,
        "pipelines": builtin_pipelines(),
        "software_version": "0.0.1",
    }
    options.update(kwargs)
    return annotate_study(sorted(folder.iterdir()), **options)  # type: ignore[arg-type]


def _seg_and_sr(result: StudyResult) -> tuple[Dataset, Dataset]:
    seg, sr = result.outputs
    assert (seg.Modality, sr.Modality) == ("SEG", "SR")
    assert result.report is sr
    return seg, sr


def test_ct_series_gets_one_seg_and_reruns_give_identical_uids(study_dir: Path) -> None:
    first, second = _run(study_dir), _run(study_dir)
    assert [(o.pipeline, o.status) for o in first.outcomes] == [
        ("ct-basic", "done"),
        ("ct-lung-nodules", "done"),
    ]
    assert first.outcomes[0].modality == "CT"
    seg, sr = _seg_and_sr(first)
    again, sr_again = _seg_and_sr(second)
    assert seg.StudyInstanceUID == sr.StudyInstanceUID == STUDY_UID
    assert (seg.SOPInstanceUID, seg.SeriesInstanceUID) == (
        again.SOPInstanceUID,
        again.SeriesInstanceUID,
    )
    assert (sr.SOPInstanceUID, sr.SeriesInstanceUID) == (
        sr_again.SOPInstanceUID,
        sr_again.SeriesInstanceUID,
    )
    assert seg.SeriesInstanceUID != first.outcomes[0].series_uid
    assert len({seg.SeriesInstanceUID, sr.SeriesInstanceUID, first.outcomes[0].series_uid}) == 3
    path = study_dir.parent / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []
    algorithms = {
        item.ManufacturerModelName
        for item in sr.ContributingEquipmentSequence
        if "ManufacturerModelName" in item
    }
    assert {"ct-basic", "ct-lung-nodules"} <= algorithms
    # ct-basic's segments and ct-lung-nodules' "nothing found" are both in the SR.
    segment_codes = {
        item.ConceptCodeSequence[0].CodeValue
        for group in _container(sr, "126010").ContentSequence
        for item in group.ContentSequence
        if item.ValueType == "CODE"
    }
    assert "39607008" in segment_codes
    assert ("Finding", "Clinical finding absent") in _statements(_container(sr, "C0034375"))


def test_different_input_gives_different_uids(study_dir: Path, tmp_path: Path) -> None:
    other = make_ct_phantom(
        slices=40, size=96, pixel_spacing=3.5, seed=7, study_uid=STUDY_UID
    ).datasets
    _save(other, tmp_path / "other", "ct")
    first, other = _run(study_dir).outputs, _run(tmp_path / "other").outputs
    assert {ds.SOPInstanceUID for ds in first}.isdisjoint(ds.SOPInstanceUID for ds in other)


def test_our_seg_and_sr_coming_back_are_skipped(study_dir: Path) -> None:
    seg, sr = _seg_and_sr(_run(study_dir))
    seg.save_as(study_dir / "seg.dcm", enforce_file_format=True)
    sr.save_as(study_dir / "sr.dcm", enforce_file_format=True)

    result = _run(study_dir)

    skipped = {o.modality: o.reason for o in result.skipped}
    assert skipped == {
        "SEG": "no routing rule matches modality SEG",
        "SR": "no routing rule matches modality SR",
    }
    assert [o.status for o in result.outcomes if o.modality == "CT"] == ["done", "done"]
    assert [ds.SOPInstanceUID for ds in result.outputs] == [seg.SOPInstanceUID, sr.SOPInstanceUID]


def test_seg_is_skipped_even_by_a_catch_all_rule(study_dir: Path) -> None:
    seg, _ = _seg_and_sr(_run(study_dir))
    seg.save_as(study_dir / "seg.dcm", enforce_file_format=True)
    result = _run(study_dir, rules=[RoutingRule(pipelines=("ct-basic",))])
    [skipped] = result.skipped
    assert skipped.reason is not None and "not images" in skipped.reason


def test_unreadable_files_are_recorded_and_the_rest_runs(study_dir: Path) -> None:
    (study_dir / "garbage.dcm").write_bytes(b"\x00" * 10)
    good = (study_dir / "ct000.dcm").read_bytes()
    (study_dir / "truncated.dcm").write_bytes(good[:300])

    result = _run(study_dir)

    reasons = sorted(o.reason or "" for o in result.failures)
    assert len(reasons) == 2
    assert "garbage.dcm" in reasons[0] and "truncated.dcm" in reasons[1]
    assert all(o.series_uid == "" and o.pipeline is None for o in result.failures)
    _seg_and_sr(result)


def test_bad_series_fails_alone(study_dir: Path, tmp_path: Path) -> None:
    broken = make_ct_phantom(
        slices=12, size=64, pixel_spacing=5.5, seed=3, study_uid=STUDY_UID
    ).datasets
    del broken[5:7]  # two missing slices: a gap too large to interpolate
    _save(broken, study_dir, "broken")

    result = _run(study_dir)

    failures = result.failures
    assert [f.pipeline for f in failures] == ["ct-basic", "ct-lung-nodules"]
    for failure in failures:
        assert failure.series_uid == broken[0].SeriesInstanceUID
        assert failure.reason is not None and "slice spacing is not uniform" in failure.reason
    _, sr = _seg_and_sr(result)
    assert broken[0].SeriesInstanceUID not in {
        series.SeriesInstanceUID
        for evidence in sr.CurrentRequestedProcedureEvidenceSequence
        for series in evidence.ReferencedSeriesSequence
    }


@dataclass
class _FakePipeline:
    """A pipeline that finds nothing, or refuses the input."""

    name: str
    algorithm: Algorithm
    modalities: frozenset[str]
    refuse: bool = False

    def run(self, volume: Volume) -> Findings:
        if self.refuse:
            raise InputError("contrast phase not supported")
        empty = np.zeros(volume.voxels.shape, dtype=bool)
        segment = Segment("Nothing", empty, codes.SCT.AnatomicalStructure, codes.SCT.Lung)
        return Findings(self.algorithm, (segment,))


def _fake(refuse: bool = False) -> Pipeline:
    return _FakePipeline("fake", Algorithm("fake", "1"), frozenset({"CT"}), refuse)


def test_nothing_found_is_done_without_seg_but_the_sr_says_so(study_dir: Path) -> None:
    result = _run(study_dir, pipelines={"fake": _fake()}, rules=(), only="fake")
    [outcome] = result.outcomes
    assert outcome.status == "done"
    assert outcome.outputs == ()
    assert outcome.reason is not None and "no findings" in outcome.reason
    [sr] = result.outputs
    assert sr is result.report and sr.Modality == "SR"
    evaluations = _container(sr, "C0034375")
    assert _statements(evaluations) == [("Finding", "Clinical finding absent")]
    [comment] = [item.TextValue for item in evaluations.ContentSequence if item.ValueType == "TEXT"]
    assert comment.startswith("No findings (fake ")
    assert not [i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "126010"]
    again = _run(study_dir, pipelines={"fake": _fake()}, rules=(), only="fake").report
    assert again is not None and again.SOPInstanceUID == sr.SOPInstanceUID


def test_no_sr_when_no_series_was_processed(study_dir: Path) -> None:
    result = _run(study_dir, rules=[RoutingRule(pipelines=("ct-basic",), modality="MR")])
    assert [o.status for o in result.outcomes] == ["skipped"]
    assert result.report is None and result.outputs == ()


def test_refused_series_is_not_reported_as_examined(study_dir: Path) -> None:
    result = _run(study_dir, pipelines={"fake": _fake(refuse=True)}, rules=(), only="fake")
    assert [o.status for o in result.outcomes] == ["failed"]
    assert result.report is None


def _container(sr: Dataset, code_value: str) -> Dataset:
    """The root's container with this concept (126010 measurements, C0034375 evaluations)."""
    [container] = [
        item
        for item in sr.ContentSequence
        if item.ConceptNameCodeSequence[0].CodeValue == code_value
    ]
    return container


def _statements(group: Dataset) -> list[tuple[str, str]]:
    return [
        (item.ConceptNameCodeSequence[0].CodeMeaning, item.ConceptCodeSequence[0].CodeMeaning)
        for item in group.ContentSequence
        if item.ValueType == "CODE" and item.RelationshipType == "CONTAINS"
    ]


def test_pipeline_input_error_fails_the_series(study_dir: Path) -> None:
    rules = [RoutingRule(pipelines=("ct-basic", "fake"), modality="CT")]
    result = _run(
        study_dir,
        pipelines={"fake": _fake(refuse=True), "ct-basic": CtBasicPipeline()},
        rules=rules,
    )
    assert [(o.pipeline, o.status) for o in result.outcomes] == [
        ("ct-basic", "done"),
        ("fake", "failed"),
    ]
    assert result.failures[0].reason == "contrast phase not supported"


def test_only_forces_the_pipeline_but_respects_its_modalities(
    study_dir: Path, tmp_path: Path
) -> None:
    mr = make_ct_phantom(
        slices=6, size=32, pixel_spacing=11.0, seed=5, study_uid=STUDY_UID
    ).datasets
    for ds in mr:
        ds.Modality = "MR"
    _save(mr, study_dir, "mr")
    result = _run(study_dir, rules=(), only="ct-basic")
    by_modality = {o.modality: o for o in result.outcomes}
    assert by_modality["CT"].status == "done"
    assert by_modality["MR"].status == "skipped"
    assert by_modality["MR"].reason == "pipeline ct-basic handles CT, not MR"


def test_unknown_pipeline_is_a_configuration_error(study_dir: Path) -> None:
    with pytest.raises(ValueError, match="'nope'"):
        _run(study_dir, only="nope")
    with pytest.raises(ValueError, match="'ghost'"):
        _run(study_dir, rules=[RoutingRule(pipelines=("ghost",))])


def test_logs_carry_uids_but_no_phi(study_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    (study_dir / "garbage.dcm").write_bytes(b"junk")
    with caplog.at_level(logging.DEBUG):
        result = _run(study_dir)
    template = make_ct_phantom(slices=1, size=8, pixel_spacing=1.0).datasets[0]
    assert result.outcomes[-1].series_uid in caplog.text
    for phi in (
        str(template.PatientName),
        template.PatientID,
        template.SeriesDescription,
        template.StudyDescription,
    ):
        assert phi not in caplog.text
