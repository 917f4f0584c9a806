"""GSPS writing: validity, outlines on the mask boundary, circles where the findings are."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from PIL import Image, ImageDraw
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sr.codedict import codes
from skimage import draw

from pipelines import gsps as gsps_module
from pipelines.findings import Algorithm, Detection, Findings, Segment
from pipelines.gsps import build_gsps
from pipelines.seg import build_seg
from pipelines.volume import Volume, load_series
from tests.conftest import REPO_ROOT
from tests.support.dicom_validate import dciodvfy_messages
from tests.support.ohif import dicom_lab_to_rgb
from tests.support.phantom import image_point_mm, make_ct_phantom
from tests.unit.pipelines.overlay_checks import (
    assert_on_boundary,
    assert_pixelmed_valid,
    drawn_objects,
    even_odd_fill,
    nearest_slices,
)

SERIES_UID, SOP_UID = "2.25.2001", "2.25.2002"


def _gsps(volume: Volume, findings: Findings) -> Dataset:
    return build_gsps(
        volume,
        findings,
        series_uid=SERIES_UID,
        sop_uid=SOP_UID,
        series_number=1004,
        software_version="9.9.9",
    )


def _saved(dataset: Dataset, path: Path) -> Dataset:
    """Written and read back, as a viewer gets it."""
    dataset.save_as(path, enforce_file_format=True)
    return pydicom.dcmread(path)


@pytest.fixture(scope="module")
def written(
    tmp_path_factory: pytest.TempPathFactory,
    phantom_volume: Volume,
    phantom_findings: Findings,
    nodule_volume: Volume,
    nodule_findings: Findings,
) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("gsps")
    paths = {"segments": folder / "segments.dcm", "detections": folder / "detections.dcm"}
    _gsps(phantom_volume, phantom_findings).save_as(paths["segments"], enforce_file_format=True)
    _gsps(nodule_volume, nodule_findings).save_as(paths["detections"], enforce_file_format=True)
    return paths


def test_dciodvfy_finds_no_error(written: dict[str, Path]) -> None:
    for path in written.values():
        messages = dciodvfy_messages(path)
        assert messages.errors == (), path.name


def test_pixelmed_finds_no_error(written: dict[str, Path]) -> None:
    assert_pixelmed_valid(list(written.values()))


def test_outlines_lie_on_the_mask_boundary_and_enclose_the_mask(
    written: dict[str, Path], phantom_volume: Volume, phantom_findings: Findings
) -> None:
    gsps = pydicom.dcmread(written["segments"])
    layers = {item.GraphicLayer: item for item in gsps.GraphicLayerSequence}
    graphics, texts = drawn_objects(gsps, phantom_volume)
    for segment in phantom_findings.segments:
        (name,) = [n for n, item in layers.items() if item.GraphicLayerDescription == segment.label]
        mine = [g for g in graphics if g.layer == name]
        assert {g.item.GraphicType for g in mine} == {"POLYLINE"}
        assert {g.slice_index for g in mine} == set(
            np.flatnonzero(segment.mask.any(axis=(1, 2))).tolist()
        )
        assert {t.slice_index for t in texts if t.layer == name} == {g.slice_index for g in mine}
        assert all(t.item.UnformattedTextValue == segment.label for t in texts if t.layer == name)
        for k in {g.slice_index for g in mine}:
            plane = segment.mask[k]
            polylines = [g.points for g in mine if g.slice_index == k]
            for points in polylines:
                assert np.array_equal(points[0], points[-1]), "an outline is not closed"
                assert_on_boundary(points, plane)
            assert np.array_equal(even_odd_fill(polylines, plane.shape), plane), (
                f"{segment.label}, slice {k}: the outlines do not enclose exactly the mask"
            )


def test_pieces_and_holes_each_get_an_outline(phantom_volume: Volume) -> None:
    mask = np.zeros(phantom_volume.voxels.shape, dtype=bool)
    k = 20
    rr, cc = draw.disk((60, 60), 20, shape=mask.shape[1:])
    mask[k, rr, cc] = True
    rr, cc = draw.disk((60, 60), 8, shape=mask.shape[1:])
    mask[k, rr, cc] = False  # a hole
    mask[k, 10:14, 100:127] = True  # an island reaching the image's edge
    mask[k, 0, 0] = True  # one pixel in the corner
    findings = Findings(
        algorithm=Algorithm("test", "1"),
        segments=(Segment("Ring", mask, codes.SCT.Tissue, codes.SCT.Tissue),),
    )
    gsps = _gsps(phantom_volume, findings)
    graphics, _ = drawn_objects(gsps, phantom_volume)
    polylines = [g.points for g in graphics]
    assert len(polylines) == 4
    assert {g.slice_index for g in graphics} == {k}
    for points in polylines:
        assert_on_boundary(points, mask[k])
    assert np.array_equal(even_odd_fill(polylines, mask.shape[1:]), mask[k])


def test_detection_circles_lie_on_the_nearest_slice_within_1_mm(
    written: dict[str, Path], nodule_volume: Volume, nodule_findings: Findings
) -> None:
    assert nodule_findings.detections, "the nodule phantom's detector found nothing"
    gsps = pydicom.dcmread(written["detections"])
    graphics, texts = drawn_objects(gsps, nodule_volume)
    for detection in nodule_findings.detections:
        _assert_circle_at(detection, graphics, texts, nodule_volume)


def _assert_circle_at(detection: Detection, graphics: list, texts: list, volume: Volume) -> None:
    mine = [g for g in graphics if g.item.TrackingID == detection.label]
    assert mine and {g.item.GraphicType for g in mine} <= {"CIRCLE", "ELLIPSE"}
    largest = max(mine, key=lambda g: _radius(g.item.GraphicType, g.points))
    nearest = nearest_slices(volume, detection.centre_mm)
    assert largest.slice_index in nearest
    (labelled,) = [
        t.slice_index for t in texts if t.item.UnformattedTextValue.startswith(detection.label)
    ]
    assert labelled in nearest
    k = largest.slice_index
    centre = largest.points[0] if largest.item.GraphicType == "CIRCLE" else largest.points.mean(0)
    centre_mm = image_point_mm(volume.datasets[k], float(centre[0]), float(centre[1]))
    offset = centre_mm - np.asarray(detection.centre_mm)
    orientation = np.asarray(volume.datasets[k].ImageOrientationPatient, dtype=np.float64)
    normal = np.cross(orientation[:3], orientation[3:])
    in_plane = offset - (offset @ normal) * normal
    assert float(np.linalg.norm(in_plane)) <= 1.0, detection.label
    # the slices it is drawn on are those its box crosses, and they are contiguous
    slices = sorted(g.slice_index for g in mine)
    assert slices == list(range(slices[0], slices[-1] + 1))
    (label,) = [t for t in texts if t.slice_index == labelled and t.layer == largest.layer]
    assert label.item.UnformattedTextValue.endswith(" mm")


def _radius(kind: str, points: np.ndarray) -> float:
    if kind == "CIRCLE":
        return float(np.linalg.norm(points[1] - points[0]))
    return float(np.linalg.norm(points[1] - points[0]) / 2)


def test_an_oblong_box_off_the_slices_gets_an_ellipse_where_it_is() -> None:
    """A coronal series, anisotropic pixels, a centre between two slices: the general case."""
    datasets = make_ct_phantom(slices=16, size=64, orientation="coronal", noise_hu=0).datasets
    for ds in datasets:
        ds.PixelSpacing = [3.0, 2.0]
    volume = load_series(datasets)
    detection = Detection(
        label="Mass 1",
        finding_type=codes.SCT.Mass,
        centre_mm=(10.3, 7.4, -4.1),
        bbox_min_mm=(0.3, -5.0, -10.1),
        bbox_max_mm=(20.3, 19.8, 1.9),
        longest_diameter_mm=22.0,
        volume_mm3=2000.0,
        score=0.9,
    )
    findings = Findings(algorithm=Algorithm("test", "1"), detections=(detection,))
    gsps = _gsps(volume, findings)
    graphics, texts = drawn_objects(gsps, volume)
    assert {g.item.GraphicType for g in graphics} == {"ELLIPSE"}
    _assert_circle_at(detection, graphics, texts, volume)


def test_layers_have_the_seg_colours_and_the_algorithm_identity(
    written: dict[str, Path], phantom_volume: Volume, phantom_findings: Findings
) -> None:
    gsps = pydicom.dcmread(written["segments"])
    seg = build_seg(
        phantom_volume,
        phantom_findings,
        series_uid="2.25.1",
        sop_uid="2.25.2",
        series_number=1,
        software_version="9.9.9",
    )
    seg_colors = {
        item.SegmentLabel: list(item.RecommendedDisplayCIELabValue) for item in seg.SegmentSequence
    }
    layer_colors = {
        item.GraphicLayerDescription: list(item.GraphicLayerRecommendedDisplayCIELabValue)
        for item in gsps.GraphicLayerSequence
    }
    assert layer_colors == seg_colors
    algorithm = phantom_findings.algorithm
    assert gsps.Modality == "PR"
    assert gsps.SeriesInstanceUID == SERIES_UID and gsps.SOPInstanceUID == SOP_UID
    assert gsps.StudyInstanceUID == phantom_volume.study_uid
    assert gsps.SeriesDescription == f"AI annotations ({algorithm.name})"
    assert gsps.Manufacturer == algorithm.manufacturer and gsps.SoftwareVersions == "9.9.9"
    # the same algorithm item as the SEG's (IHE AI Results provenance)
    for obj in (gsps, seg):
        (item,) = [
            e
            for e in obj.ContributingEquipmentSequence
            if e.get("ManufacturerModelName") == algorithm.name
        ]
        assert item.Manufacturer == algorithm.manufacturer
        assert item.SoftwareVersions == algorithm.version
        assert item.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
    (series,) = gsps.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == phantom_volume.series_uid
    assert {str(i.ReferencedSOPInstanceUID) for i in series.ReferencedImageSequence} == {
        str(ds.SOPInstanceUID) for ds in phantom_volume.datasets
    }


def test_the_source_window_is_applied(written: dict[str, Path]) -> None:
    gsps = pydicom.dcmread(written["segments"])
    (voi,) = gsps.SoftcopyVOILUTSequence
    assert (float(voi.WindowCenter), float(voi.WindowWidth)) == (40.0, 400.0)


def test_a_series_without_a_window_gets_one_over_its_values(
    phantom: object, phantom_findings: Findings
) -> None:
    datasets = [copy.deepcopy(ds) for ds in phantom.datasets]  # type: ignore[attr-defined]
    for ds in datasets:
        del ds.WindowCenter, ds.WindowWidth
    volume = load_series(datasets)
    (voi,) = _gsps(volume, phantom_findings).SoftcopyVOILUTSequence
    low = float(voi.WindowCenter) - float(voi.WindowWidth) / 2
    high = float(voi.WindowCenter) + float(voi.WindowWidth) / 2
    assert -1100 < low <= -900 and 40 < high < 1000  # air to beyond soft tissue


def test_slice_annotation_equals_highdicoms(phantom_volume: Volume) -> None:
    """The fast annotation item is what highdicom's GraphicAnnotation builds."""
    layer = hd.pr.GraphicLayer("SEGMENT 1", 1)
    graphic = hd.pr.GraphicObject(
        hd.pr.GraphicTypeValues.POLYLINE,
        np.array([[1.0, 1.0], [5.0, 1.0], [5.0, 5.0], [1.0, 1.0]]),
        hd.pr.AnnotationUnitsValues.PIXEL,
    )
    text = hd.pr.TextObject("Lungs", hd.pr.AnnotationUnitsValues.PIXEL, anchor_point=(3.0, 3.0))
    image = phantom_volume.datasets[3]
    ours = gsps_module._SliceAnnotation(image, layer, [graphic], [text])
    theirs = hd.pr.GraphicAnnotation(
        referenced_images=[image],
        graphic_layer=layer,
        graphic_objects=[graphic],
        text_objects=[text],
    )
    assert ours == theirs
    assert isinstance(ours, hd.pr.GraphicAnnotation)


