"""What a radiologist sees: our SEG, SR and RTSTRUCT, after a real round trip, in OHIF.

Orthanc (DICOMweb) and the OHIF Viewer (npm ``@ohif/app``, from ``deploy/install.sh --dev``)
share one origin (``tests.support.ohif.OhifServer``); `pacs-annotator up` annotates a
synthetic chest CT with nodules sent from Orthanc; Debian's Chromium (SwiftShader WebGL)
then opens the study in OHIF's basic viewer:

* SEG: every segment is listed in the segmentation panel with our label and the colour of
  its RecommendedDisplayCIELabValue, and the overlay is drawn in that colour;
* SR: OHIF builds one measurement per tracking UID with image-referenced geometry, as many
  as the SR holds (at least one per detection); stepping through them in the SR viewport
  shows each on the image the SR references, with its mark and values drawn;
* RTSTRUCT (the destination asks for ``outputs: [seg, sr, rtstruct, kos, sc]``): every ROI
  is listed under its name in its colour, OHIF places each contour on the image the
  RTSTRUCT references, and selecting an ROI shows one of its images with its outline
  drawn; the KOS is listed and marked unsupported (OHIF 3.13 has no KOS handler);
* SC: each secondary capture series (the findings burned in) is listed as an image series
  and shows as images: the viewport loads its instances and draws their colours;
* never a TypeError, an uncaught exception or OHIF's error boundary.

Screenshots go to the test's tmp dir; with ``PACS_ANNOTATOR_README_SCREENSHOT=1`` the SEG and
a detection side by side are also written to ``docs/images/ohif-seg-sr.png``, the RTSTRUCT
to ``docs/images/ohif-rtstruct.png`` and two secondary captures to
``docs/images/ohif-sc.png`` (the README's).
Every wait is on a condition (the viewer's state, the DOM, or the rendered pixels).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pydicom
import pytest
import yaml
from PIL import Image
from pydicom.dataset import Dataset

from tests.conftest import REPO_ROOT
from tests.integration.conftest import run_up, write_config
from tests.integration.test_round_trip import fetch_one, instances_of_modality, send_and_wait
from tests.support.ohif import (
    OHIF_VERSION,
    OhifServer,
    RtRoi,
    SegSegment,
    SrMark,
    dicomweb_config,
    require_ohif,
    rt_rois,
    seg_segments,
    sr_marks,
)
from tests.support.orthanc import Orthanc, require_orthanc
from tests.support.phantom import make_nodule_phantom
from tests.support.processes import free_port, require_binaries

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
# Headless Chromium has no GPU: WebGL2 (cornerstone3D needs it) through SwiftShader.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--use-gl=angle",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--ignore-gpu-blocklist",
]
VIEWPORT = {"width": 1600, "height": 1000}
UI_TIMEOUT_MS = 60_000
#: Drawn alone, a segment's pixels may take another segment's colour for at most this share.
MAX_CONFUSED = 0.1
README_IMAGE = REPO_ROOT / "docs" / "images" / "ohif-seg-sr.png"
README_RTSTRUCT_IMAGE = REPO_ROOT / "docs" / "images" / "ohif-rtstruct.png"
README_SC_IMAGE = REPO_ROOT / "docs" / "images" / "ohif-sc.png"
#: What the PACS receives: OHIF is tested with every kind it may show.
OUTPUTS = ["seg", "sr", "rtstruct", "kos", "sc"]
# OHIF's onboarding tour would cover the viewport: mark it as already shown.
INIT_SCRIPT = "localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']));"

T = TypeVar("T")


@dataclass
class ViewerStudy:
    """A study that went through `up`, in an Orthanc that OHIF reads."""

    viewer: OhifServer
    study_uid: str
    job: dict[str, Any]
    seg: Dataset
    sr: Dataset
    rtstructs: dict[str, Dataset]  # by algorithm (ct-basic, ct-lung-nodules)
    #: The secondary captures delivered (headers and pixels), every series of them.
    captures: Sequence[Dataset]
    shots: Path

    @property
    def detections(self) -> int:
        for outcome in self.job["outcomes"]:
            if outcome["pipeline"] == "ct-lung-nodules":
                found = re.search(r"(\d+) detection", outcome["reason"] or "")
                return int(found.group(1)) if found else 0
        return 0


@dataclass
class Console:
    """Everything the page said; the failures the viewer must never show."""

    messages: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        type_errors = [m for m in self.messages if "TypeError" in m and not _skipped_group(m)]
        return [f"uncaught: {e}" for e in self.page_errors] + type_errors

    def skipped_groups(self) -> int:
        """Groups OHIF's tracking left out, each with a warning (see ``_skipped_group``)."""
        return sum(1 for m in self.messages if _skipped_group(m))


