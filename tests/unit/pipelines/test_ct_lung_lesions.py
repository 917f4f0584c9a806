"""ct-lung-nodules on lesions of every size: 5 mm nodules to 10 cm masses, free or attached
to the chest wall, mediastinum, hilum or diaphragm, round, lobulated or spiculated.

One phantom holds them all (built once: it is the slow part). Each lesion must give
exactly one finding whose centre lies inside it, of the right category (nodule < 3 cm,
mass >= 3 cm), with its size; nothing may be reported away from the lesions.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from pipelines.ct_lung_nodules import MASS, NODULE, CtLungNodulesPipeline, lung_envelope
from pipelines.findings import Detection, Findings
from pipelines.registry import builtin_pipelines
from pipelines.routing import DEFAULT_RULES
from pipelines.runner import annotate_study
from pipelines.volume import Volume, load_series
from tests.support.dicom_validate import dciodvfy_errors, pixelmed_sr_errors
from tests.support.lesions import attached_lesion, free_lesion, make_lesion_phantom
from tests.support.phantom import CtPhantom, Lesion

#: (size mm, where, lung (0 right, 1 left), shape): the representative cases; "free"
#: lesions float in either lung, clear of the others.
CASES: tuple[tuple[float, str, int, str], ...] = (
    (95.0, "chest wall", 0, "lobulated"),
    (50.0, "mediastinum", 1, "spiculated"),
    (40.0, "hilum", 0, "round"),
    (35.0, "diaphragm", 1, "lobulated"),
    (12.0, "chest wall", 1, "round"),
    (6.0, "free", 0, "round"),
    (10.0, "free", 0, "spiculated"),
    (18.0, "free", 0, "lobulated"),
)


@pytest.fixture(scope="module")
def lesions() -> list[Lesion]:
    rng = np.random.default_rng(7)
    placed: list[Lesion] = []
    for size, where, side, shape in CASES:
        if where == "free":
            placed.append(free_lesion(size, shape, rng, placed))  # type: ignore[arg-type]
        else:
            placed.append(attached_lesion(size, where, side, shape, rng))  # type: ignore[arg-type]
    return placed


@pytest.fixture(scope="module")
def phantom(lesions: list[Lesion]) -> CtPhantom:
    return make_lesion_phantom(lesions, seed=3)


@pytest.fixture(scope="module")
def findings(phantom: CtPhantom) -> Findings:
    return CtLungNodulesPipeline().run(load_series(phantom.datasets))


def _inside(detection: Detection, lesion: Lesion) -> bool:
    """The finding's centre lies within the lesion's main sphere."""
    distance = np.linalg.norm(np.array(detection.centre_mm) - np.array(lesion.centre))
    return bool(distance <= lesion.diameter / 2.0)


def test_each_lesion_gives_exactly_one_finding(findings: Findings, lesions: list[Lesion]) -> None:
    for lesion in lesions:
        hits = [d for d in findings.detections if _inside(d, lesion)]
        assert len(hits) == 1, (lesion.diameter, lesion.shape, lesion.centre, hits)


def test_nothing_is_reported_away_from_the_lesions(
    findings: Findings, lesions: list[Lesion]
) -> None:
    for detection in findings.detections:
        assert any(_inside(detection, lesion) for lesion in lesions), detection


@pytest.mark.parametrize("number", range(len(CASES)))
def test_category_and_size(findings: Findings, lesions: list[Lesion], number: int) -> None:
    lesion = lesions[number]
    (hit,) = [d for d in findings.detections if _inside(d, lesion)]
    expected = MASS if lesion.diameter >= 30.0 else NODULE
    assert hit.finding_type == expected
    assert hit.label.startswith("Mass " if expected == MASS else "Nodule ")
    # The part of an attached lesion beyond the lung's edge is not seen (20% here, and
    # the hull line cuts some more); lobes add to the main sphere's size, and so do the
    # roots of spicules (thicker than the opening where they leave the lesion).
    low, high = {"round": (0.75, 1.25), "lobulated": (0.7, 1.35), "spiculated": (0.7, 1.5)}[
        lesion.shape
    ]
    assert low * lesion.diameter <= hit.longest_diameter_mm <= high * lesion.diameter


def test_codes_are_the_sct_nodule_and_mass() -> None:
    assert codes.SCT.Nodule == NODULE and NODULE.value == "27925004"
    assert codes.SCT.Mass == MASS and MASS.value == "4147007"


def test_envelope_closes_a_bite_in_the_lung_outline() -> None:
    """A lung slice with a notch (where a wall lesion sits) gets the notch back."""
    lung = np.zeros((1, 40, 40), dtype=bool)
    lung[0, 5:35, 5:35] = True
    lung[0, 15:25, 25:35] = False  # the bite of a lesion against the wall at the right
    envelope = lung_envelope(lung, (2.0, 1.0, 1.0))
    assert envelope[0, 15:25, 25:34].all()
    assert not envelope[0, :5].any() and not envelope[0, :, 36:].any()


def test_real_ct_lung_bases_give_no_mass(real_volume: Volume) -> None:
    """The envelope holds the liver dome and heart under the real CT's lung bases: the
    size, contact and shape filters must keep them from being reported as masses."""
    findings = CtLungNodulesPipeline().run(real_volume)
    assert not [d for d in findings.detections if d.finding_type == MASS]
    assert len(findings.detections) <= 3


def test_sr_with_masses_and_nodules_validates(phantom: CtPhantom, tmp_path: Path) -> None:
    """The SR the worker writes for these findings: Mass and Nodule groups with their Long
    Axis, and zero errors from dciodvfy and PixelMed's DicomSRValidator."""
    paths = []
    for number, ds in enumerate(phantom.datasets):
        path = tmp_path / f"{number:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    result = annotate_study(
        paths,
        rules=DEFAULT_RULES,
        pipelines=builtin_pipelines(),
        software_version="test",
        only="ct-lung-nodules",
    )
    assert result.report is not None
    sr_path = tmp_path / "sr.dcm"
    result.report.save_as(sr_path, enforce_file_format=True)
    finding_types = set()
    long_axes = []
    for item in _walk(result.report):
        if "ConceptNameCodeSequence" not in item:
            continue
        concept = item.ConceptNameCodeSequence[0].CodeValue
        if concept == codes.DCM.Finding.value and "ConceptCodeSequence" in item:
            finding_types.add(item.ConceptCodeSequence[0].CodeValue)
        if concept == codes.SCT.LongAxis.value:
            long_axes.append(float(item.MeasuredValueSequence[0].NumericValue))
    assert {MASS.value, NODULE.value} <= finding_types
    assert max(long_axes) > 60.0  # the 95 mm mass's size is in the SR
    assert dciodvfy_errors(sr_path) == []
    assert pixelmed_sr_errors(sr_path) == []


def _walk(dataset: Dataset) -> Iterator[Dataset]:
    for item in dataset.get("ContentSequence", []):
        yield item
        yield from _walk(item)