def test_real_ct(tmp_path: Path, real_volume: Volume, real_findings: Findings) -> None:
    """The real CT of ../shared/data: valid, and its outlines enclose exactly its masks."""
    gsps = _saved(_gsps(real_volume, real_findings), tmp_path / "real.dcm")
    assert dciodvfy_messages(tmp_path / "real.dcm").errors == ()
    graphics, _ = drawn_objects(gsps, real_volume)
    names = {i.GraphicLayer: i.GraphicLayerDescription for i in gsps.GraphicLayerSequence}
    for segment in real_findings.segments:
        if not segment.mask.any():
            continue
        k = int(np.argmax(segment.mask.sum(axis=(1, 2))))
        polylines = [
            g.points for g in graphics if g.slice_index == k and names[g.layer] == segment.label
        ]
        assert np.array_equal(even_odd_fill(polylines, segment.mask.shape[1:]), segment.mask[k])


def _render(gsps: Dataset, image: Dataset, k: int, volume: Volume) -> Image.Image:
    """The slice as the GSPS says to show it, from the file alone: its window over the
    image's modality values, then every graphic and text of the slice in its layer's colour
    (a reader's drawing, for the README; no viewer here draws GSPS)."""
    (voi,) = gsps.SoftcopyVOILUTSequence
    center, width = float(voi.WindowCenter), float(voi.WindowWidth)
    values = volume.voxels[k]
    grey = np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0, 1) * 255
    scale = 4  # drawn larger, so text is legible
    canvas = Image.fromarray(grey.astype(np.uint8)).convert("RGB")
    canvas = canvas.resize((canvas.width * scale, canvas.height * scale), Image.NEAREST)
    pen = ImageDraw.Draw(canvas)
    colors = {
        item.GraphicLayer: dicom_lab_to_rgb(item.GraphicLayerRecommendedDisplayCIELabValue)
        for item in gsps.GraphicLayerSequence
    }
    for annotation in gsps.GraphicAnnotationSequence:
        if annotation.ReferencedImageSequence[0].ReferencedSOPInstanceUID != image.SOPInstanceUID:
            continue
        color = colors[annotation.GraphicLayer]
        for item in annotation.get("GraphicObjectSequence", []):
            points = np.asarray(item.GraphicData, dtype=float).reshape(-1, 2) * scale
            if item.GraphicType == "POLYLINE":
                pen.line([tuple(p) for p in points], fill=color, width=2)
            elif item.GraphicType == "CIRCLE":
                r = float(np.linalg.norm(points[1] - points[0]))
                (x, y) = points[0]
                pen.ellipse((x - r, y - r, x + r, y + r), outline=color, width=2)
            else:  # ELLIPSE: major axis ends, then minor axis ends (axis-aligned here)
                xs, ys = points[:, 0], points[:, 1]
                pen.ellipse((xs.min(), ys.min(), xs.max(), ys.max()), outline=color, width=2)
        for item in annotation.get("TextObjectSequence", []):
            left, top = (float(v) * scale for v in item.BoundingBoxTopLeftHandCorner)
            pen.text((left, top), item.UnformattedTextValue, fill=color, font_size=16)
    return canvas