def _skipped_group(message: str) -> bool:
    """OHIF's warning for an SR group its tracking cannot turn into one of its tools.

    On "track measurements" OHIF converts each group it can (our detections' boxes) and
    skips the others with this warning, which quotes the exception its converters raised
    (a TypeError for a group without a top-level SCOORD, like a segment's TID 1411 group).
    """
    return message.startswith("warning: Unable to generate tool state for")


@pytest.fixture(scope="module")
def viewer_study(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ViewerStudy]:
    require_orthanc()
    require_binaries("redis-server", CHROMIUM)
    require_ohif()
    root = tmp_path_factory.mktemp("ohif")
    port = free_port()  # OHIF's origin: Orthanc must know it for the URLs it writes
    with (
        Orthanc(extra_config={"DicomWeb": dicomweb_config(port)}, graceful_stop=False) as pacs,
        OhifServer(pacs.dicomweb_url, port=port) as viewer,
    ):
        phantom = make_nodule_phantom()
        for i, ds in enumerate(phantom.datasets):
            path = root / f"ct{i:03d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            pacs.upload(path)
        study_uid = str(phantom.datasets[0].StudyInstanceUID)
        service_port = free_port()
        config = write_config(
            root / "config.yaml", data_dir=root / "data", port=service_port, orthanc=pacs
        )
        settings = yaml.safe_load(config.read_text())
        settings["destinations"]["orthanc"]["outputs"] = OUTPUTS
        config.write_text(yaml.safe_dump(settings))
        with run_up(config, port=service_port, orthanc=pacs, timeout=90) as service:
            job = send_and_wait(pacs, service, study_uid)
        _, seg = fetch_one(pacs, study_uid, "SEG", root)
        _, sr = fetch_one(pacs, study_uid, "SR", root)
        rtstructs: dict[str, Dataset] = {}
        for index, instance in enumerate(instances_of_modality(pacs, study_uid, "RTSTRUCT")):
            ds = pydicom.dcmread(pacs.download_instance(instance, root / f"rt{index}.dcm"))
            rtstructs[str(ds.ContributingEquipmentSequence[0].ManufacturerModelName)] = ds
        captures = [
            pydicom.dcmread(pacs.download_instance(instance, root / f"sc-{n}.dcm"))
            for n, instance in enumerate(instances_of_modality(pacs, study_uid, "OT"))
        ]
        shots = root / "screenshots"
        shots.mkdir()
        yield ViewerStudy(viewer, study_uid, job, seg, sr, rtstructs, captures, shots)
        print(f"OHIF {OHIF_VERSION} screenshots: {shots}")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    require_binaries(CHROMIUM)
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        print(f"Chromium {chromium.version}")
        yield chromium
        chromium.close()


@pytest.fixture
def viewer_page(
    browser: Any, viewer_study: ViewerStudy, request: pytest.FixtureRequest
) -> Iterator[tuple[Any, Console]]:
    """A fresh page on the study in OHIF's basic viewer, its CT shown; its console kept."""
    context = browser.new_context(viewport=VIEWPORT, service_workers="block")
    context.add_init_script(INIT_SCRIPT)
    page = context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    console = Console()
    page.on("console", lambda m: console.messages.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: console.page_errors.append(f"{e}\n{e.stack or ''}"))
    try:
        page.goto(viewer_study.viewer.viewer_url(viewer_study.study_uid))
        _wait_for_image(page)
        yield page, console
    finally:
        context.close()
        log = viewer_study.shots / f"{request.node.name}.console.log"
        log.write_text("\n".join([*console.messages, *console.page_errors]) + "\n")
        errors = [m for m in console.messages if m.startswith("error:")]
        print(f"{len(errors)} console error(s) in {log}")


