"""The Model Zoo lung nodule detector, as published, through the bundle pipeline.

The bundle (config, metadata and ``scripts/``) is copied unmodified; only weights are written:
the bundle's own ResNet-50 FPN RetinaNet with constructed weights whose output is known (a box
of the nodule's size centred on a blob, see tests/support/lung_nodule_bundle.py). The bundle's
``scripts.detection_inferer.RetinaNetInferer`` runs, then its post-processing
(ClipBoxToImaged, AffineBoxToWorldCoordinated, ConvertBoxModed to centre/size), and the boxes
become SR detections in patient coordinates. The phantom is a 120 mm chest cube at 3 mm in three
orientations; the nodule's centre is on the lattice of the detector's finest features (every
4th voxel in x and y, every 2nd in z of the RAS network input), so the exact answer is known:
the box is centred on the nodule and 10 mm wide, in every orientation.
"""

from __future__ import annotations

import filecmp
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from pipelines.bundle import BundlePipeline, BundleSpec
from pipelines.bundle_boxes import BoxFrame
from pipelines.routing import RoutingRule
from pipelines.runner import annotate_study
from pipelines.volume import load_series
from tests.conftest import shared_data_path
from tests.support.dicom_validate import dcmtk_sr, validation_report
from tests.support.lung_nodule_bundle import BUNDLE, copy_bundle, write_blob_weights
from tests.support.phantom import Nodule, image_point_mm, make_ct_phantom

SPACING = 3.0  # mm, isotropic: the network input has the same lattice in every orientation
SIZE = 40  # voxels a side: a 120 mm cube centred on the patient origin
# LPS mm of network-input voxel (32, 16, 26) of the RAS lattice, (i - 19.5) * 3 mm from the
# centre: x and y flip sign between RAS and LPS. In the right lung, 10 mm, dense.
NODULE = Nodule((-37.5, 10.5, 19.5), 10.0)
NODULE_HU = 300.0
#: Tolerance of "exactly": rounding in float32 network output, far below a voxel.
EXACT_MM = 0.05
ORIENTATIONS = {
    "axial": "axial",
    "axial, rows flipped (posterior up)": (1.0, 0.0, 0.0, 0.0, -1.0, 0.0),
    "sagittal": "sagittal",
}


@pytest.fixture(scope="module")
def lung_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    bundle = copy_bundle(tmp_path_factory.mktemp("zoo"))
    box = NODULE.diameter / SPACING
    write_blob_weights(bundle, (box, box, box))
    return bundle


@pytest.fixture(scope="module")
def pipeline(lung_bundle: Path) -> BundlePipeline:
    return BundlePipeline(
        BundleSpec(name="lung-nodules", path=lung_bundle, class_names=("nodule",))
    )


def chest(orientation: str | tuple[float, ...]) -> list[pydicom.Dataset]:
    phantom = make_ct_phantom(
        slices=SIZE,
        size=SIZE,
        pixel_spacing=SPACING,
        slice_spacing=SPACING,
        orientation=orientation,  # type: ignore[arg-type]
        shuffle=True,
        nodules=[NODULE],
        nodule_hu=NODULE_HU,
    )
    return phantom.datasets


def test_the_bundle_is_the_published_one(lung_bundle: Path) -> None:
    source = shared_data_path("monai-bundle-configs", BUNDLE)
    for folder in ("configs", "scripts"):
        files = sorted(p.name for p in (source / folder).iterdir() if p.is_file())
        assert sorted(p.name for p in (lung_bundle / folder).iterdir() if p.is_file()) == files
        _, mismatch, errors = filecmp.cmpfiles(
            source / folder, lung_bundle / folder, files, shallow=False
        )
        assert (mismatch, errors) == ([], []), folder