def test_readme_rendering(
    written: dict[str, Path],
    tmp_path: Path,
    phantom_volume: Volume,
    nodule_volume: Volume,
    nodule_findings: Findings,
) -> None:
    """What a GSPS viewer is asked to draw, drawn by this reader: the outlines fall on the
    phantom's segment boundaries and a nodule's circle on its slice. With
    PACS_ANNOTATOR_README_SCREENSHOT=1 it is the README's image (docs/images/gsps.png)."""
    segments = pydicom.dcmread(written["segments"])
    k = phantom_volume.voxels.shape[0] // 2
    left = _render(segments, phantom_volume.datasets[k], k, phantom_volume)
    detections = pydicom.dcmread(written["detections"])
    largest = max(nodule_findings.detections, key=lambda d: d.longest_diameter_mm)
    _, texts = drawn_objects(detections, nodule_volume)
    (j,) = [t.slice_index for t in texts if t.item.UnformattedTextValue.startswith(largest.label)]
    right = _render(detections, nodule_volume.datasets[j], j, nodule_volume)
    for canvas in (left, right):
        pixels = np.asarray(canvas).reshape(-1, 3).astype(int)
        assert ((pixels.max(axis=1) - pixels.min(axis=1)) > 40).sum() > 100, "nothing drawn"
    height = 512
    left = left.resize((round(left.width * height / left.height), height))
    right = right.resize((round(right.width * height / right.height), height))
    both = Image.new("RGB", (left.width + right.width + 8, height))
    both.paste(left, (0, 0))
    both.paste(right, (left.width + 8, 0))
    both.save(tmp_path / "gsps.png")
    if os.environ.get("PACS_ANNOTATOR_README_SCREENSHOT") == "1":
        (REPO_ROOT / "docs" / "images").mkdir(parents=True, exist_ok=True)
        both.save(REPO_ROOT / "docs" / "images" / "gsps.png", optimize=True)


def _encoded(item: Dataset) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, item)
    return buffer.getvalue()


def test_bulk_graphic_data_is_encoded_as_pydicom_encodes_it() -> None:
    """The outline's Graphic Data, packed at once, is byte for byte highdicom's item."""
    points = np.random.default_rng(7).uniform(0.0, 511.5, size=(301, 2))
    uid = "2.25.2003"
    ours = gsps_module.polyline(points, "Liver", uid)
    theirs = hd.pr.GraphicObject(
        graphic_type=hd.pr.GraphicTypeValues.POLYLINE,
        graphic_data=points,
        units=hd.pr.AnnotationUnitsValues.PIXEL,
        tracking_id="Liver",
        tracking_uid=uid,
    )
    assert _encoded(ours) == _encoded(theirs)
    assert int(ours.NumberOfGraphicPoints) == 301
    assert np.array_equal(
        np.asarray(ours.GraphicData, dtype=np.float32).reshape(-1, 2), points.astype(np.float32)
    )
    with pytest.raises(ValueError, match="not negative"):
        gsps_module.polyline(points - 600.0, "Liver", uid)
    with pytest.raises(ValueError, match="two or more"):
        gsps_module.polyline(points[:1], "Liver", uid)