# ---------------------------------------------------------------------- helpers


def _poll(check: Callable[[], T | None], message: str, timeout: float = UI_TIMEOUT_MS / 1000) -> T:
    """Call ``check`` until it returns something truthy (a condition on rendered pixels)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s: {message}")


def _wait_for_image(page: Any) -> None:
    """Until cornerstone has an enabled viewport with an image loaded and rendered."""
    page.wait_for_function(
        """() => {
            const els = window.cornerstone?.getEnabledElements?.() || [];
            const vp = els[0]?.viewport;
            return !!(vp && vp.getCurrentImageId?.() && vp.getImageData?.());
        }"""
    )


def _check_no_crash(page: Any, console: Console) -> None:
    boundary = page.get_by_text("Something went wrong")
    assert boundary.count() == 0, "OHIF's error boundary is shown:\n" + page.inner_text("body")
    problems = console.problems()
    assert not problems, "the viewer logged errors:\n" + "\n".join(problems)


# Counts the viewport's pixels whose colour is ``rgb`` blended over grey (the CT under a
# translucent labelmap fill). Blending colour c with alpha a over grey g moves every channel
# by a*(c - g), so the pixel's departure from its own grey (p - mean(p)) points the way of
# c - mean(c): compare directions (cosine), ignoring nearly grey pixels. Read from the 2D
# canvas cornerstone draws into (a Playwright screenshot costs seconds under SwiftShader).
PIXELS_OF_HUE_JS = """([r, g, b]) => {
    const canvas = document.querySelector('.viewport-element canvas.cornerstone-canvas');
    const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    const m = (r + g + b) / 3, tr = r - m, tg = g - m, tb = b - m;
    const tn = Math.hypot(tr, tg, tb);
    let count = 0;
    for (let i = 0; i < data.length; i += 4) {
        const pm = (data[i] + data[i + 1] + data[i + 2]) / 3;
        const pr = data[i] - pm, pg = data[i + 1] - pm, pb = data[i + 2] - pm;
        const pn = Math.hypot(pr, pg, pb);
        if (pn > 12 && (pr * tr + pg * tg + pb * tb) / (pn * tn) > 0.97) count++;
    }
    return count;
}"""


def _pixels_of_hue(page: Any, rgb: tuple[int, int, int]) -> int:
    count: int = page.evaluate(PIXELS_OF_HUE_JS, list(rgb))
    return count


def _open_segmentation_panel(page: Any) -> Any:
    rows = page.locator("[data-cy=data-row]")
    if rows.count() == 0:
        page.locator("[data-cy=panelSegmentation-btn]").click()
    return rows


def _current_sop_uid(page: Any) -> str | None:
    uid: str | None = page.evaluate(
        """() => {
            const vp = window.cornerstone.getEnabledElements()[0]?.viewport;
            const id = vp?.getCurrentImageId?.();
            return id ? window.cornerstone.metaData.get('instance', id)?.SOPInstanceUID : null;
        }"""
    )
    return uid


# ---------------------------------------------------------------------- SEG


def test_ohif_shows_every_seg_segment_with_our_names_and_colours(
    viewer_page: tuple[Any, Console], viewer_study: ViewerStudy
) -> None:
    from playwright.sync_api import expect

    page, console = viewer_page
    segments = seg_segments(viewer_study.seg)
    assert len(segments) >= 2, f"the phantom should give several segments, got {segments}"
    missing = [s.label for s in segments if s.rgb is None]
    assert not missing, (
        f"segments {missing} have no RecommendedDisplayCIELabValue: OHIF falls back to its "
        "own colour table (and says so in a notification)"
    )

    description = str(viewer_study.seg.SeriesDescription)
    thumbnail = page.locator("[data-cy=study-browser-thumbnail-no-image]", has_text=description)
    thumbnail.dblclick()
    page.locator("[data-cy=yes-hydrate-btn]").click()  # "Do you want to open this Segmentation?"
    page.wait_for_function(
        """n => {
            const segs = window.services.segmentationService.getSegmentations();
            return segs.length === 1 && Object.keys(segs[0].segments).length === n;
        }""",
        arg=len(segments),
    )
    rows = _open_segmentation_panel(page)
    expect(rows).to_have_count(len(segments))

    shown = []
    for i in range(len(segments)):
        row = rows.nth(i)
        title = row.locator("[data-cy=data-row-title]").inner_text().strip()
        style = row.locator("[data-cy=data-row-colorhex]").get_attribute("style") or ""
        found = re.search(r"rgb\((\d+), (\d+), (\d+)\)", style)
        assert found, f"row {i} has no colour swatch: {style!r}"
        shown.append((title, tuple(int(v) for v in found.groups())))
    _check_colours(segments, shown)

    # The overlay, one segment at a time (the others hidden from the panel): drawn in its
    # colour over the CT. The phantom's first image cuts the body, both lungs and the spine.
    # Clicks are forced: Playwright would otherwise wait for the button to sit still over two
    # animation frames, seconds each under SwiftShader; it is still a mouse click on it.
    page.screenshot(path=str(viewer_study.shots / "ohif-seg.png"))
    page.locator("[data-cy=all-segments-visibility-toggle]").click(force=True)
    for segment in segments:
        _poll(partial(_drawn, page, segment, False), f"{segment.label!r} hidden")
    toggles = rows.locator("[data-cy=data-row-visibility-toggle]")
    confused = []
    for index, segment in enumerate(segments):
        toggles.nth(index).click(force=True)
        _poll(
            partial(_drawn, page, segment, True),
            f"segment {segment.label!r} drawn alone in rgb{segment.rgb}",
        )
        confused += _confusions(page, segment, segments)
        _move_mouse_away(page)
        page.locator(".viewport-element").first.screenshot(
            path=str(viewer_study.shots / f"ohif-seg-{segment.label}.png")
        )
        toggles.nth(index).click(force=True)
        _poll(partial(_drawn, page, segment, False), f"{segment.label!r} hidden again")
    _check_no_crash(page, console)
    # Distinct colours, as drawn: translucent over grey CT, a colour's lightness drowns in
    # the image and its hue is what tells segments apart.
    assert not confused, (
        "segments cannot be told apart in the viewer's overlay (share of a segment's drawn "
        "pixels that have another segment's hue): " + "; ".join(confused)
    )


def _move_mouse_away(page: Any) -> None:
    """Off the panel, so the segment's hover card does not cover the viewport."""
    from playwright.sync_api import expect

    page.mouse.move(2, VIEWPORT["height"] - 2)
    expect(page.get_by_text("Compute Largest Bidirectional")).to_have_count(0)


