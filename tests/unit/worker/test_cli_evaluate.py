"""``pacs-annotator evaluate``: phantoms with analytic references, and the public CT with
its dcmqi reference SEG; JSON and HTML written; the HTML checked in headless Chromium."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydicom.sr.codedict import codes

from pipelines.volume import load_series
from tests.conftest import shared_data_path
from tests.support.phantom import DEFAULT_LUNGS, LUNG_NODULES, make_nodule_phantom
from tests.support.references import (
    lung_masks,
    write_reference_rtstruct,
    write_reference_seg,
    write_reference_sr,
)
from worker.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, main

CHROMIUM = "/usr/bin/chromium"  # what deploy/install.sh --dev installs (as the monitor's tests)


@pytest.fixture(scope="module")
def phantom_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The nodule phantom's images, a SEG of both lungs, an RTSTRUCT of the body and an SR
    of its six nodules (one labelled "Mass" to check that classes stay apart)."""
    folder = tmp_path_factory.mktemp("study")
    phantom = make_nodule_phantom(seed=5)
    for number, ds in enumerate(phantom.datasets):
        ds.save_as(folder / f"ct-{number:03d}.dcm", enforce_file_format=True)
    volume = load_series(phantom.datasets)
    write_reference_seg(volume, lung_masks(volume, DEFAULT_LUNGS), folder / "ref-seg.dcm")
    write_reference_rtstruct(volume, folder / "ref-rtstruct.dcm")
    lesions = [(n.centre, n.diameter, codes.SCT.Nodule) for n in LUNG_NODULES]
    write_reference_sr(volume, lesions, folder / "ref-sr.dcm")
    return folder


