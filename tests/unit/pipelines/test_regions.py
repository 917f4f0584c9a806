"""Key-image regions: where a finding is drawn, in the image coordinates viewers use."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.sr.codedict import codes

from pipelines.findings import Detection
from pipelines.regions import MAX_OUTLINE_POINTS, MIN_HALF_SIDE_PX, detection_region, segment_region
from pipelines.volume import Volume, load_series
from tests.support.phantom import image_point_mm, make_ct_phantom

OBLIQUE = (0.866025, 0.5, 0.0, 0.0, 0.0, -1.0)


def _volume(orientation: object) -> Volume:
    phantom = make_ct_phantom(
        slices=10,
        size=40,
        pixel_spacing=2.0,
        slice_spacing=3.0,
        orientation=orientation,  # type: ignore[arg-type]
    )
    return load_series(phantom.datasets)


def _voxel_centre(volume: Volume, k: int, r: int, c: int) -> tuple[float, float, float]:
    x, y, z = (volume.affine @ np.array([k, r, c, 1.0]))[:3]
    return float(x), float(y), float(z)


@pytest.mark.parametrize("orientation", ["axial", "sagittal", OBLIQUE], ids=str)
def test_detection_box_is_centred_on_its_key_slice(orientation: object) -> None:
    volume = _volume(orientation)
    centre = _voxel_centre(volume, 6, 20, 13)
    size = 10.0  # mm in every patient axis: the rectangle spans the box's extent in-plane
    detection = Detection(
        label="Lesion",
        finding_type=codes.SCT.Nodule,
        centre_mm=centre,
        bbox_min_mm=tuple(v - size / 2 for v in centre),  # type: ignore[arg-type]
        bbox_max_mm=tuple(v + size / 2 for v in centre),  # type: ignore[arg-type]
        longest_diameter_mm=size,
        volume_mm3=500.0,
        score=0.9,
    )
    region = detection_region(volume, detection)
    assert region.slice_index == 6
    assert region.image is volume.datasets[6]
    assert region.graphic_type == "POLYLINE"
    points = region.points
    assert len(points) == 5 and np.array_equal(points[0], points[-1])
    # A rectangle whose sides follow the image's rows and columns, centred on the detection.
    columns, rows = sorted(set(points[:, 0].tolist())), sorted(set(points[:, 1].tolist()))
    assert len(columns) == 2 and len(rows) == 2
    middle = (sum(columns) / 2, sum(rows) / 2)
    assert np.allclose(image_point_mm(region.image, *middle), centre, atol=1e-3)
    orientation = np.array(region.image.ImageOrientationPatient, dtype=float)
    row_spacing, col_spacing = (float(v) for v in region.image.PixelSpacing)
    extent = np.full(3, size)
    width, height = columns[1] - columns[0], rows[1] - rows[0]
    assert width == pytest.approx(np.abs(orientation[:3]) @ extent / col_spacing)
    assert height == pytest.approx(np.abs(orientation[3:]) @ extent / row_spacing)


def test_a_tiny_detection_still_gets_a_visible_box_and_a_centre_outside_is_clamped() -> None:
    volume = _volume("axial")
    centre = _voxel_centre(volume, 0, 5, 5)
    beyond = (centre[0], centre[1], centre[2] - 100.0)  # far below the first slice
    for where, expected_slice in ((centre, 0), (beyond, 0)):
        detection = Detection(
            label="Speck",
            finding_type=codes.SCT.Nodule,
            centre_mm=where,
            bbox_min_mm=where,
            bbox_max_mm=where,
            longest_diameter_mm=0.1,
            volume_mm3=0.1,
            score=0.5,
        )
        region = detection_region(volume, detection)
        assert region.slice_index == expected_slice
        top_left, top_right, bottom_right, _, _ = region.points
        assert top_right[0] - top_left[0] == pytest.approx(2 * MIN_HALF_SIDE_PX)
        assert bottom_right[1] - top_right[1] == pytest.approx(2 * MIN_HALF_SIDE_PX)


def test_segment_outline_is_on_its_largest_slice_around_its_largest_piece() -> None:
    volume = _volume("axial")
    mask = np.zeros(volume.voxels.shape, dtype=bool)
    mask[2, 10:14, 10:14] = True  # 16 voxels
    mask[7, 5:15, 20:30] = True  # 100 voxels: the largest slice's big piece
    mask[7, 30:33, 5:8] = True  # a small second piece on the same slice
    region = segment_region(volume, mask)
    assert region.slice_index == 7 and region.graphic_type == "POLYLINE"
    points = region.points
    assert np.array_equal(points[0], points[-1])
    columns, rows = points[:, 0], points[:, 1]
    # The boundary of pixels 20..29 x 5..14: pixel edges at 20..30 and 5..15 (±0.5 px).
    assert columns.min() >= 19.5 and columns.max() <= 30.5
    assert rows.min() >= 4.5 and rows.max() <= 15.5
    assert columns.max() - columns.min() >= 9 and rows.max() - rows.min() >= 9


def test_segment_outline_cases_at_the_edges() -> None:
    volume = _volume("axial")
    single = np.zeros(volume.voxels.shape, dtype=bool)
    single[4, 3, 9] = True
    region = segment_region(volume, single)
    assert region.graphic_type == "POINT"
    assert region.points.tolist() == [[9.5, 3.5]]

    border = np.zeros(volume.voxels.shape, dtype=bool)
    border[4, 0:40, 0:40] = True  # touches every edge: still a closed outline
    region = segment_region(volume, border)
    assert region.graphic_type == "POLYLINE"
    assert np.array_equal(region.points[0], region.points[-1])
    assert region.points.min() >= 0.0 and region.points.max() <= 40.0

    ring = np.zeros(volume.voxels.shape, dtype=bool)
    yy, xx = np.mgrid[0:40, 0:40]
    ring[5] = (yy - 20) ** 2 + (xx - 20) ** 2 < 18**2
    region = segment_region(volume, ring)
    assert len(region.points) <= MAX_OUTLINE_POINTS + 1

    with pytest.raises(ValueError, match="empty"):
        segment_region(volume, np.zeros(volume.voxels.shape, dtype=bool))
