"""Volume <-> nnU-Net array: the axis order and spacing its reader gives, and the way back."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.nnunet_files import check_orientation
from pipelines.nnunet_geometry import to_nnunet
from pipelines.volume import Volume, load_series
from tests.support.phantom import make_ct_phantom


def _volume(orientation: str) -> Volume:
    phantom = make_ct_phantom(
        slices=6, size=16, pixel_spacing=2.0, slice_spacing=3.0, orientation=orientation
    )
    return load_series(phantom.datasets)


def _patient_point(volume: Volume, k: int, r: int, c: int) -> np.ndarray:
    return (volume.affine @ np.array([k, r, c, 1.0]))[:3]


def test_dicom_order_is_the_volume_unchanged_with_its_spacing() -> None:
    volume = _volume("axial")
    given = to_nnunet(volume, "dicom")
    assert np.array_equal(given.array, volume.voxels)
    assert given.spacing == pytest.approx((3.0, 2.0, 2.0))


@pytest.mark.parametrize("orientation", ["axial", "sagittal", "coronal"])
def test_ras_axes_point_right_anterior_superior(orientation: str) -> None:
    """[k, j, i] with i towards R, j towards A, k towards S (LPS: -x, -y, +z), any series."""
    volume = _volume(orientation)
    given = to_nnunet(volume, "RAS")
    # every voxel value is where the affine says: build an index map and follow it
    k, r, c = np.meshgrid(*(np.arange(n) for n in volume.voxels.shape), indexing="ij")
    ids = (k * 10000 + r * 100 + c).astype(np.float32)
    marked = Volume(voxels=ids, affine=volume.affine, datasets=volume.datasets)
    array = to_nnunet(marked, "RAS").array

    def lps(value: float) -> np.ndarray:
        kk, rest = divmod(int(value), 10000)
        rr, cc = divmod(rest, 100)
        return _patient_point(volume, kk, rr, cc)

    origin = lps(array[0, 0, 0])
    assert lps(array[0, 0, 1])[0] < origin[0]  # i: towards the patient's right (LPS -x)
    assert lps(array[0, 1, 0])[1] < origin[1]  # j: towards anterior (LPS -y)
    assert lps(array[1, 0, 0])[2] > origin[2]  # k: towards superior (LPS +z)
    steps = (
        np.linalg.norm(lps(array[1, 0, 0]) - origin),
        np.linalg.norm(lps(array[0, 1, 0]) - origin),
        np.linalg.norm(lps(array[0, 0, 1]) - origin),
    )
    assert given.spacing == pytest.approx(steps)


@pytest.mark.parametrize("code", ["RAS", "LPS", "PIR", "dicom"])
def test_a_label_map_comes_back_on_the_source_grid(code: str) -> None:
    volume = _volume("sagittal")
    given = to_nnunet(volume, code)
    labels = (given.array > 0).astype(np.uint8)  # a "prediction" made on nnU-Net's array
    back = given.to_volume_grid(labels)
    assert back.shape == volume.voxels.shape
    assert np.array_equal(back, (volume.voxels > 0).astype(np.int32))


def test_a_prediction_of_another_shape_is_refused() -> None:
    given = to_nnunet(_volume("axial"), "RAS")
    with pytest.raises(ValueError, match="prediction shape"):
        given.to_volume_grid(np.zeros((2, 2, 2), dtype=np.uint8))


@pytest.mark.parametrize("bad", ["RAR", "XYZ", "RA", "dicomish"])
def test_orientation_codes_are_checked(bad: str) -> None:
    with pytest.raises(ValueError, match="orientation"):
        check_orientation(bad)
    assert check_orientation("ras") == "RAS"
    assert check_orientation("dicom") == "dicom"
