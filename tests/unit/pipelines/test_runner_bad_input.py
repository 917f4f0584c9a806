"""The bad input corpus through the runner alone (no network): one outcome per item, no crash."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.registry import builtin_pipelines
from pipelines.routing import DEFAULT_RULES
from pipelines.runner import annotate_study
from tests.support import bad_inputs

# builder -> (status of every outcome, fragment of the reason)
EXPECTED = {
    bad_inputs.truncated: ("failed", "cannot decode pixel data of instance"),
    bad_inputs.non_dicom: ("failed", "DICOM file without a SeriesInstanceUID"),
    bad_inputs.dicomdir: ("failed", "DICOM file without a SeriesInstanceUID"),
    bad_inputs.missing_pixel_data: ("failed", "series of SOP class CT Image Storage has no pixel"),
    bad_inputs.structured_report: ("skipped", "no routing rule matches modality SR"),
    bad_inputs.encapsulated_pdf: ("skipped", "no routing rule matches modality DOC"),
    bad_inputs.mixed_orientations: ("failed", "mixed ImageOrientationPatient"),
    bad_inputs.one_slice: ("done", ""),
    bad_inputs.enhanced_multiframe_ct: ("done", ""),
    bad_inputs.gap_too_large: ("failed", "too large to interpolate"),
    bad_inputs.repeated_positions: ("failed", "duplicate slice position"),
}


def test_every_corpus_item_has_an_expectation() -> None:
    assert set(EXPECTED) == set(bad_inputs.BUILDERS)


@pytest.mark.parametrize("build", bad_inputs.BUILDERS, ids=lambda b: b.__name__)
def test_runner_outcome(build: object, tmp_path: Path) -> None:
    item = build(tmp_path / "item")  # type: ignore[operator]
    result = annotate_study(
        item.files, rules=DEFAULT_RULES, pipelines=builtin_pipelines(), software_version="t"
    )
    status, fragment = EXPECTED[build]  # type: ignore[index]
    assert result.outcomes, "every input is accounted for"
    for outcome in result.outcomes:
        assert outcome.status == status, outcome
        assert fragment in (outcome.reason or ""), outcome.reason
    assert bool(result.outputs) == (status == "done")
