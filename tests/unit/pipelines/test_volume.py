"""Series -> volume: ordering, geometry, rescale and every refusal."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import JPEG2000Lossless, RLELossless

from pipelines.errors import VolumeError
from pipelines.volume import Volume, load_series, scan_files
from tests.support.phantom import DEFAULT_LUNGS, CtPhantom, _anatomy, make_ct_phantom


def _copies(datasets: list[Dataset]) -> list[Dataset]:
    return [copy.deepcopy(ds) for ds in datasets]


def _assert_voxels_match_anatomy(volume: Volume) -> None:
    """Every voxel holds the phantom's HU at the point the affine maps it to (+ noise)."""
    k, r, c = np.meshgrid(*(np.arange(n) for n in volume.voxels.shape), indexing="ij")
    index = np.stack([k, r, c, np.ones_like(k)], axis=-1).reshape(-1, 4).T
    points = volume.affine @ index
    truth = _anatomy(points[0], points[1], points[2], DEFAULT_LUNGS).reshape(volume.voxels.shape)
    assert np.abs(volume.voxels - truth).max() < 80  # noise is 10 HU


def test_shuffled_slices_load_sorted_along_the_normal() -> None:
    datasets = make_ct_phantom(slices=20, size=64, pixel_spacing=5.5, shuffle=True).datasets
    assert [float(ds.ImagePositionPatient[2]) for ds in datasets] != sorted(
        float(ds.ImagePositionPatient[2]) for ds in datasets
    )

    volume = load_series(datasets)

    z = [float(ds.ImagePositionPatient[2]) for ds in volume.datasets]
    assert z == sorted(z)
    assert np.allclose(np.diff(z), 5.0)
    assert volume.voxels.shape == (20, 64, 64)
    assert volume.voxels.dtype == np.float32
    _assert_voxels_match_anatomy(volume)


def test_rescale_is_applied(phantom: CtPhantom, phantom_volume: Volume) -> None:
    ds = phantom_volume.datasets[7]
    expected = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(
        ds.RescaleIntercept
    )
    assert np.array_equal(phantom_volume.voxels[7], expected)
    assert phantom_volume.voxels.min() == pytest.approx(-1000, abs=1)  # air, not stored 24


def test_a_modality_lut_sequence_is_applied_like_a_rescale(phantom: CtPhantom) -> None:
    """Some scanners give a Modality LUT instead of slope and intercept: same Hounsfield units."""
    datasets = _copies(phantom.datasets[:6])
    rescaled = load_series(datasets).voxels
    for ds in datasets:
        stored = ds.pixel_array
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        del ds.RescaleSlope, ds.RescaleIntercept
        lut = Dataset()
        entries = int(stored.max()) + 1
        lut.LUTDescriptor = [entries, 0, 16]
        lut.ModalityLUTType = "HU"
        lut.LUTData = [round(v * slope + intercept) + 2048 for v in range(entries)]
        ds.ModalityLUTSequence = [lut]
        # 16-bit LUT values are unsigned: offset by 2048, taken off again below.
    looked_up = load_series(datasets).voxels - 2048
    assert np.array_equal(looked_up, np.round(rescaled))


def test_affine_maps_indices_to_image_positions(phantom_volume: Volume) -> None:
    for k, ds in enumerate(phantom_volume.datasets):
        assert np.allclose(phantom_volume.affine @ [k, 0, 0, 1], [*ds.ImagePositionPatient, 1])
    ds = phantom_volume.datasets[0]
    row_spacing, col_spacing = (float(v) for v in ds.PixelSpacing)
    # row r moves along IOP[3:6] (here +y), column c along IOP[0:3] (here +x)
    assert np.allclose(
        phantom_volume.affine @ [0, 3, 5, 1],
        [
            ds.ImagePositionPatient[0] + 5 * col_spacing,
            ds.ImagePositionPatient[1] + 3 * row_spacing,
            ds.ImagePositionPatient[2],
            1,
        ],
    )
    assert phantom_volume.spacing == pytest.approx((5.0, 2.75, 2.75))
    assert phantom_volume.voxel_volume_mm3 == pytest.approx(5.0 * 2.75 * 2.75)
    assert phantom_volume.modality == "CT"
    assert phantom_volume.series_uid == ds.SeriesInstanceUID
    assert phantom_volume.study_uid == ds.StudyInstanceUID


