"""The gsps and sc output kinds through annotate_study: built when asked, idempotent UIDs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes
from pydicom.uid import GrayscaleSoftcopyPresentationStateStorage, SecondaryCaptureImageStorage

from pipelines.findings import Algorithm, Findings, Segment
from pipelines.marks import NothingToDrawError
from pipelines.outputs import SERIES_KINDS, OutputIds, OutputOptions, output_kind
from pipelines.registry import builtin_pipelines
from pipelines.routing import DEFAULT_RULES
from pipelines.runner import StudyResult, annotate_study
from pipelines.volume import Volume
from tests.support.phantom import make_ct_phantom


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("overlay-study")
    paths = []
    for n, ds in enumerate(make_ct_phantom(slices=24, size=64, pixel_spacing=5.5).datasets):
        path = folder / f"ct{n:03}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _run(paths: list[Path], outputs: tuple[str, ...], **kwargs: object) -> StudyResult:
    options: dict[str, object] = {
        "rules": DEFAULT_RULES,
        "pipelines": builtin_pipelines(),
        "software_version": "0.0.1",
        "outputs": outputs,
    }
    options.update(kwargs)
    return annotate_study(paths, **options)  # type: ignore[arg-type]


def test_gsps_and_sc_are_written_when_asked_and_only_then(study: list[Path]) -> None:
    result = _run(study, ("gsps", "sc"))
    assert not result.failures, [o.reason for o in result.failures]
    kinds = [output_kind(ds) for ds in result.outputs]
    assert set(kinds) == {"gsps", "sc"}
    (gsps,) = [ds for ds in result.outputs if output_kind(ds) == "gsps"]
    captures = [ds for ds in result.outputs if output_kind(ds) == "sc"]
    assert gsps.SOPClassUID == GrayscaleSoftcopyPresentationStateStorage
    assert {ds.SOPClassUID for ds in captures} == {SecondaryCaptureImageStorage}
    source_number = int(pydicom.dcmread(study[0], stop_before_pixels=True).SeriesNumber)
    assert gsps.SeriesNumber == 3000 + source_number
    assert {ds.SeriesNumber for ds in captures} == {4000 + source_number}
    assert len({ds.SOPInstanceUID for ds in captures}) == len(captures)
    # a rerun gives the same UIDs: the PACS replaces instead of adding a copy
    again = _run(study, ("gsps", "sc"))
    assert [ds.SOPInstanceUID for ds in again.outputs] == [
        ds.SOPInstanceUID for ds in result.outputs
    ]
    assert {output_kind(ds) for ds in _run(study, ("seg",)).outputs} == {"seg"}


class _FewSlices:
    """A segment on slices 5 to 9 only."""

    name = "few-slices"
    algorithm = Algorithm("few-slices", "1")
    modalities = frozenset({"CT"})

    def run(self, volume: Volume) -> Findings:
        mask = np.zeros(volume.voxels.shape, dtype=bool)
        mask[5:10, 20:40, 20:40] = True
        segment = Segment("Box", mask, codes.SCT.Tissue, codes.SCT.Tissue)
        return Findings(self.algorithm, segments=(segment,))


def test_sc_every_slice_is_an_option(study: list[Path]) -> None:
    pipelines = {"few-slices": _FewSlices()}
    some = _run(study, ("sc",), pipelines=pipelines, rules=(), only="few-slices")
    assert len(some.outputs) == 5
    every = _run(
        study,
        ("sc",),
        pipelines=pipelines,
        rules=(),
        only="few-slices",
        options=OutputOptions(sc_every_slice=True),
    )
    assert len(every.outputs) == len(study)


@pytest.mark.parametrize("kind", ["gsps", "sc"])
def test_nothing_to_draw_is_refused(kind: str, phantom_volume: Volume) -> None:
    """Empty segments and no detection: refused with the reason (the runner only asks for
    a kind whose ``applies`` holds, so a job never gets here)."""
    nothing = np.zeros(phantom_volume.voxels.shape, dtype=bool)
    empty = Segment("Nothing", nothing, codes.SCT.Tissue, codes.SCT.Tissue)
    findings = Findings(Algorithm("test", "1"), segments=(empty,))
    kind_entry = SERIES_KINDS[kind]
    assert not kind_entry.applies(findings)
    ids = OutputIds(kind, ("key",), 1)
    with pytest.raises(NothingToDrawError, match="nothing to draw"):
        kind_entry.build(phantom_volume, findings, ids, "1", OutputOptions())


@pytest.mark.parametrize("kind", ["gsps", "sc"])
def test_a_mask_off_the_volume_grid_is_refused(kind: str, phantom_volume: Volume) -> None:
    wrong = np.ones((2, 3, 4), dtype=bool)
    findings = Findings(
        Algorithm("test", "1"),
        segments=(Segment("Wrong", wrong, codes.SCT.Tissue, codes.SCT.Tissue),),
    )
    ids = OutputIds(kind, ("key",), 1)
    with pytest.raises(ValueError, match=r"'Wrong': mask shape .* does not match the volume"):
        SERIES_KINDS[kind].build(phantom_volume, findings, ids, "1", OutputOptions())
