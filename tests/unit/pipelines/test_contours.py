"""pipelines/contours.py: the even-odd fill, tracing and plane geometry, against references."""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage import draw

from pipelines.contours import (
    fill_polygons,
    nearest_plane,
    patient_to_plane,
    plane_to_patient,
    trace_plane,
)
from pipelines.volume import load_series
from tests.support.tilted import make_sphere_stack


def test_the_scanline_fill_is_scikit_image_s_polygon_with_the_even_odd_rule() -> None:
    """Random (self-intersecting, overlapping, off-image) polygons: pixel for pixel."""
    rng = np.random.default_rng(5)
    for _ in range(200):
        shape = (int(rng.integers(5, 60)), int(rng.integers(5, 60)))
        polygons = []
        for _ in range(int(rng.integers(1, 4))):
            n = int(rng.integers(3, 12))
            rows = rng.uniform(-5, shape[0] + 5, n)
            cols = rng.uniform(-5, shape[1] + 5, n)
            polygons.append(np.column_stack([rows, cols]))
        expected = np.zeros(shape, dtype=bool)
        for polygon in polygons:
            filled = np.zeros(shape, dtype=bool)
            rr, cc = draw.polygon(polygon[:, 0], polygon[:, 1], shape=shape)  # type: ignore[no-untyped-call]
            filled[rr, cc] = True
            expected ^= filled
        assert np.array_equal(fill_polygons(polygons, shape), expected)
    assert not fill_polygons([], (4, 4)).any()


def test_traced_outlines_fill_back_to_the_mask_exactly() -> None:
    """Noise masks: single pixels, diagonal touches, holes in holes, the image border."""
    rng = np.random.default_rng(6)
    for n in range(100):
        mask = rng.random((40, 50)) > 0.6
        if n % 2:
            mask = ndimage.binary_opening(mask)
        assert np.array_equal(fill_polygons(trace_plane(mask), mask.shape), mask), n


def test_plane_coordinates_round_trip_on_a_tilted_plane_and_the_nearest_plane() -> None:
    stack = make_sphere_stack(tilt_degrees=30.0, table_positions=[-5.0, 0.0, 2.5, 10.0])
    volume = load_series(stack.datasets)
    plane = volume.planes[2]
    ds = plane.dataset
    rows_cols = np.array([[0.0, 0.0], [3.5, 7.25], [63.0, 1.0]])
    points = plane_to_patient(plane, rows_cols)
    assert np.allclose(points[0], np.asarray(ds.ImagePositionPatient, dtype=float))
    iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
    spacing = np.asarray(ds.PixelSpacing, dtype=float)
    expected = ds.ImagePositionPatient + 3.5 * spacing[0] * iop[3:] + 7.25 * spacing[1] * iop[:3]
    assert np.allclose(points[1], expected)
    back, distances = patient_to_plane(plane, points + 0.3 * plane.normal)
    assert np.allclose(back, rows_cols) and np.allclose(distances, 0.3)
    # Nearest along the tilted planes' normal (not along the table): unevenly spaced planes,
    # points a little off each and points at each one's depth anywhere in the plane.
    depth = [float(p.position @ plane.normal) for p in volume.planes]
    for k, d in enumerate(depth):
        assert nearest_plane(volume, volume.planes[k].position + 0.2 * plane.normal) == k
        assert nearest_plane(volume, d * plane.normal + 40.0 * plane.row_dir) == k