@pytest.mark.parametrize("orientation", ["sagittal", "coronal"])
def test_non_axial_series_gets_the_right_affine(orientation: str) -> None:
    datasets = make_ct_phantom(
        slices=24,
        size=64,
        pixel_spacing=5.0,
        slice_spacing=4.0,
        orientation=orientation,  # type: ignore[arg-type]
        shuffle=True,
    ).datasets
    volume = load_series(datasets)

    iop = np.array([float(v) for v in datasets[0].ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    assert np.allclose(volume.affine[:3, 0], normal * 4.0)
    assert np.allclose(volume.affine[:3, 1], iop[3:] * 5.0)
    assert np.allclose(volume.affine[:3, 2], iop[:3] * 5.0)
    depth = [
        float(np.dot([float(v) for v in ds.ImagePositionPatient], normal)) for ds in volume.datasets
    ]
    assert depth == sorted(depth)
    _assert_voxels_match_anatomy(volume)


def test_one_missing_slice_is_interpolated_and_mapped_back(phantom: CtPhantom) -> None:
    datasets = _copies(phantom.datasets)
    del datasets[10]
    volume = load_series(datasets)
    assert volume.resampled
    assert volume.voxels.shape == (48, 128, 128)
    assert "uneven slice gaps of 5.00 to 10.00 mm" in volume.note
    assert len(volume.planes) == 47
    rescaled = load_series(_copies(phantom.datasets)).voxels
    assert np.array_equal(volume.voxels[:10], rescaled[:10])
    assert np.array_equal(volume.voxels[11:], rescaled[11:])
    assert np.allclose(volume.voxels[10], (rescaled[9] + rescaled[11]) / 2)  # linear


def test_two_missing_slices_are_too_large_a_gap(phantom: CtPhantom) -> None:
    datasets = _copies(phantom.datasets)
    del datasets[10:12]
    with pytest.raises(VolumeError, match="slice spacing is not uniform") as info:
        load_series(datasets)
    message = str(info.value)
    assert datasets[0].SeriesInstanceUID in message
    assert "gap of 15.00 mm" in message and "too large to interpolate" in message
    assert datasets[9].SOPInstanceUID in message and datasets[10].SOPInstanceUID in message


def test_mixed_orientation_fails(phantom: CtPhantom) -> None:
    datasets = _copies(phantom.datasets)
    datasets[5].ImageOrientationPatient = [1, 0, 0, 0, 0.9, 0.43589]
    with pytest.raises(VolumeError, match="mixed ImageOrientationPatient"):
        load_series(datasets)


def test_mismatched_rows_fail(phantom: CtPhantom) -> None:
    datasets = _copies(phantom.datasets)
    half = datasets[3].pixel_array[:64]
    datasets[3].Rows = 64
    datasets[3].PixelData = half.tobytes()
    with pytest.raises(VolumeError, match="image size differs"):
        load_series(datasets)


def test_mismatched_pixel_spacing_fails(phantom: CtPhantom) -> None:
    datasets = _copies(phantom.datasets)
    datasets[3].PixelSpacing = [2.5, 2.5]
    with pytest.raises(VolumeError, match="PixelSpacing differs"):
        load_series(datasets)


def test_duplicate_position_fails(phantom: CtPhantom) -> None:
    datasets = _copies(phantom.datasets)
    duplicate = copy.deepcopy(datasets[4])
    duplicate.SOPInstanceUID = "2.25.1234"
    datasets.append(duplicate)
    with pytest.raises(VolumeError, match="duplicate slice position"):
        load_series(datasets)


def test_sheared_stack_is_resampled_where_the_slices_are(phantom: CtPhantom) -> None:
    datasets = _copies(phantom.datasets[:20])
    for k, ds in enumerate(datasets):  # gantry tilt: each slice shifted further in y
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + 0.8 * k, z]
    volume = load_series(datasets)
    assert volume.resampled and "sheared stack" in volume.note
    assert volume.voxels.shape[1] > 128  # the grid covers every shifted slice
    # A mask of the body on the grid comes back onto each source slice as that slice's body.
    back = volume.plane_masks(volume.voxels > -500)
    sources = np.stack([ds.pixel_array.astype(np.float32) - 1024 for ds in datasets]) > -500
    assert back.shape == sources.shape
    assert np.mean(back != sources) < 0.002  # only a few edge pixels of the interpolation


def test_other_series_instance_fails(phantom: CtPhantom) -> None:
    datasets = _copies(phantom.datasets)
    datasets[2].SeriesInstanceUID = "2.25.99"
    with pytest.raises(VolumeError, match="belongs to another series"):
        load_series(datasets)


def test_multi_frame_without_functional_groups_is_refused_clearly(phantom: CtPhantom) -> None:
    datasets = _copies(phantom.datasets[:1])
    datasets[0].NumberOfFrames = 2
    with pytest.raises(VolumeError, match="0 per-frame functional group item"):
        load_series(datasets)


def test_missing_pixel_data_fails(phantom: CtPhantom) -> None:
    datasets = _copies(phantom.datasets)
    del datasets[6].PixelData
    with pytest.raises(VolumeError, match="has no pixel data"):
        load_series(datasets)


def test_empty_series_fails() -> None:
    with pytest.raises(VolumeError, match="empty series"):
        load_series([])


def test_single_slice_uses_slice_thickness_then_1mm(phantom: CtPhantom) -> None:
    [ds] = _copies(phantom.datasets[:1])
    ds.SliceThickness = 2.5
    assert load_series([ds]).spacing[0] == pytest.approx(2.5)
    del ds.SliceThickness
    volume = load_series([ds])
    assert volume.spacing[0] == pytest.approx(1.0)
    assert volume.voxels.shape == (1, 128, 128)


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless])
def test_compressed_pixel_data_decodes(syntax: str) -> None:
    plain = make_ct_phantom(slices=6, size=64, pixel_spacing=5.5).datasets
    compressed = _copies(plain)
    for ds in compressed:
        ds.compress(syntax, generate_instance_uid=False)
    assert compressed[0].file_meta.TransferSyntaxUID == syntax
    assert np.array_equal(load_series(compressed).voxels, load_series(plain).voxels)


def test_scan_files_groups_by_series_and_reports_unreadable(tmp_path: Path) -> None:
    first = make_ct_phantom(slices=4, size=32, pixel_spacing=11.0, seed=1).datasets
    second = make_ct_phantom(slices=3, size=32, pixel_spacing=11.0, seed=2).datasets
    for n, ds in enumerate(first + second):
        ds.save_as(tmp_path / f"{n}.dcm", enforce_file_format=True)
    series = scan_files(sorted(tmp_path.glob("*.dcm"))).series
    assert sorted(len(v) for v in series.values()) == [3, 4]
    assert set(series) == {first[0].SeriesInstanceUID, second[0].SeriesInstanceUID}

    (tmp_path / "notes.txt").write_text("not DICOM")
    scan = scan_files(sorted(tmp_path.iterdir()))
    assert [bad.path.name for bad in scan.unreadable] == ["notes.txt"]
    assert sum(len(v) for v in scan.series.values()) == 7
