"""GSPS and secondary captures on every kind of source volume: tilted, uneven, multi-frame.

The volume a pipeline sees may be resampled from the source images (gantry tilt, uneven
gaps) or made of the frames of one multi-frame instance. Whatever it is, the overlays are
judged against the source images alone, read independently of ``pipelines.planes``:
- GSPS outlines on an image (and frame) are the boundary of the SEG's frame for that image
  and, filled, are exactly that frame;
- a detection's circle is largest on the image nearest its centre, centred within 1 mm of
  the centre's place on that image, labelled there;
- a capture's coloured pixels are the SEG's frame for its source image, and its grey ones
  that image's own pixels in its window (not the resampled grid's);
- dciodvfy finds no error in either.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from highdicom.legacy import LegacyConvertedEnhancedCTImage
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from pipelines.findings import Algorithm, Detection, Findings, Segment
from pipelines.gsps import build_gsps
from pipelines.sc import build_sc
from pipelines.seg import build_seg
from pipelines.uids import derive_uid
from pipelines.volume import Volume, load_series
from tests.support.dicom_validate import dciodvfy_errors
from tests.support.tilted import HEAD_HU, SPHERE_HU, SphereStack, make_sphere_stack
from tests.unit.pipelines.overlay_checks import assert_on_boundary, even_odd_fill
from tests.unit.pipelines.test_scanner_stacks import LAYOUTS

#: (SOP Instance UID, frame number or None): one source image.
ImageKey = tuple[str, int | None]


@dataclass(frozen=True)
class _Geometry:
    """Where a source image lies, read from its own attributes (or its frame's)."""

    position: npt.NDArray[np.float64]
    row_dir: npt.NDArray[np.float64]
    col_dir: npt.NDArray[np.float64]
    spacing: tuple[float, float]  # between rows, between columns

    @property
    def normal(self) -> npt.NDArray[np.float64]:
        result: npt.NDArray[np.float64] = np.cross(self.row_dir, self.col_dir)
        return result

    def point_mm(self, column: float, row: float) -> npt.NDArray[np.float64]:
        """Patient position of image coordinates (pixel centres at +0.5)."""
        return (
            self.position
            + self.row_dir * (column - 0.5) * self.spacing[1]
            + self.col_dir * (row - 0.5) * self.spacing[0]
        )


@dataclass(frozen=True)
class _Case:
    name: str
    stack: SphereStack
    sources: list[Dataset]  # what the scanner sent: single-frame images or one multi-frame
    volume: Volume
    findings: Findings
    seg_masks: dict[ImageKey, npt.NDArray[np.bool_]]
    gsps: Dataset
    captures: list[Dataset]
    paths: list[Path]


def _geometry(ds: Dataset, frame: int | None) -> _Geometry:
    if frame is None:
        position, orientation, spacing = (
            ds.ImagePositionPatient,
            ds.ImageOrientationPatient,
            ds.PixelSpacing,
        )
    else:
        item = ds.PerFrameFunctionalGroupsSequence[frame - 1]
        shared = ds.SharedFunctionalGroupsSequence[0]

        def find(sequence: str, keyword: str) -> object:
            for group in (item, shared):
                if sequence in group and keyword in group[sequence][0]:
                    return group[sequence][0][keyword].value
            raise AssertionError(f"frame {frame} has no {keyword}")

        position = find("PlanePositionSequence", "ImagePositionPatient")
        orientation = find("PlaneOrientationSequence", "ImageOrientationPatient")
        spacing = find("PixelMeasuresSequence", "PixelSpacing")
    iop = np.array(orientation, dtype=np.float64)
    row_spacing, col_spacing = (float(v) for v in spacing)  # type: ignore[attr-defined]
    return _Geometry(
        np.array(position, dtype=np.float64), iop[:3], iop[3:], (row_spacing, col_spacing)
    )


def _images(sources: list[Dataset]) -> dict[ImageKey, Dataset]:
    """Every source image (each frame of a multi-frame instance)."""
    found: dict[ImageKey, Dataset] = {}
    for ds in sources:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        if "PerFrameFunctionalGroupsSequence" in ds:
            for frame in range(1, frames + 1):
                found[str(ds.SOPInstanceUID), frame] = ds
        else:
            found[str(ds.SOPInstanceUID), None] = ds
    return found


def _key(reference: Dataset) -> ImageKey:
    frame = reference.get("ReferencedFrameNumber")
    return str(reference.ReferencedSOPInstanceUID), None if frame is None else int(frame)


def _seg_masks(seg: Dataset) -> dict[ImageKey, npt.NDArray[np.bool_]]:
    """The SEG's (one segment) frame mask of each source image it has a frame for."""
    pixels = seg.pixel_array.reshape(int(seg.NumberOfFrames), int(seg.Rows), int(seg.Columns))
    masks: dict[ImageKey, npt.NDArray[np.bool_]] = {}
    for index, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        (source,) = item.DerivationImageSequence[0].SourceImageSequence
        key = _key(source)
        masks[key] = masks.get(key, np.zeros(pixels.shape[1:], dtype=bool)) | (pixels[index] > 0)
    return masks


def _findings(volume: Volume, stack: SphereStack) -> Findings:
    mask = volume.voxels >= (SPHERE_HU + HEAD_HU) / 2
    r = stack.radius
    centre = tuple(float(v) for v in stack.centre)
    detection = Detection(
        label="Nodule 1",
        finding_type=codes.SCT.Nodule,
        centre_mm=centre,  # type: ignore[arg-type]
        bbox_min_mm=tuple(v - r for v in centre),  # type: ignore[arg-type]
        bbox_max_mm=tuple(v + r for v in centre),  # type: ignore[arg-type]
        longest_diameter_mm=2 * r,
        volume_mm3=stack.sphere_volume_mm3,
        score=0.9,
    )
    return Findings(
        Algorithm("sphere", "1"),
        (Segment("Sphere", mask, codes.SCT.Tissue, codes.SCT.Bone),),
        detections=(detection,),
    )


def _build(name: str, sources: list[Dataset], stack: SphereStack, folder: Path) -> _Case:
    volume = load_series(sources)
    findings = _findings(volume, stack)
    common = {"series_number": 900, "software_version": "0.0.1"}
    seg = build_seg(
        volume,
        findings,
        series_uid=derive_uid(name, "seg"),
        sop_uid=derive_uid(name, "s"),
        **common,
    )
    gsps = build_gsps(
        volume, findings, series_uid=derive_uid(name, "pr"), sop_uid=derive_uid(name, "p"), **common
    )
    segment_only = Findings(findings.algorithm, findings.segments)
    captures = build_sc(
        volume,
        segment_only,
        series_uid=derive_uid(name, "sc"),
        sop_uid_for=lambda k: derive_uid(name, "sc", str(k)),
        every_slice=False,
        **common,  # type: ignore[arg-type]
    )
    folder.mkdir(parents=True)
    paths = []
    # dciodvfy on the GSPS, and the first and middle captures (all are made alike)
    for label, ds in (("gsps", gsps), ("sc0", captures[0]), ("sc1", captures[len(captures) // 2])):
        path = folder / f"{label}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return _Case(
        name,
        stack,
        sources,
        volume,
        findings,
        _seg_masks(seg),
        pydicom.dcmread(paths[0]),
        captures,
        paths,
    )


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, _Case]:
    """A 30-degree tilted, unevenly spaced series; a 15-degree tilted, unevenly spaced
    legacy-converted enhanced CT (one instance, a frame per image)."""
    folder = tmp_path_factory.mktemp("overlay-geometry")
    tilted = make_sphere_stack(tilt_degrees=30.0, table_positions=LAYOUTS["uneven"])
    frames = make_sphere_stack(tilt_degrees=15.0, table_positions=LAYOUTS["uneven"])
    enhanced = LegacyConvertedEnhancedCTImage(
        frames.datasets,
        series_instance_uid=derive_uid("overlay-geometry", "enhanced-series"),
        series_number=78,
        sop_instance_uid=derive_uid("overlay-geometry", "enhanced"),
        instance_number=1,
    )
    return {
        "tilted": _build("tilted", tilted.datasets, tilted, folder / "tilted"),
        "multiframe": _build("multiframe", [enhanced], frames, folder / "multiframe"),
    }


NAMES = ("tilted", "multiframe")


def test_the_cases_are_what_they_claim(cases: dict[str, _Case]) -> None:
    """Resampled volumes, one of them made of the frames of one instance."""
    assert all(case.volume.resampled for case in cases.values())
    assert cases["multiframe"].volume.multiframe_source is cases["multiframe"].sources[0]
    assert cases["tilted"].volume.multiframe_source is None
    for case in cases.values():
        assert case.seg_masks, "the SEG holds no frame"
        assert case.volume.voxels.shape[1:] != (64, 64)  # the sheared grid is larger


def _layer(
    gsps: Dataset, description: str, images: dict[ImageKey, Dataset]
) -> Iterator[tuple[ImageKey, Dataset]]:
    """(source image, annotation) of each graphic annotation of the layer ``description``,
    checking that it is drawn on a source image (and frame)."""
    layers = {item.GraphicLayer: item.GraphicLayerDescription for item in gsps.GraphicLayerSequence}
    for annotation in gsps.GraphicAnnotationSequence:
        if layers[annotation.GraphicLayer] != description:
            continue
        (reference,) = annotation.ReferencedImageSequence
        key = _key(reference)
        assert key in images, f"the GSPS draws on {key}, not a source image"
        assert reference.ReferencedSOPClassUID == images[key].SOPClassUID
        yield key, annotation


@pytest.mark.parametrize("name", NAMES)
def test_gsps_outlines_are_the_seg_frame_of_the_same_source_image(
    cases: dict[str, _Case], name: str
) -> None:
    case = cases[name]
    images = _images(case.sources)
    outlines: dict[ImageKey, list[npt.NDArray[np.float64]]] = {}
    labelled: set[ImageKey] = set()
    for key, annotation in _layer(case.gsps, "Sphere", images):
        for item in annotation.get("GraphicObjectSequence", []):
            points = np.asarray(item.GraphicData, dtype=np.float64).reshape(-1, 2)
            outlines.setdefault(key, []).append(points)
        if annotation.get("TextObjectSequence"):
            labelled.add(key)
    assert set(outlines) == set(case.seg_masks)
    assert labelled == set(outlines)
    for key, polylines in outlines.items():
        mask = case.seg_masks[key]
        for points in polylines:
            assert np.array_equal(points[0], points[-1]), f"{key}: an outline is not closed"
            assert_on_boundary(points, mask)
        assert np.array_equal(even_odd_fill(polylines, mask.shape), mask), (
            f"{key}: the outlines do not enclose exactly the SEG's frame"
        )


def test_gsps_references_every_source_image_and_frame(cases: dict[str, _Case]) -> None:
    for case in cases.values():
        expected = {(uid, frame) for uid, frame in _images(case.sources)}
        referenced = set()
        for series in case.gsps.ReferencedSeriesSequence:
            for item in series.ReferencedImageSequence:
                frames = item.get("ReferencedFrameNumber")
                if frames is None:
                    referenced.add((str(item.ReferencedSOPInstanceUID), None))
                else:
                    numbers = [frames] if isinstance(frames, int) else list(frames)
                    referenced.update((str(item.ReferencedSOPInstanceUID), int(n)) for n in numbers)
        assert referenced == expected, case.name


@pytest.mark.parametrize("name", NAMES)
def test_detection_circles_are_largest_on_the_nearest_image_within_1_mm(
    cases: dict[str, _Case], name: str
) -> None:
    case = cases[name]
    images = _images(case.sources)
    centre = case.stack.centre
    distance = {
        key: abs(float((centre - _geometry(ds, key[1]).position) @ _geometry(ds, key[1]).normal))
        for key, ds in images.items()
    }
    nearest = min(distance, key=distance.__getitem__)
    radii: dict[ImageKey, float] = {}
    labelled = []
    for key, annotation in _layer(case.gsps, codes.SCT.Nodule.meaning, images):
        geometry = _geometry(images[key], key[1])
        for item in annotation.get("GraphicObjectSequence", []):
            assert item.GraphicType == "CIRCLE"
            (cx, cy), (px, py) = np.asarray(item.GraphicData, dtype=np.float64).reshape(-1, 2)
            # the centre's place on this image: the centre moved along the normal onto it
            on_image = centre - ((centre - geometry.position) @ geometry.normal) * geometry.normal
            assert np.linalg.norm(geometry.point_mm(cx, cy) - on_image) < 1.0, key
            radii[key] = float(np.hypot(px - cx, py - cy))
        if annotation.get("TextObjectSequence"):
            labelled.append(key)
    assert labelled == [nearest]
    assert max(radii, key=radii.__getitem__) == nearest
    assert distance[nearest] < 2.5  # the images around the sphere are at most 5 mm apart
    # every image through the sphere shows it
    assert {key for key, d in distance.items() if d < case.stack.radius} <= set(radii)


def _source_values(ds: Dataset, frame: int | None) -> npt.NDArray[np.float64]:
    """The image's stored values with its rescale (HU), read without pipelines code."""
    if frame is None:
        stored = ds.pixel_array.astype(np.float64)
        return stored * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    stored = ds.pixel_array[frame - 1].astype(np.float64)
    for group in (
        ds.PerFrameFunctionalGroupsSequence[frame - 1],
        ds.SharedFunctionalGroupsSequence[0],
    ):
        if "PixelValueTransformationSequence" in group:
            transform = group.PixelValueTransformationSequence[0]
            return stored * float(transform.RescaleSlope) + float(transform.RescaleIntercept)
    raise AssertionError("no rescale")


@pytest.mark.parametrize("name", NAMES)
def test_capture_colours_are_the_seg_frame_on_the_images_own_pixels(
    cases: dict[str, _Case], name: str
) -> None:
    case = cases[name]
    images = _images(case.sources)
    keys = [_key(capture.SourceImageSequence[0]) for capture in case.captures]
    assert sorted(keys, key=str) == sorted(case.seg_masks, key=str)
    for capture, key in zip(case.captures, keys, strict=True):
        pixels = capture.pixel_array.astype(np.int16)[:64, :64]  # the image; the legend below
        coloured = (pixels.max(axis=2) - pixels.min(axis=2)) > 0
        assert np.array_equal(coloured, case.seg_masks[key]), f"{key}: colours off the SEG frame"
        # Grey pixels are the source image's own, in its window (40/400), not the grid's.
        hu = _source_values(images[key], key[1])
        expected = np.clip((hu - (40 - 0.5)) / 399 + 0.5, 0, 1) * 255
        assert np.abs(pixels[..., 0][~coloured] - expected[~coloured]).max() <= 1.0, key


def test_dciodvfy_finds_no_error(cases: dict[str, _Case]) -> None:
    errors = [
        f"{case.name}/{path.name}: {error}"
        for case in cases.values()
        for path in case.paths
        for error in dciodvfy_errors(path)
    ]
    assert errors == []


def test_captures_reference_their_frame(cases: dict[str, _Case]) -> None:
    case = cases["multiframe"]
    for capture in case.captures:
        (source,) = capture.SourceImageSequence
        assert source.ReferencedSOPInstanceUID == case.sources[0].SOPInstanceUID
        assert int(source.ReferencedFrameNumber) >= 1
        assert f"frame {int(source.ReferencedFrameNumber)}" in capture.ImageComments


@pytest.mark.parametrize("name", NAMES)
def test_capture_rings_are_on_the_images_the_gsps_circles(
    cases: dict[str, _Case], name: str
) -> None:
    """A detection alone: a capture of each image its box crosses, the ring around the
    centre's place on that image (within 1 mm)."""
    case = cases[name]
    images = _images(case.sources)
    detections = Findings(case.findings.algorithm, detections=case.findings.detections)
    captures = build_sc(
        case.volume,
        detections,
        series_uid=derive_uid(name, "sc-rings"),
        series_number=901,
        software_version="0.0.1",
        sop_uid_for=lambda k: derive_uid(name, "sc-rings", str(k)),
        every_slice=False,
    )
    circled = {key for key, _ in _layer(case.gsps, codes.SCT.Nodule.meaning, images)}
    keys = [_key(capture.SourceImageSequence[0]) for capture in captures]
    assert set(keys) == circled and len(keys) == len(circled)
    centre = case.stack.centre
    checked = 0
    for capture, key in zip(captures, keys, strict=True):
        pixels = capture.pixel_array.astype(np.int16)[:64, :64]
        ring = np.argwhere((pixels.max(axis=2) - pixels.min(axis=2)) > 0)
        if len(ring) < 8 or ring.min(axis=0).min() == 0 or ring.max(axis=0).max() == 63:
            continue  # a ring cut by the image's edge has no centre to check
        geometry = _geometry(images[key], key[1])
        on_image = centre - ((centre - geometry.position) @ geometry.normal) * geometry.normal
        middle = (ring.min(axis=0) + ring.max(axis=0)) / 2  # (row, column) of its box
        drawn = geometry.point_mm(float(middle[1]) + 0.5, float(middle[0]) + 0.5)
        assert np.linalg.norm(drawn - on_image) < 1.0 + max(geometry.spacing), key
        checked += 1
    assert checked >= len(captures) // 2