@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
def test_the_box_lands_on_the_nodule_in_any_orientation(
    pipeline: BundlePipeline, orientation: str
) -> None:
    datasets = chest(ORIENTATIONS[orientation])
    findings = pipeline.run(load_series(datasets))
    [found] = findings.detections
    assert found.label == "nodule 1"
    assert found.finding_type.value == "27925004"  # SCT Nodule, from class_names
    assert found.score > 0.9
    centre = np.array(NODULE.centre)
    radius = NODULE.diameter / 2.0
    np.testing.assert_allclose(found.centre_mm, centre, atol=EXACT_MM)
    np.testing.assert_allclose(found.bbox_min_mm, centre - radius, atol=EXACT_MM)
    np.testing.assert_allclose(found.bbox_max_mm, centre + radius, atol=EXACT_MM)
    assert found.longest_diameter_mm == pytest.approx(NODULE.diameter, abs=EXACT_MM)

    # The centre is a voxel centre of the source series, and that voxel is the nodule's.
    hits = []
    for ds in datasets:
        origin = np.array(ds.ImagePositionPatient, dtype=np.float64)
        iop = np.array(ds.ImageOrientationPatient, dtype=np.float64)
        offset = np.asarray(found.centre_mm) - origin
        if abs(offset @ np.cross(iop[:3], iop[3:])) < SPACING / 2:
            column = offset @ iop[:3] / float(ds.PixelSpacing[1])
            row = offset @ iop[3:] / float(ds.PixelSpacing[0])
            hits.append((ds, column, row))
    [(image, column, row)] = hits
    assert (column, row) == (
        pytest.approx(round(column), abs=0.02),
        pytest.approx(round(row), abs=0.02),
    )
    hu = image.pixel_array[round(row), round(column)] * float(image.RescaleSlope) + float(
        image.RescaleIntercept
    )
    assert hu > NODULE_HU - 60, f"voxel ({column:.1f}, {row:.1f}) of the key slice is {hu} HU"


def test_the_bundle_runs_its_own_scripts_and_box_transforms(pipeline: BundlePipeline) -> None:
    pipeline.load()
    loaded = pipeline._loaded
    assert loaded is not None
    inferer = type(loaded.inferer)
    assert inferer.__module__ == "scripts.detection_inferer"
    assert Path(inferer.__init__.__code__.co_filename).is_relative_to(pipeline.spec.path)
    names = [type(t).__name__ for t in loaded.postprocessing.transforms]
    assert names == [
        "ClipBoxToImaged",
        "AffineBoxToWorldCoordinated",
        "ConvertBoxModed",
        "DeleteItemsd",
    ]
    # affine_lps_to_ras=True: world boxes in LPS; then centre + size
    assert loaded.box_frame == BoxFrame("lps", "cccwhd")
    # Nothing of the bundle leaks into the process's import state.
    assert str(pipeline.spec.path) not in sys.path
    assert "scripts" not in sys.modules


def test_detections_reach_a_valid_sr_on_the_source_slice(
    pipeline: BundlePipeline, tmp_path: Path
) -> None:
    datasets = chest("sagittal")
    folder = tmp_path / "in"
    folder.mkdir()
    for i, ds in enumerate(datasets):
        ds.save_as(folder / f"{i}.dcm", enforce_file_format=True)
    result = annotate_study(
        sorted(folder.glob("*.dcm")),
        rules=(RoutingRule(pipelines=("lung-nodules",), modality="CT"),),
        pipelines={"lung-nodules": pipeline},
        software_version="9.9.9",
    )
    [outcome] = result.outcomes
    assert outcome.status == "done", outcome.reason
    assert result.report is not None
    path = tmp_path / "sr.dcm"
    result.report.save_as(path, enforce_file_format=True)
    errors = validation_report(path, tmp_path).errors  # dciodvfy, PixelMed, dcmqi
    assert errors == [], "\n".join(errors)
    # The box drawn on its key slice: that slice passes through the nodule's centre, and the
    # polyline's corners are the nodule's bounds in that plane.
    by_uid = {str(ds.SOPInstanceUID): ds for ds in datasets}
    groups = dcmtk_sr(path).groups  # one detection: its two planar groups, one tracking UID
    assert len({group.tracking_uid for group in groups}) == 1
    [box] = {loc for group in groups for loc in group.locations if loc.value_type == "SCOORD"}
    image = by_uid[box.reference]
    corners = np.array([image_point_mm(image, c, r) for c, r in box.points])
    iop = np.array(image.ImageOrientationPatient, dtype=np.float64)
    normal = np.cross(iop[:3], iop[3:])
    centre = np.array(NODULE.centre)
    assert abs((centre - corners[0]) @ normal) < EXACT_MM, "key slice through the centre"
    radius = NODULE.diameter / 2.0
    in_plane = np.abs(normal) < 0.5
    np.testing.assert_allclose(corners.min(axis=0)[in_plane], (centre - radius)[in_plane], atol=0.1)
    np.testing.assert_allclose(corners.max(axis=0)[in_plane], (centre + radius)[in_plane], atol=0.1)