def _drawn(page: Any, segment: SegSegment, shown: bool) -> bool:
    """Whether the viewport shows ``segment``'s colour (>= 200 pixels) or not (none)."""
    assert segment.rgb is not None
    count = _pixels_of_hue(page, segment.rgb)
    return count >= 200 if shown else count == 0


def _confusions(page: Any, segment: SegSegment, segments: list[SegSegment]) -> list[str]:
    """With only ``segment`` drawn: the other segments whose hue its pixels also have."""
    assert segment.rgb is not None
    own = _pixels_of_hue(page, segment.rgb)
    found = []
    for other in segments:
        if other is segment or other.rgb is None:
            continue
        share = _pixels_of_hue(page, other.rgb) / own
        if share > MAX_CONFUSED:
            found.append(
                f"{segment.label} rgb{segment.rgb} looks like {other.label} rgb{other.rgb} "
                f"({share:.0%})"
            )
    return found


def _check_colours(segments: list[SegSegment], shown: list[tuple[str, tuple[int, ...]]]) -> None:
    assert [title for title, _ in shown] == [s.label for s in segments], shown
    for segment, (_, rgb) in zip(segments, shown, strict=True):
        assert segment.rgb is not None
        off = max(abs(a - b) for a, b in zip(rgb, segment.rgb, strict=True))
        assert off <= 3, f"{segment.label}: OHIF shows rgb{rgb}, the SEG says rgb{segment.rgb}"


