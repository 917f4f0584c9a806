"""RTSTRUCT and KOS on every kind of source volume: tilted and uneven, and multi-frame.

The volumes a pipeline sees are not always the images: a gantry-tilted, unevenly spaced
head CT is resampled to a regular grid, and an enhanced CT is one instance of many frames.
The objects are judged from what they say against the source images' own geometry (read
from the DICOM attributes here, not from ``pipelines.planes``):

- every contour lies in the plane of the image (or frame) it references, within 0.01 mm;
- the contours filled on the source planes give the SEG's frames back (Dice >= 0.95 per
  segment), the SEG being what viewers already show on those images;
- the KOS references, for each detection, the image (and frame) nearest its centre;
- dciodvfy, DCMTK's drtdump (RTSTRUCT) and PixelMed's DicomSRValidator (KOS) find nothing
  wrong.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pytest
from highdicom.legacy import LegacyConvertedEnhancedCTImage
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from pipelines.findings import Algorithm, Detection, Findings, Segment
from pipelines.kos import build_kos
from pipelines.rtstruct import build_rtstruct, rasterize_contours
from pipelines.seg import build_seg, non_empty_segments
from pipelines.volume import Volume, load_series
from tests.support.dicom_validate import validation_errors
from tests.support.tilted import HEAD_HU, SPHERE_HU, SphereStack, make_sphere_stack
from tests.unit.pipelines.test_scanner_stacks import LAYOUTS

LESION = codes.SCT.MorphologicallyAbnormalStructure
ALGORITHM = Algorithm("geometry-test", "1.0")


@dataclass(frozen=True)
class _Built:
    """One source volume with its findings and every object built from them."""

    volume: Volume
    sources: list[Dataset]
    findings: Findings
    seg: Dataset
    rtstruct: Dataset
    kos: Dataset


def _detection(label: str, centre: npt.NDArray[np.float64], diameter: float) -> Detection:
    half = diameter / 2
    return Detection(
        label=label,
        finding_type=codes.SCT.Nodule,
        centre_mm=tuple(float(v) for v in centre),  # type: ignore[arg-type]
        bbox_min_mm=tuple(float(v) - half for v in centre),  # type: ignore[arg-type]
        bbox_max_mm=tuple(float(v) + half for v in centre),  # type: ignore[arg-type]
        longest_diameter_mm=diameter,
        volume_mm3=float(np.pi / 6 * diameter**3),
        score=0.9,
    )


def _build(volume: Volume, sources: list[Dataset], findings: Findings) -> _Built:
    ids = {"software_version": "9.9.9"}
    seg = build_seg(
        volume, findings, series_uid="2.25.61", sop_uid="2.25.62", series_number=1001, **ids
    )
    rtstruct = build_rtstruct(
        volume, findings, series_uid="2.25.63", sop_uid="2.25.64", series_number=1002, **ids
    )
    kos = build_kos(
        [(volume, findings, seg)],
        series_uid="2.25.65",
        sop_uid="2.25.66",
        series_number=1003,
        **ids,
    )
    return _Built(volume, sources, findings, seg, rtstruct, kos)


@pytest.fixture(scope="module")
def tilted() -> _Built:
    """30 degrees of gantry tilt and uneven gaps: the sphere, the head, two detections."""
    stack: SphereStack = make_sphere_stack(tilt_degrees=30.0, table_positions=LAYOUTS["uneven"])
    volume = load_series(stack.datasets)
    assert volume.resampled
    sphere = volume.voxels >= (SPHERE_HU + HEAD_HU) / 2
    head = volume.voxels >= HEAD_HU / 2
    # Off-centre detections, one in the 5 mm part of the stack where slices are far apart.
    detections = (
        _detection("Nodule 1", stack.centre, 2 * stack.radius),
        _detection("Nodule 2", stack.centre + np.array([-20.0, 25.0, 12.0]), 6.0),
    )
    findings = Findings(
        ALGORITHM,
        segments=(
            Segment("Sphere", sphere, LESION, codes.SCT.Lesion),
            Segment("Head", head, codes.SCT.Tissue, codes.SCT.Tissue),
        ),
        detections=detections,
    )
    return _build(volume, stack.datasets, findings)


@pytest.fixture(scope="module")
def enhanced(real_ct_datasets: list[Dataset], real_findings: Findings) -> _Built:
    """The real CT as one Legacy Converted Enhanced CT, with ct-basic's segments."""
    source = LegacyConvertedEnhancedCTImage(
        real_ct_datasets,
        series_instance_uid="2.25.615001",
        series_number=77,
        sop_instance_uid="2.25.615002",
        instance_number=1,
    )
    volume = load_series([source])
    assert volume.multiframe_source is source
    segments = non_empty_segments(real_findings)
    assert all(segment.mask.shape == volume.voxels.shape for segment in segments)
    centre = volume.affine @ np.array([*(np.array(volume.voxels.shape) * [0.3, 0.5, 0.5]), 1.0])
    findings = Findings(
        ALGORITHM, segments=segments, detections=(_detection("Nodule 1", centre[:3], 9.0),)
    )
    return _build(volume, [source], findings)