@pytest.fixture(scope="module")
def phantom_report(phantom_study: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    code = main(
        [
            "evaluate",
            str(phantom_study),
            "--out",
            str(out),
            "--map",
            "Lungs=Lung-Left,Lung-Right",
            "--map",
            "Body=BODY",
            "--match-mm",
            "5",
            "--no-progress",
        ]
    )
    assert code == EXIT_OK
    return out


def test_phantom_structures_score_as_expected(phantom_report: Path) -> None:
    data = json.loads((phantom_report / "evaluation.json").read_text())
    structures = data["structures"]
    # The mapped names only: "Lung-Left" + "Lung-Right" (SEG) became "Lungs", "BODY"
    # (RTSTRUCT) became "Body", both matching ct-basic's segments.
    assert set(structures) == {"Lungs", "Body"}
    assert structures["Lungs"]["dice_mean"] > 0.9
    assert structures["Body"]["dice_mean"] > 0.95
    assert 0.0 <= structures["Lungs"]["hd95_mm_mean"] < 10.0
    (case,) = data["cases"]
    assert case["status"] == "scored"
    assert set(case["pipelines"]) == {"ct-basic", "ct-lung-nodules"}
    assert case["seconds"] > 0


def test_phantom_nodules_are_matched(phantom_report: Path) -> None:
    data = json.loads((phantom_report / "evaluation.json").read_text())
    nodules = data["detections"]["Nodule"]
    assert nodules["references"] == len(LUNG_NODULES)
    # ct-lung-nodules finds every sphere of 6 mm or more, and nothing else (its own test):
    # at least 5 of 6 (the 4 mm one is below what it promises), no false positive.
    assert nodules["true_positives"] >= 5
    assert nodules["precision"] == 1.0
    assert nodules["froc_fps_per_scan"] and nodules["froc_sensitivity"]
    assert "within 5 mm" in data["matching_rule"]


def test_html_report_shows_plots_and_cases(phantom_report: Path) -> None:
    html = (phantom_report / "evaluation.html").read_text()
    assert 'id="froc-plot"' in html and 'id="dice-plot"' in html
    assert html.count('class="thumb"') == 1
    assert "<script" not in html


def test_html_report_renders_in_chromium(phantom_report: Path) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is absent (deploy/install.sh --dev installs it)")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto((phantom_report / "evaluation.html").as_uri())
            # Every embedded image decoded to real pixels.
            widths = page.eval_on_selector_all("img", "els => els.map(e => e.naturalWidth)")
            rows = page.eval_on_selector_all("#structures tr", "els => els.length")
        finally:
            browser.close()
    assert len(widths) == 3 and all(w > 50 for w in widths)
    assert rows == 3  # header + Lungs + Body


def test_public_ct_with_its_dcmqi_reference_seg(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Real CT (3 slices) and the liver SEG dcmqi wrote for it: no pipeline segments the
    liver, so it is scored Dice 0 with no distance, and the report says so."""
    source = shared_data_path("reference-seg-sr", "dcmqi", "segmentations")
    study = tmp_path / "study"
    study.mkdir()
    for path in sorted((source / "ct-3slice").glob("*.dcm")):
        (study / path.name).symlink_to(path)
    (study / "liver.dcm").symlink_to(source / "liver.dcm")
    out = tmp_path / "out"
    assert main(["evaluate", str(study), "--out", str(out), "--no-progress"]) == EXIT_OK
    data = json.loads((out / "evaluation.json").read_text())
    assert data["structures"]["Liver"]["dice_mean"] == 0.0
    assert data["structures"]["Liver"]["hd95_mm_mean"] is None
    assert data["detections"] == {}  # a SEG-only reference says nothing about lesions
    (case,) = data["cases"]
    assert case["status"] == "scored" and case["pipelines"]
    assert (out / "evaluation.html").read_text().count('class="thumb"') == 1
    assert "structure Liver: Dice mean 0.000" in capsys.readouterr().out


def test_studies_without_reference_are_listed_not_scored(tmp_path: Path) -> None:
    study = tmp_path / "study"
    study.mkdir()
    for number, ds in enumerate(make_nodule_phantom(seed=2).datasets[:3]):
        ds.save_as(study / f"{number}.dcm", enforce_file_format=True)
    out = tmp_path / "out"
    assert main(["evaluate", str(study), "--out", str(out), "--no-progress"]) == EXIT_OK
    (case,) = json.loads((out / "evaluation.json").read_text())["cases"]
    assert case["status"] == "no reference"


@pytest.mark.parametrize(
    "option", [["--map", "Lungs"], ["--map", "A=x", "--map", "B=x"], ["--match-mm", "0"]]
)
def test_bad_options_exit_2(tmp_path: Path, option: list[str]) -> None:
    assert main(["evaluate", str(tmp_path), "--out", str(tmp_path / "o"), *option]) == EXIT_USAGE


def test_masks_of_the_reference_seg_land_on_the_phantom_lungs(phantom_study: Path) -> None:
    """The reference SEG read back onto the grid gives the analytic lungs (reader check)."""
    import pydicom

    from pipelines.evaluation.references import seg_masks
    from pipelines.volume import scan_files

    images = sorted(phantom_study.glob("ct-*.dcm"))
    volume = load_series(next(iter(scan_files(images).series.values())))
    masks = seg_masks(pydicom.dcmread(phantom_study / "ref-seg.dcm"), volume)
    truth = lung_masks(volume, DEFAULT_LUNGS)
    for name in ("Lung-Left", "Lung-Right"):
        assert np.array_equal(masks[name], truth[name])


def test_a_reference_in_another_frame_fails_the_study_with_the_reason(
    phantom_study: Path, tmp_path: Path
) -> None:
    import pydicom

    study = tmp_path / "study"
    study.mkdir()
    for path in phantom_study.glob("ct-*.dcm"):
        (study / path.name).symlink_to(path)
    seg = pydicom.dcmread(phantom_study / "ref-seg.dcm")
    seg.FrameOfReferenceUID = "1.2.3.4"
    seg.save_as(study / "ref-seg.dcm")
    out = tmp_path / "out"
    assert main(["evaluate", str(study), "--out", str(out), "--no-progress"]) == EXIT_FAILED
    (case,) = json.loads((out / "evaluation.json").read_text())["cases"]
    assert case["status"] == "failed"
    assert "another frame of reference" in case["reason"]
    assert "another frame of reference" in (out / "evaluation.html").read_text()