# ---------------------------------------------------------------------- SC


def test_ohif_shows_each_secondary_capture_series_as_images(
    viewer_page: tuple[Any, Console], viewer_study: ViewerStudy
) -> None:
    """Each SC series is an image series in the study browser; opened, its images show."""
    page, console = viewer_page
    series: dict[str, list[Dataset]] = {}
    for capture in viewer_study.captures:
        series.setdefault(str(capture.SeriesInstanceUID), []).append(capture)
    assert len(series) >= 2, "ct-basic and ct-lung-nodules should each give an SC series"
    for index, (series_uid, captures) in enumerate(sorted(series.items())):
        description = str(captures[0].SeriesDescription)
        assert "not for primary diagnosis" in description
        thumbnail = page.locator("[data-cy=study-browser-thumbnail]", has_text=description)
        assert thumbnail.count() == 1, f"{description!r} is not listed as an image series"
        thumbnail.dblclick()
        shown = page.wait_for_function(
            """(uid) => {
                const vp = window.cornerstone.getEnabledElements()[0]?.viewport;
                const id = vp?.getCurrentImageId?.();
                const meta = id && window.cornerstone.metaData.get('instance', id);
                return meta?.SeriesInstanceUID === uid && vp.getImageData?.()
                    ? {sop: meta.SOPInstanceUID, count: vp.getImageIds().length}
                    : null;
            }""",
            arg=series_uid,
        ).json_value()
        assert shown["count"] == len(captures)
        assert shown["sop"] in {str(c.SOPInstanceUID) for c in captures}
        # The image drawn is the capture's: its overlay's colour is on the canvas.
        (capture,) = [c for c in captures if str(c.SOPInstanceUID) == shown["sop"]]
        color = _overlay_colour(capture)
        _poll(partial(_hue_shown, page, color), f"rgb{color} of {description!r} drawn")
        _move_mouse_away(page)
        shot = viewer_study.shots / f"ohif-sc-{index + 1}.png"
        page.locator(".viewport-element").first.screenshot(path=str(shot))
        _check_no_crash(page, console)
    if os.environ.get("PACS_ANNOTATOR_README_SCREENSHOT") == "1":
        first, second = (viewer_study.shots / f"ohif-sc-{n + 1}.png" for n in range(2))
        _write_readme_image(first, second, target=README_SC_IMAGE)


def _overlay_colour(capture: Dataset) -> tuple[int, int, int]:
    """The capture's most frequent strong colour: an outline's, a ring's or a swatch's."""
    pixels = capture.pixel_array.reshape(-1, 3).astype(int)
    colored = pixels[(pixels.max(axis=1) - pixels.min(axis=1)) > 30]
    assert len(colored), "the capture has no colour"
    values, counts = np.unique(colored, axis=0, return_counts=True)
    r, g, b = (int(v) for v in values[int(np.argmax(counts))])
    return (r, g, b)


def _hue_shown(page: Any, rgb: tuple[int, int, int]) -> bool:
    return _pixels_of_hue(page, rgb) >= 20


# ---------------------------------------------------------------------- SR


def test_ohif_shows_every_sr_measurement_on_its_image(
    viewer_page: tuple[Any, Console], viewer_study: ViewerStudy
) -> None:
    from playwright.sync_api import Error as PlaywrightError

    page, console = viewer_page
    marks = sr_marks(viewer_study.sr)
    # What OHIF will not draw, read from the file: explains a failure in the browser.
    diagnosis = _sr_diagnosis(marks, viewer_study.detections)
    try:
        _step_through_sr(page, console, viewer_study, marks)
    except (AssertionError, PlaywrightError) as exc:
        if not diagnosis:
            raise
        raise AssertionError(
            f"{exc}\n\nWhy, from the SR itself:\n- " + "\n- ".join(diagnosis)
        ) from exc
    assert not diagnosis, "\n".join(diagnosis)


