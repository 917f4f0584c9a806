"""Secondary Capture writing: validity, labels, overlay pixels on the mask, detection rings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from scipy import ndimage

from pipelines.colors import segment_rgb
from pipelines.findings import Findings
from pipelines.sc import NOT_FOR_DIAGNOSIS, build_sc
from pipelines.uids import derive_uid
from pipelines.volume import Volume
from tests.support.dicom_validate import dciodvfy_messages
from tests.unit.pipelines.overlay_checks import assert_pixelmed_valid, nearest_slices

SERIES_UID = "2.25.3001"


def _sop_uid(k: int) -> str:
    return derive_uid("test-sc", str(k))


def _captures(volume: Volume, findings: Findings, *, every_slice: bool = False) -> list[Dataset]:
    return build_sc(
        volume,
        findings,
        series_uid=SERIES_UID,
        series_number=1005,
        software_version="9.9.9",
        sop_uid_for=_sop_uid,
        every_slice=every_slice,
    )


def _slice_of(capture: Dataset, volume: Volume) -> int:
    (source,) = capture.SourceImageSequence
    uids = [str(ds.SOPInstanceUID) for ds in volume.datasets]
    return uids.index(str(source.ReferencedSOPInstanceUID))


def _saved(captures: list[Dataset], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, capture in enumerate(captures):
        path = folder / f"sc-{index}.dcm"
        capture.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def segment_captures(
    tmp_path_factory: pytest.TempPathFactory, phantom_volume: Volume, phantom_findings: Findings
) -> list[Dataset]:
    """The captures of the phantom's segments, as written and read back."""
    paths = _saved(_captures(phantom_volume, phantom_findings), tmp_path_factory.mktemp("sc"))
    return [pydicom.dcmread(path) for path in paths]


def test_one_capture_per_slice_with_findings_or_per_slice(
    phantom_volume: Volume, phantom_findings: Findings
) -> None:
    (lungs,) = [s for s in phantom_findings.segments if s.label == "Lungs"]
    findings = Findings(phantom_findings.algorithm, segments=(lungs,))
    marked = np.flatnonzero(lungs.mask.any(axis=(1, 2))).tolist()
    assert 0 < len(marked) < phantom_volume.voxels.shape[0]
    some = _captures(phantom_volume, findings)
    assert [_slice_of(c, phantom_volume) for c in some] == marked
    for capture in some:
        k = _slice_of(capture, phantom_volume)
        assert capture.SOPInstanceUID == _sop_uid(k) and capture.InstanceNumber == k + 1
    every = _captures(phantom_volume, findings, every_slice=True)
    assert [_slice_of(c, phantom_volume) for c in every] == list(
        range(phantom_volume.voxels.shape[0])
    )


