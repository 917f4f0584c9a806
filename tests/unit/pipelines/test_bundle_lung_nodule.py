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
import pytest

from pipelines.bundle import BundlePipeline, BundleSpec
from pipelines.bundle_boxes import BoxFrame
from pipelines.bundle_geometry import to_meta_tensor
from pipelines.volume import load_series
from tests.conftest import shared_data_path
from tests.support.dicom_validate import validation_report
from tests.support.lung_nodule_bundle import (
    BUNDLE,
    EXACT_MM,
    NODULE,
    NODULE_HU,
    SPACING,
    assert_sr_box_on_the_nodule,
    chest,
    copy_bundle,
    write_blob_weights,
)
from tests.support.phantom import make_ct_phantom
from worker.cli import main

ORIENTATIONS = {
    "axial": "axial",
    "axial, rows flipped (posterior up)": (1.0, 0.0, 0.0, 0.0, -1.0, 0.0),
    "sagittal": "sagittal",
}


@pytest.fixture(scope="module")
def lung_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    bundle = copy_bundle(tmp_path_factory.mktemp("zoo"))
    write_blob_weights(bundle)
    return bundle


@pytest.fixture(scope="module")
def pipeline(lung_bundle: Path) -> BundlePipeline:
    return BundlePipeline(
        BundleSpec(name="lung-nodules", path=lung_bundle, class_names=("nodule",))
    )


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


def test_cli_run_writes_a_valid_sr_with_the_box_on_the_source_slice(
    lung_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        f"data_dir: {tmp_path / 'data'}\npipelines:\n  lung-nodules:\n"
        f"    bundle: {lung_bundle}\n    class_names: [nodule]\n"
    )
    datasets = chest("sagittal")
    series = tmp_path / "series"
    series.mkdir()
    for i, ds in enumerate(datasets):
        ds.save_as(series / f"{i}.dcm", enforce_file_format=True)
    out = tmp_path / "out"
    argv = ["run", str(series), "--out", str(out), "--pipeline", "lung-nodules"]
    assert main([*argv, "--config", str(config)]) == 0
    assert "lung-nodules done" in capsys.readouterr().out
    [path] = out.glob("SR-*.dcm")
    errors = validation_report(path, tmp_path).errors  # dciodvfy, PixelMed, dcmqi
    assert errors == [], "\n".join(errors)
    assert_sr_box_on_the_nodule(path, datasets)


def test_overrides_set_config_values_without_editing_the_files(
    lung_bundle: Path, pipeline: BundlePipeline
) -> None:
    """``whether_raw_luna16: true`` enables the bundle's own Spacingd (0.703 x 0.703 x 1.25)."""
    before = (lung_bundle / "configs" / "inference.json").read_bytes()
    volume = load_series(make_ct_phantom(slices=6, size=16, pixel_spacing=6.0).datasets)
    raw = BundlePipeline(
        BundleSpec(name="raw", path=lung_bundle, overrides={"whether_raw_luna16": True})
    )
    spacings = []
    for each in (pipeline, raw):
        each.load()
        assert each._loaded is not None
        data = {"image": to_meta_tensor(volume, channel_first=False)}
        image = each._loaded.preprocessing(data)["image"]
        spacings.append(np.linalg.norm(np.asarray(image.affine)[:3, :3], axis=0))
    np.testing.assert_allclose(spacings[0], [6.0, 6.0, 5.0])  # as published: as it comes
    np.testing.assert_allclose(spacings[1], [0.703125, 0.703125, 1.25])
    assert (lung_bundle / "configs" / "inference.json").read_bytes() == before