def _step_through_sr(
    page: Any, console: Console, viewer_study: ViewerStudy, marks: list[SrMark]
) -> None:
    """Open the SR, check OHIF's measurements, and show each on its image."""
    description = str(viewer_study.sr.SeriesDescription)
    page.locator("[data-cy=study-browser-thumbnail-no-image]", has_text=description).dblclick()
    try:
        # Polled here, not in the page: a TypeError while loading must end the wait at once.
        _poll(
            lambda: (
                console.problems()
                or page.evaluate(
                    """() => {
                    const sr = window.services.displaySetService.getActiveDisplaySets()
                        .find(d => d.Modality === 'SR');
                    return !!(sr && sr.isLoaded && sr.measurements.every(m => m.loaded));
                }"""
                )
            ),
            "OHIF to load the SR and place every measurement on an image",
        )
    finally:
        page.screenshot(path=str(viewer_study.shots / "ohif-sr.png"))
        _check_no_crash(page, console)
    loaded = page.evaluate(
        """() => window.services.displaySetService.getActiveDisplaySets()
            .find(d => d.Modality === 'SR').measurements
            .map(m => ({uid: m.TrackingUniqueIdentifier, imageId: m.imageId || null}))"""
    )
    assert [m["uid"] for m in loaded] == [m.tracking_uid for m in marks], (
        "OHIF's measurements differ from the SR's tracking UIDs",
        loaded,
        marks,
    )

    # The SR viewport shows measurement 1; its arrows step through the rest (with a SEG in
    # the viewport they would step through segments instead: this page has none).
    for index, mark in enumerate(marks):
        if index:
            page.locator("[data-cy=viewport-action-arrows-right]").click()
        page.wait_for_function(
            """([sop, uid]) => {
                const vp = window.cornerstone.getEnabledElements()[0]?.viewport;
                const id = vp?.getCurrentImageId?.();
                const here = id && window.cornerstone.metaData.get('instance', id)?.SOPInstanceUID;
                const svg = document.querySelector('.viewport-element svg.svg-layer');
                const label = svg && svg.querySelector(`g[data-annotation-uid="${uid}"]`);
                const shapes = svg && svg.querySelectorAll('polyline, ellipse, path, circle');
                return here === sop && !!label && shapes.length > 0;
            }""",
            arg=[mark.referenced_sop_uid, mark.tracking_uid],
        )
        label = page.locator(
            f'.viewport-element svg.svg-layer g[data-annotation-uid="{mark.tracking_uid}"]'
        )
        text = label.text_content() or ""
        for name in mark.measurements:
            assert name in text, f"{mark.tracking_id}: {name!r} not drawn (text: {text!r})"
        shot = viewer_study.shots / f"ohif-sr-{index + 1}.png"
        page.locator(".viewport-element").first.screenshot(path=str(shot))
        _check_no_crash(page, console)
    assert _current_sop_uid(page) == marks[-1].referenced_sop_uid


