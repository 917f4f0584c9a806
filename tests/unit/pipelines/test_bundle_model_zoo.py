"""The MONAI Model Zoo spleen bundle config runs unmodified on the real CT.

The bundle's weights are not redistributed in ../shared/data, so the test writes weights
of the right shape (the bundle's own network_def, seeded) into a copy's models/model.pt.
The point is the plumbing with a real-world config: LoadImaged replaced, RAS orientation,
1.5x1.5x2 mm resampling, the bundle's 96^3 sliding window with overlap 0.5, Invertd back
to the 512x512 slices, and a SEG whose segment is named from the metadata.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import highdicom as hd
import pytest
import torch

from pipelines.bundle import BundlePipeline, BundleSpec
from pipelines.routing import RoutingRule
from pipelines.runner import annotate_study
from tests.conftest import shared_data_path
from tests.support.dicom_validate import dciodvfy_errors


@pytest.fixture(scope="module")
def spleen_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = shared_data_path("monai-bundle-configs", "spleen_ct_segmentation")
    root = tmp_path_factory.mktemp("zoo") / "spleen_ct_segmentation"
    shutil.copytree(source, root)
    (root / "models").mkdir()
    from monai.bundle.config_parser import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def")
    state = network.state_dict()
    # Random weights rarely pick "spleen" anywhere; favour channel 1 a little at the last
    # layer so the SEG is not empty (the geometry is proven elsewhere with real predictions).
    last_bias = [
        key for key, value in state.items() if key.endswith("bias") and value.shape == (2,)
    ]
    state[last_bias[-1]] = torch.tensor([0.0, 0.5])
    torch.save(state, root / "models" / "model.pt")
    return root


def test_spleen_bundle_runs_unmodified_on_the_real_ct(
    spleen_bundle: Path, ct_series_dir: Path, tmp_path: Path
) -> None:
    assert (spleen_bundle / "configs" / "inference.json").read_bytes() == (
        shared_data_path("monai-bundle-configs", "spleen_ct_segmentation", "configs")
        / "inference.json"
    ).read_bytes()
    pipeline = BundlePipeline(BundleSpec(name="spleen", path=spleen_bundle))
    start = time.perf_counter()
    result = annotate_study(
        sorted(ct_series_dir.glob("*.dcm")),
        rules=(RoutingRule(pipelines=("spleen",), modality="CT"),),
        pipelines={"spleen": pipeline},
        software_version="9.9.9",
    )
    elapsed = time.perf_counter() - start
    print(f"spleen bundle on the real CT: {elapsed:.1f} s; stages {pipeline.timings}")
    assert not result.failures, result.failures
    [seg] = [ds for ds in result.outputs if ds.Modality == "SEG"]
    path = tmp_path / "seg.dcm"
    seg.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []
    read = hd.seg.segread(path)
    assert [str(item.SegmentLabel) for item in read.SegmentSequence] == ["spleen"]
    item = read.SegmentSequence[0]
    assert item.SegmentedPropertyTypeCodeSequence[0].CodeValue == "78961009"  # SCT Spleen
    # The bundle's version, from its metadata: the algorithm's, beside the service's own.
    algorithm = item.SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmVersion == "0.5.9"
    [equipment] = [
        e
        for e in read.ContributingEquipmentSequence
        if e.get("ManufacturerModelName") == algorithm.AlgorithmName
    ]
    assert equipment.SoftwareVersions == "0.5.9"
    # The spleen in its anatomical colour (3D Slicer's palette).
    colour = hd.color.CIELabColor.from_dicom_value(item.RecommendedDisplayCIELabValue)
    assert colour.to_rgb() == (157, 108, 162)
    assert int(read.NumberOfFrames) <= 41 and read.Rows == 512