@pytest.fixture(params=["tilted", "enhanced"])
def built(request: pytest.FixtureRequest) -> _Built:
    result: _Built = request.getfixturevalue(request.param)
    return result


# --- The source images' geometry, straight from their attributes --------------------------


@dataclass(frozen=True)
class _Image:
    position: npt.NDArray[np.float64]
    row_dir: npt.NDArray[np.float64]
    col_dir: npt.NDArray[np.float64]
    spacing: npt.NDArray[np.float64]

    @property
    def normal(self) -> npt.NDArray[np.float64]:
        result: npt.NDArray[np.float64] = np.cross(self.row_dir, self.col_dir)
        return result


def _images(sources: list[Dataset]) -> dict[tuple[str, int | None], _Image]:
    """(SOP Instance UID, frame or None) -> geometry of every source image."""
    found: dict[tuple[str, int | None], _Image] = {}
    for ds in sources:
        if "PerFrameFunctionalGroupsSequence" not in ds:
            iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
            found[str(ds.SOPInstanceUID), None] = _Image(
                np.asarray(ds.ImagePositionPatient, dtype=float),
                iop[:3],
                iop[3:],
                np.asarray(ds.PixelSpacing, dtype=float),
            )
            continue
        shared = ds.SharedFunctionalGroupsSequence[0]
        for number, item in enumerate(ds.PerFrameFunctionalGroupsSequence, start=1):
            iop = _functional(item, shared, "PlaneOrientationSequence", "ImageOrientationPatient")
            found[str(ds.SOPInstanceUID), number] = _Image(
                _functional(item, shared, "PlanePositionSequence", "ImagePositionPatient"),
                iop[:3],
                iop[3:],
                _functional(item, shared, "PixelMeasuresSequence", "PixelSpacing"),
            )
    return found


def _functional(
    item: Dataset, shared: Dataset, sequence: str, keyword: str
) -> npt.NDArray[np.float64]:
    group = item.get(sequence) or shared.get(sequence)
    return np.asarray(group[0].get(keyword), dtype=float)


def _key(reference: Dataset) -> tuple[str, int | None]:
    frame = reference.get("ReferencedFrameNumber")
    return str(reference.ReferencedSOPInstanceUID), None if frame is None else int(frame)


def _seg_frames(built: _Built, number: int) -> dict[tuple[str, int | None], npt.NDArray[np.bool_]]:
    """Segment ``number`` of the SEG: its frames keyed by the source image they lie on."""
    seg = built.seg
    pixels = seg.pixel_array.reshape(int(seg.NumberOfFrames), int(seg.Rows), int(seg.Columns))
    shared = seg.SharedFunctionalGroupsSequence[0]
    frames = {}
    for index, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        identification = item.get("SegmentIdentificationSequence") or shared.get(
            "SegmentIdentificationSequence"
        )
        if int(identification[0].ReferencedSegmentNumber) == number:
            [source] = item.DerivationImageSequence[0].SourceImageSequence
            frames[_key(source)] = pixels[index].astype(bool)
    return frames


# --- Tests ----------------------------------------------------------------------------------


def test_every_contour_lies_in_the_plane_of_the_image_it_references(built: _Built) -> None:
    images = _images(built.sources)
    multiframe = built.volume.multiframe_source is not None
    contours = [c for roi in built.rtstruct.ROIContourSequence for c in roi.ContourSequence]
    assert contours
    for contour in contours:
        [reference] = contour.ContourImageSequence
        assert ("ReferencedFrameNumber" in reference) == multiframe
        image = images[_key(reference)]
        points = np.asarray(contour.ContourData, dtype=np.float64).reshape(-1, 3)
        assert len(points) == int(contour.NumberOfContourPoints) >= 3
        assert np.abs((points - image.position) @ image.normal).max() < 0.01