def test_ohif_tracks_every_detection_in_its_measurement_panel(
    viewer_page: tuple[Any, Console], viewer_study: ViewerStudy
) -> None:
    """Track the SR's measurements; each detection is listed, and a click shows its box."""
    page, console = viewer_page
    marks = sr_marks(viewer_study.sr)
    detections = [m for m in marks if "Long axis" in m.measurements]
    assert len(detections) == viewer_study.detections >= 1
    description = str(viewer_study.sr.SeriesDescription)
    page.locator("[data-cy=study-browser-thumbnail-no-image]", has_text=description).dblclick()
    # OHIF offers to track an SR it can turn into its own measurements ("rehydratable").
    page.get_by_text("Do you want to continue tracking measurements for this study?").wait_for()
    page.get_by_role("button", name="Yes").click()
    labels: list[str] = _poll(
        lambda: page.evaluate(
            """(n) => {
                const all = window.services.measurementService.getMeasurements();
                return all.length >= n ? all.map(m => m.label) : null;
            }""",
            len(detections),
        ),
        "OHIF to track the SR's detections as measurements",
    )
    expected = {mark.tracking_id for mark in detections}
    assert sorted(label.split(":")[0] for label in labels) == sorted(expected), labels
    if page.locator("[data-cy=data-row]").count() == 0:
        page.locator("[data-cy=trackedMeasurements-btn]").click()
    rows = page.locator("[data-cy=data-row]")
    _poll(lambda: rows.count() >= len(detections), "the measurement panel to list them")
    shot_dir = viewer_study.shots
    for index, mark in enumerate(detections):
        row = rows.filter(has_text=f"{mark.tracking_id}:")
        assert row.count() == 1, f"{mark.tracking_id} is not listed once in the panel"
        row.click()
        page.wait_for_function(
            """(sop) => {
                const vp = window.cornerstone.getEnabledElements()[0]?.viewport;
                const id = vp?.getCurrentImageId?.();
                const here = id && window.cornerstone.metaData.get('instance', id)?.SOPInstanceUID;
                // The tracked box: cornerstone's RectangleROI draws a <rect> per annotation.
                const svg = document.querySelector('.viewport-element svg.svg-layer');
                return here === sop && !!svg?.querySelector('rect[data-id$="-rect"]');
            }""",
            arg=mark.referenced_sop_uid,
        )
        shot = shot_dir / f"ohif-tracked-{index + 1}.png"
        page.screenshot(path=str(shot))
        if index == 0 and os.environ.get("PACS_ANNOTATOR_README_SCREENSHOT") == "1":
            seg_shot = shot_dir / "ohif-seg.png"
            assert seg_shot.exists(), "run the SEG test first (same module) for the README image"
            _write_readme_image(seg_shot, shot)
        _check_no_crash(page, console)
    # Every detection's box was tracked: OHIF left out (with its warning) other groups only.
    assert console.skipped_groups() <= _groups(viewer_study.sr) - len(detections)


def _groups(sr: Dataset) -> int:
    [container] = [
        i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "126010"
    ]
    return len(container.ContentSequence)


def _sr_diagnosis(marks: list[SrMark], detections: int) -> list[str]:
    """What in the SR OHIF 3.13 cannot show (see ``SrMark``), as sentences."""
    found = []
    if detections < 1:
        found.append("the job reports no detection: the phantom's nodules should give some")
    without = [m.tracking_id for m in marks if m.value_type is None]
    if without:
        found.append(
            f"measurement groups {without} carry no SCOORD/SCOORD3D (neither top-level nor "
            "INFERRED FROM under a NUM): OHIF 3.13 reads coords[0].ReferencedSOPSequence of "
            "every measurement (_checkIfCanAddMeasurementsToDisplaySet), throws a TypeError, "
            "and the whole SR shows nothing"
        )
    not_2d = [m.tracking_id for m in marks if m.value_type is not None and not m.image_referenced]
    if not_2d:
        found.append(
            f"measurements {not_2d} have no 2D SCOORD with a referenced image: OHIF cannot "
            "say which slice to show (a SCOORD3D POINT is drawn at most as a dot, if its "
            "frame of reference matches)"
        )
    lesions = [m for m in marks if "Long axis" in m.measurements]
    if len(lesions) != detections:
        found.append(f"the job found {detections} detection(s), the SR has {len(lesions)}")
    return found


def _write_readme_image(left: Path, right: Path, target: Path = README_IMAGE) -> None:
    """Two screenshots of the viewer side by side (the SEG and a tracked detection; two SCs)."""
    a = Image.open(left).convert("RGB")
    b = Image.open(right).convert("RGB")
    height = 700
    a = a.resize((round(a.width * height / a.height), height))
    b = b.resize((round(b.width * height / b.height), height))
    out = Image.new("RGB", (a.width + b.width + 8, height), (0, 0, 0))
    out.paste(a, (0, 0))
    out.paste(b, (a.width + 8, 0))
    target.parent.mkdir(parents=True, exist_ok=True)
    out.save(target, optimize=True)
    print(f"README screenshot written: {target}")


# ---------------------------------------------------------------------- RTSTRUCT

#: For each ROI of the segmentation OHIF made of an RTSTRUCT: the SOP Instance UIDs of the
#: images its contours are placed on (cornerstone's contour annotations, by segment index).
ROI_IMAGES_JS = """() => {
    const [seg] = window.services.segmentationService.getSegmentations();
    const state = window.cornerstoneTools.annotation.state;
    const out = {};
    for (const [index, uids] of seg.representationData.Contour.annotationUIDsMap.entries()) {
        out[index] = [...uids].map(uid => {
            const imageId = state.getAnnotation(uid)?.metadata?.referencedImageId;
            return imageId && window.cornerstone.metaData.get('instance', imageId)?.SOPInstanceUID;
        });
    }
    return out;
}"""