def test_dciodvfy_and_pixelmed_find_no_error(
    tmp_path: Path,
    segment_captures: list[Dataset],
    nodule_volume: Volume,
    nodule_findings: Findings,
) -> None:
    detections = _captures(nodule_volume, nodule_findings)
    paths = _saved([segment_captures[0], segment_captures[len(segment_captures) // 2]], tmp_path)
    paths += _saved(detections[:1], tmp_path / "detections")
    for path in paths:
        messages = dciodvfy_messages(path)
        assert messages.errors == (), path.name
    assert_pixelmed_valid(paths)


def test_labelled_derived_not_for_diagnosis_and_referencing_the_source(
    segment_captures: list[Dataset], phantom_volume: Volume, phantom_findings: Findings
) -> None:
    algorithm = phantom_findings.algorithm
    for capture in segment_captures:
        k = _slice_of(capture, phantom_volume)
        source = phantom_volume.datasets[k]
        assert capture.Modality == "OT" and capture.StudyInstanceUID == phantom_volume.study_uid
        assert capture.SeriesInstanceUID == SERIES_UID
        assert capture.SeriesDescription == (
            f"AI overlay, derived, not for primary diagnosis ({algorithm.name})"
        )
        assert NOT_FOR_DIAGNOSIS in capture.ImageComments
        assert capture.BurnedInAnnotation == "YES"
        assert list(capture.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        assert capture.PhotometricInterpretation == "RGB" and capture.SamplesPerPixel == 3
        assert [float(v) for v in capture.PixelSpacing] == [float(v) for v in source.PixelSpacing]
        assert list(capture.PatientOrientation) == ["L", "P"]  # axial: rows go left, columns back
        (item,) = [
            e
            for e in capture.ContributingEquipmentSequence
            if e.get("ManufacturerModelName") == algorithm.name
        ]
        assert item.SoftwareVersions == algorithm.version
        assert capture.SourceImageSequence[0].ReferencedSOPClassUID == source.SOPClassUID


def test_overlay_pixels_fall_on_the_mask(
    segment_captures: list[Dataset], phantom_volume: Volume, phantom_findings: Findings
) -> None:
    """In the slice's part of the capture, a pixel has colour exactly where a segment is,
    in that segment's colour on its boundary; the rest is the windowed grey."""
    rows, columns = phantom_volume.voxels.shape[1:]
    wanted = [(s.color, s.property_type) for s in phantom_findings.segments]
    colors = dict(
        zip((s.label for s in phantom_findings.segments), segment_rgb(wanted), strict=True)
    )
    for capture in segment_captures:
        k = _slice_of(capture, phantom_volume)
        pixels = capture.pixel_array.astype(int)
        assert pixels.shape[0] > rows and pixels.shape[1] >= columns  # legend strip below
        image = pixels[:rows, :columns]
        colored = (image[..., 0] != image[..., 1]) | (image[..., 1] != image[..., 2])
        union = np.any([s.mask[k] for s in phantom_findings.segments], axis=0)
        assert np.array_equal(colored, union), f"slice {k}: overlay off the masks"
        # the last segment drawn owns its boundary pixels
        last = [s for s in phantom_findings.segments if s.mask[k].any()][-1]
        edge = last.mask[k] & ~ndimage.binary_erosion(last.mask[k], border_value=0)
        assert (image[edge] == colors[last.label]).all()
        # the legend has a swatch of each segment's colour
        strip = pixels[rows:].reshape(-1, 3)
        for segment in phantom_findings.segments:
            assert (strip == colors[segment.label]).all(axis=1).any(), segment.label


def test_detections_are_rings_around_their_centre_on_the_nearest_slice(
    nodule_volume: Volume, nodule_findings: Findings
) -> None:
    captures = {_slice_of(c, nodule_volume): c for c in _captures(nodule_volume, nodule_findings)}
    (color,) = set(segment_rgb([(None, codes.SCT.Nodule)]))
    rows, columns = nodule_volume.voxels.shape[1:]
    row_spacing, col_spacing = (float(v) for v in nodule_volume.datasets[0].PixelSpacing)
    for detection in nodule_findings.detections:
        k = min(nearest_slices(nodule_volume, detection.centre_mm))
        image = captures[k].pixel_array[:rows, :columns].astype(int)
        ring = (image == color).all(axis=2)
        centre = np.linalg.solve(nodule_volume.affine, [*detection.centre_mm, 1.0])[1:3]
        half = (np.asarray(detection.bbox_max_mm) - np.asarray(detection.bbox_min_mm))[:2] / 2
        radius_px = float(np.mean(half / [col_spacing, row_spacing]))
        rr, cc = np.mgrid[:rows, :columns]
        distance = np.hypot(rr - centre[0], cc - centre[1])
        near = np.abs(distance - radius_px) <= 1.5
        # the ring goes all the way round: ring pixels in each of 8 sectors
        angles = np.arctan2(rr - centre[0], cc - centre[1])[ring & near]
        sectors = np.histogram(angles, bins=8, range=(-np.pi, np.pi))[0]
        assert (sectors > 0).all(), detection.label
        # every pixel of the ring's colour near the nodule lies on the ring (the caption
        # is above it, outside this disc)
        disc = distance <= radius_px + 1.5
        assert (ring & disc & ~near).sum() == 0, detection.label


def test_real_ct(tmp_path: Path, real_volume: Volume, real_findings: Findings) -> None:
    """The real CT of ../shared/data: valid, and colour exactly on its masks."""
    segments = tuple(s for s in real_findings.segments if s.mask.any())
    findings = Findings(real_findings.algorithm, segments=segments[:1])
    k = int(np.argmax(segments[0].mask.sum(axis=(1, 2))))
    (capture,) = [c for c in _captures(real_volume, findings) if _slice_of(c, real_volume) == k]
    (path,) = _saved([capture], tmp_path)
    assert dciodvfy_messages(path).errors == ()
    rows, columns = real_volume.voxels.shape[1:]
    image = pydicom.dcmread(path).pixel_array[:rows, :columns].astype(int)
    colored = (image[..., 0] != image[..., 1]) | (image[..., 1] != image[..., 2])
    assert np.array_equal(colored, segments[0].mask[k])