def test_the_contours_give_the_seg_frames_back_on_the_source_planes(built: _Built) -> None:
    segments = non_empty_segments(built.findings)
    planes = {
        (str(plane.dataset.SOPInstanceUID), plane.frame): k
        for k, plane in enumerate(built.volume.planes)
    }
    for number, (segment, roi) in enumerate(
        zip(segments, built.rtstruct.ROIContourSequence, strict=False), start=1
    ):
        drawn = rasterize_contours(built.volume, roi)
        first = built.sources[0]
        assert drawn.shape == (len(built.volume.planes), int(first.Rows), int(first.Columns))
        from_seg = np.zeros_like(drawn)
        for key, frame in _seg_frames(built, number).items():
            from_seg[planes[key]] = frame
        assert from_seg.any(), segment.label
        dice = (
            2
            * np.count_nonzero(drawn & from_seg)
            / (np.count_nonzero(drawn) + np.count_nonzero(from_seg))
        )
        assert dice >= 0.95, (segment.label, dice)


def test_a_detection_is_drawn_and_flagged_on_the_image_nearest_its_centre(
    built: _Built,
) -> None:
    images = _images(built.sources)
    offset = len(non_empty_segments(built.findings))
    document = hd.ko.KeyObjectSelectionDocument.from_dataset(built.kos)
    flagged = {
        (
            str(item.referenced_sop_instance_uid),
            None
            if item.referenced_frame_numbers is None
            else int(item.referenced_frame_numbers[0]),
        )
        for item in document.content.get_references(value_type=hd.sr.ValueTypeValues.IMAGE)
    }
    for number, detection in enumerate(built.findings.detections, start=offset):
        centre = np.asarray(detection.centre_mm, dtype=float)
        distance = {
            key: abs((centre - image.position) @ image.normal) for key, image in images.items()
        }
        nearest = min(distance.values())
        # A centre halfway between two images may take either.
        closest = {key for key, value in distance.items() if value <= nearest + 1e-6}
        assert flagged & closest, detection.label
        [contour] = built.rtstruct.ROIContourSequence[number].ContourSequence
        key = _key(contour.ContourImageSequence[0])
        assert key in closest, detection.label
        image = images[key]
        points = np.asarray(contour.ContourData, dtype=np.float64).reshape(-1, 3)
        in_plane = centre - ((centre - image.position) @ image.normal) * image.normal
        radii = np.linalg.norm(points - in_plane, axis=1)
        assert np.allclose(radii, detection.longest_diameter_mm / 2, atol=0.01)
    # The frames of one multi-frame image are told apart (ReferencedFrameNumber).
    if built.volume.multiframe_source is not None:
        assert all(frame is not None for _, frame in flagged)


def test_dciodvfy_drtdump_and_pixelmed_find_nothing_wrong(
    tilted: _Built, enhanced: _Built, tmp_path: Path
) -> None:
    paths = []
    for name, built in (("tilted", tilted), ("enhanced", enhanced)):
        for kind, ds in (("rtstruct", built.rtstruct), ("kos", built.kos)):
            path = tmp_path / f"{name}-{kind}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
    assert validation_errors(paths, tmp_path / "work") == []


def test_a_contour_off_its_image_or_on_another_is_refused_when_read_back(tilted: _Built) -> None:
    roi = copy.deepcopy(tilted.rtstruct.ROIContourSequence[0])
    [reference] = roi.ContourSequence[0].ContourImageSequence
    image = _images(tilted.sources)[_key(reference)]
    points = np.asarray(roi.ContourSequence[0].ContourData, dtype=float).reshape(-1, 3)
    roi.ContourSequence[0].ContourData = (points + 0.5 * image.normal).ravel().tolist()
    with pytest.raises(ValueError, match=r"0\.50 mm off the plane"):
        rasterize_contours(tilted.volume, roi)
    roi.ContourSequence[0].ContourData = points.ravel().tolist()
    reference.ReferencedSOPInstanceUID = "2.25.999"
    with pytest.raises(ValueError, match="references an image not in the volume"):
        rasterize_contours(tilted.volume, roi)