#: The contour outlines cornerstone draws on the current image, by stroke colour.
OUTLINE_COLOURS_JS = """() => [...document.querySelectorAll(
        '.viewport-element svg.svg-layer path[stroke]')].map(p => p.getAttribute('stroke'))"""


@pytest.mark.parametrize("algorithm", ["ct-basic", "ct-lung-nodules"])
def test_ohif_lists_every_rtstruct_roi_and_draws_it_on_its_images(
    viewer_page: tuple[Any, Console], viewer_study: ViewerStudy, algorithm: str
) -> None:
    from playwright.sync_api import expect

    page, console = viewer_page
    rtstruct = viewer_study.rtstructs[algorithm]
    rois = rt_rois(rtstruct)
    assert rois and all(roi.images for roi in rois)
    description = str(rtstruct.SeriesDescription)
    page.locator("[data-cy=study-browser-thumbnail-no-image]", has_text=description).dblclick()
    page.locator("[data-cy=yes-hydrate-btn]").click()  # "Do you want to open this ...?"
    page.wait_for_function(
        """n => {
            const segs = window.services.segmentationService.getSegmentations();
            return segs.length === 1 && Object.keys(segs[0].segments).length === n;
        }""",
        arg=len(rois),
    )
    placed = page.evaluate(ROI_IMAGES_JS)
    for number, roi in enumerate(rois, start=1):
        assert set(placed[str(number)]) == roi.images, f"{roi.name}: contours on other images"
    rows = _open_segmentation_panel(page)
    expect(rows).to_have_count(len(rois))
    for index, roi in enumerate(rois):
        row = rows.nth(index)
        assert row.locator("[data-cy=data-row-title]").inner_text().strip() == roi.name
        style = row.locator("[data-cy=data-row-colorhex]").get_attribute("style") or ""
        found = re.search(r"rgb\((\d+), (\d+), (\d+)\)", style)
        swatch = tuple(int(v) for v in found.groups()) if found else None
        assert swatch == roi.rgb, f"{roi.name}: swatch {style!r}, the RTSTRUCT says {roi.rgb}"
    for index, roi in enumerate(rois):
        rows.nth(index).click(force=True)  # OHIF jumps to an image of the ROI
        _poll(partial(_outlined, page, roi), f"{roi.name} drawn on one of its images")
        _move_mouse_away(page)
        page.locator(".viewport-element").first.screenshot(
            path=str(viewer_study.shots / f"ohif-rtstruct-{algorithm}-{roi.number}.png")
        )
    # OHIF 3.13 has no KOS handler: it lists the document, marked unsupported (the README says
    # so; a KOS is for PACS viewers with a key-image view).
    key_images = page.evaluate(
        """() => window.services.displaySetService.getActiveDisplaySets()
            .filter(d => d.Modality === 'KO').map(d => d.unsupported === true)"""
    )
    assert key_images == [True]
    _check_no_crash(page, console)
    if algorithm == "ct-basic":
        page.screenshot(path=str(viewer_study.shots / "ohif-rtstruct.png"))
        if os.environ.get("PACS_ANNOTATOR_README_SCREENSHOT") == "1":
            rows.nth(1).click(force=True)  # the lungs: a slice through the chest
            _poll(partial(_outlined, page, rois[1]), f"{rois[1].name} drawn")
            _move_mouse_away(page)
            page.screenshot(path=str(README_RTSTRUCT_IMAGE))
            print(f"README screenshot written: {README_RTSTRUCT_IMAGE}")


def _outlined(page: Any, roi: RtRoi) -> bool:
    """The viewport shows one of ``roi``'s images with an outline in its colour."""
    colour = "rgba({}, {}, {}, 1)".format(*roi.rgb)
    return _current_sop_uid(page) in roi.images and colour in page.evaluate(OUTLINE_COLOURS_JS)
