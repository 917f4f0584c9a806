"""DICOM SEG writing: validity (dciodvfy), references, geometry and pixel round trip."""

from __future__ import annotations

import copy
import inspect
import tracemalloc
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from pipelines import seg as seg_module
from pipelines.colors import ANATOMY_COLORS
from pipelines.findings import Algorithm, Findings, Segment
from pipelines.seg import EmptySegmentationError, build_seg
from pipelines.volume import Volume, load_series
from tests.conftest import shared_data_path
from tests.support.dicom_validate import dciodvfy_errors
from tests.support.phantom import CtPhantom

SERIES_UID, SOP_UID = "2.25.1001", "2.25.1002"


def _write(volume: Volume, findings: Findings, path: Path) -> Path:
    seg = build_seg(
        volume,
        findings,
        series_uid=SERIES_UID,
        sop_uid=SOP_UID,
        series_number=1003,
        software_version="9.9.9",
    )
    seg.save_as(path, enforce_file_format=True)
    return path


def _check_seg(path: Path, volume: Volume, findings: Findings) -> None:
    assert dciodvfy_errors(path) == []
    seg = hd.seg.segread(path)
    present = [s for s in findings.segments if s.mask.any()]

    assert seg.SeriesInstanceUID == SERIES_UID and seg.SOPInstanceUID == SOP_UID
    assert seg.StudyInstanceUID == volume.study_uid
    assert seg.SeriesInstanceUID != volume.series_uid
    assert seg.SeriesDescription == f"AI segmentation ({findings.algorithm.name})"
    assert seg.Manufacturer == findings.algorithm.manufacturer
    # The service's version once; the algorithm's version is in its equipment item.
    assert seg.SoftwareVersions == "9.9.9"
    assert str(seg.ContentCreatorName) == f"{findings.algorithm.name}^"
    assert seg.SegmentationType == "BINARY"
    colors = [tuple(item.RecommendedDisplayCIELabValue) for item in seg.SegmentSequence]
    assert len(set(colors)) == len(colors), "segments of one SEG share a display colour"

    for number, (item, segment) in enumerate(zip(seg.SegmentSequence, present, strict=True), 1):
        assert item.SegmentNumber == number
        assert item.SegmentLabel == segment.label
        assert item.TrackingID == segment.label
        assert item.SegmentAlgorithmType == "AUTOMATIC"
        assert item.SegmentedPropertyTypeCodeSequence[0].CodeValue == segment.property_type.value
        category = item.SegmentedPropertyCategoryCodeSequence[0]
        assert category.CodeValue == segment.category.value
        algorithm = item.SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmName == findings.algorithm.name
        assert algorithm.AlgorithmVersion == findings.algorithm.version
        assert algorithm.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"

    equipment = [
        e
        for e in seg.ContributingEquipmentSequence
        if e.get("ManufacturerModelName") == findings.algorithm.name
    ]
    assert len(equipment) == 1
    assert equipment[0].Manufacturer == findings.algorithm.manufacturer
    assert equipment[0].SoftwareVersions == findings.algorithm.version
    purpose = equipment[0].PurposeOfReferenceCodeSequence[0]
    assert (purpose.CodeValue, purpose.CodingSchemeDesignator) == ("109102", "DCM")

    source_uids = [str(ds.SOPInstanceUID) for ds in volume.datasets]
    referenced = [
        str(item.ReferencedSOPInstanceUID)
        for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    ]
    assert sorted(referenced) == sorted(source_uids)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == volume.series_uid

    source_positions = {
        tuple(round(float(v), 3) for v in ds.ImagePositionPatient) for ds in volume.datasets
    }
    for frame in seg.PerFrameFunctionalGroupsSequence:
        position = frame.PlanePositionSequence[0].ImagePositionPatient
        assert tuple(round(float(v), 3) for v in position) in source_positions

    pixels = seg.get_pixels_by_source_instance(
        source_uids, assert_missing_frames_are_empty=True
    ).astype(bool)
    expected = np.stack([s.mask for s in present], axis=-1)
    assert pixels.shape == expected.shape
    assert np.array_equal(pixels, expected)


def test_phantom_seg_is_valid_and_round_trips(
    tmp_path: Path, phantom_volume: Volume, phantom_findings: Findings
) -> None:
    path = _write(phantom_volume, phantom_findings, tmp_path / "seg.dcm")
    _check_seg(path, phantom_volume, phantom_findings)


# The real CT's PatientName is a single-component ID: highdicom warns, the source is as is.
@pytest.mark.filterwarnings("ignore:The string .* person name:UserWarning")
def test_real_ct_seg_is_valid_and_round_trips(
    tmp_path: Path, real_volume: Volume, real_findings: Findings
) -> None:
    path = _write(real_volume, real_findings, tmp_path / "seg.dcm")
    _check_seg(path, real_volume, real_findings)


def test_structure_matches_highdicom_reference(
    tmp_path: Path, phantom_volume: Volume, phantom_findings: Findings
) -> None:
    reference = pydicom.dcmread(
        shared_data_path("reference-seg-sr", "highdicom", "seg_image_ct_binary.dcm")
    )
    ours = pydicom.dcmread(_write(phantom_volume, phantom_findings, tmp_path / "seg.dcm"))

    def keywords(ds: Dataset) -> set[str]:
        return {element.keyword for element in ds if element.keyword}

    for key in (
        "SegmentSequence",
        "ReferencedSeriesSequence",
        "DimensionIndexSequence",
        "DimensionOrganizationSequence",
        "SharedFunctionalGroupsSequence",
        "PerFrameFunctionalGroupsSequence",
        "SourceImageSequence",
        "SegmentsOverlap",
        "FrameOfReferenceUID",
        "ContentLabel",
    ):
        assert key in reference and key in ours, key
    assert keywords(reference.SegmentSequence[0]) <= keywords(ours.SegmentSequence[0])
    assert keywords(reference.ReferencedSeriesSequence[0]) == keywords(
        ours.ReferencedSeriesSequence[0]
    )
    assert [
        (i.DimensionIndexPointer, i.FunctionalGroupPointer)
        for i in reference.DimensionIndexSequence
    ] == [(i.DimensionIndexPointer, i.FunctionalGroupPointer) for i in ours.DimensionIndexSequence]
    assert keywords(reference.PerFrameFunctionalGroupsSequence[0]) <= keywords(
        ours.PerFrameFunctionalGroupsSequence[0]
    )


def _findings(*masks: tuple[str, np.ndarray]) -> Findings:
    return Findings(
        Algorithm("test-algo", "1.2"),
        tuple(
            Segment(label, mask, codes.SCT.AnatomicalStructure, codes.SCT.Lung)
            for label, mask in masks
        ),
    )


def test_empty_segments_are_left_out(tmp_path: Path, phantom_volume: Volume) -> None:
    shape = phantom_volume.voxels.shape
    some = np.zeros(shape, dtype=bool)
    some[10, 40:60, 40:60] = True
    findings = _findings(("Empty", np.zeros(shape, dtype=bool)), ("Some", some))
    path = _write(phantom_volume, findings, tmp_path / "seg.dcm")
    _check_seg(path, phantom_volume, findings)
    seg = pydicom.dcmread(path)
    assert [item.SegmentLabel for item in seg.SegmentSequence] == ["Some"]
    assert int(seg.NumberOfFrames) == 1  # empty frames omitted


def test_all_empty_raises(phantom_volume: Volume) -> None:
    findings = _findings(("Empty", np.zeros(phantom_volume.voxels.shape, dtype=bool)))
    with pytest.raises(EmptySegmentationError, match="are empty"):
        build_seg(
            phantom_volume,
            findings,
            series_uid=SERIES_UID,
            sop_uid=SOP_UID,
            series_number=1,
            software_version="1",
        )


def test_mask_of_wrong_shape_raises(phantom_volume: Volume) -> None:
    findings = _findings(("Small", np.ones((2, 2, 2), dtype=bool)))
    with pytest.raises(ValueError, match="does not match the volume"):
        build_seg(
            phantom_volume,
            findings,
            series_uid=SERIES_UID,
            sop_uid=SOP_UID,
            series_number=1,
            software_version="1",
        )


def test_deidentified_source_without_method_adds_no_error(
    tmp_path: Path, phantom: CtPhantom
) -> None:
    datasets = [copy.deepcopy(ds) for ds in phantom.datasets]
    for ds in datasets:
        ds.PatientIdentityRemoved = "YES"  # the source itself lacks DeidentificationMethod
    volume = load_series(datasets)
    mask = np.zeros(volume.voxels.shape, dtype=bool)
    mask[5, 10:20, 10:20] = True
    path = _write(volume, _findings(("Box", mask)), tmp_path / "seg.dcm")
    assert dciodvfy_errors(path) == []
    assert pydicom.dcmread(path).PatientIdentityRemoved == "YES"


def test_segments_get_anatomical_distinct_or_given_colours(
    tmp_path: Path, phantom_volume: Volume, phantom_findings: Findings
) -> None:
    """ct-basic's structures in their anatomical colours; two lungs told apart; given kept."""
    seg = hd.seg.segread(_write(phantom_volume, phantom_findings, tmp_path / "basic.dcm"))
    shown = {
        str(item.SegmentLabel): hd.color.CIELabColor.from_dicom_value(
            item.RecommendedDisplayCIELabValue
        ).to_rgb()
        for item in seg.SegmentSequence
    }
    assert shown == {
        "Body": ANATOMY_COLORS[codes.SCT.EntireBody.value],
        "Lungs": ANATOMY_COLORS[codes.SCT.Lung.value],
        "Bone": ANATOMY_COLORS[codes.SCT.Bone.value],
    }

    half = np.zeros(phantom_volume.voxels.shape, dtype=bool)
    half[:, :10, :10] = True
    given = Segment("Mine", half.copy(), codes.SCT.Tissue, codes.SCT.Tissue, color=(1, 2, 250))
    findings = _findings(("Right", half.copy()), ("Left", half.copy()))
    findings = Findings(findings.algorithm, (*findings.segments, given))
    seg = hd.seg.segread(_write(phantom_volume, findings, tmp_path / "two.dcm"))
    right, left, mine = (
        hd.color.CIELabColor.from_dicom_value(item.RecommendedDisplayCIELabValue).to_rgb()
        for item in seg.SegmentSequence
    )
    assert right == ANATOMY_COLORS[codes.SCT.Lung.value]
    assert left != right
    assert mine == (1, 2, 250)


def _highdicom_reference(volume: Volume, findings: Findings, seg: Dataset) -> Dataset:
    """The SEG highdicom itself writes from the whole (slice, row, col, segment) stack."""
    kept = [s for s in findings.segments if s.mask.any()]
    return hd.seg.Segmentation(
        source_images=list(volume.datasets),
        pixel_array=np.stack([s.mask for s in kept], axis=-1),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[
            hd.seg.SegmentDescription.from_dataset(item) for item in seg.SegmentSequence
        ],
        series_instance_uid=SERIES_UID,
        series_number=1003,
        sop_instance_uid=SOP_UID,
        instance_number=1,
        manufacturer=findings.algorithm.manufacturer,
        manufacturer_model_name=findings.algorithm.name,
        software_versions="9.9.9",
        device_serial_number="0",
        omit_empty_frames=True,
    )


@pytest.mark.parametrize("overlap", [True, False], ids=["overlapping", "disjoint"])
@pytest.mark.parametrize("empty_slices", [True, False], ids=["empty-slices", "every-slice"])
def test_fast_path_writes_the_frames_highdicom_writes(
    phantom_volume: Volume, overlap: bool, empty_slices: bool
) -> None:
    """The segment-contiguous stack and the quick overlap check change nothing in the SEG."""
    shape = phantom_volume.voxels.shape
    first, second = np.zeros(shape, dtype=bool), np.zeros(shape, dtype=bool)
    slices = slice(5, shape[0] - 7) if empty_slices else slice(None)
    first[slices, 10:60, 10:60] = True
    # Columns 40-59 of rows 40-59 are in both segments, or in the first only.
    second[slices, 40:90, 40 if overlap else 60 : 100] = True
    if not empty_slices:
        second[:, 100, 100] = True  # a voxel on every slice: none is empty
    anatomy = codes.SCT.AnatomicalStructure
    findings = Findings(
        Algorithm("fast-path", "1"),
        segments=(
            Segment("Liver", first, anatomy, codes.SCT.Liver),
            Segment("Spleen", second, anatomy, codes.SCT.Spleen),
        ),
    )
    ours = build_seg(
        phantom_volume,
        findings,
        series_uid=SERIES_UID,
        sop_uid=SOP_UID,
        series_number=1003,
        software_version="9.9.9",
    )
    theirs = _highdicom_reference(phantom_volume, findings, ours)

    assert ours.SegmentsOverlap == theirs.SegmentsOverlap == ("YES" if overlap else "NO")
    assert ours.NumberOfFrames == theirs.NumberOfFrames
    assert ours.PixelData == theirs.PixelData
    assert ours.PerFrameFunctionalGroupsSequence == theirs.PerFrameFunctionalGroupsSequence
    assert ours.SharedFunctionalGroupsSequence == theirs.SharedFunctionalGroupsSequence
    assert ours.ReferencedSeriesSequence == theirs.ReferencedSeriesSequence


def test_highdicom_still_checks_pixels_in_the_method_we_override() -> None:
    """pipelines.seg._Segmentation overrides a private highdicom method (pinned <0.29)."""
    method = hd.seg.Segmentation.__dict__["_check_and_cast_pixel_array"]
    assert isinstance(method, classmethod)
    params = list(inspect.signature(method.__func__).parameters)
    assert params == ["cls", "pixel_array", "segment_numbers", "segmentation_type", "dtype"]
    assert "_check_and_cast_pixel_array(" in inspect.getsource(hd.seg.Segmentation.__init__)


def _stack_of(*masks: np.ndarray) -> np.ndarray:
    """The (slice, row, col, segment) view build_seg hands highdicom."""
    return np.moveaxis(np.stack(masks), 0, -1)


@pytest.mark.parametrize("where", [0, 61, 127], ids=["first-slice", "chunk-edge", "last-slice"])
def test_overlap_is_found_on_any_slice(where: int) -> None:
    shape = (128, 256, 256)  # 16 slices per chunk: the overlap is in a chunk of its own
    first, second, third = (np.zeros(shape, dtype=bool) for _ in range(3))
    first[:, :10, :10] = True
    second[:, 20:30, :10] = True
    third[:, 40:50, :10] = True
    assert seg_module._segments_overlap(_stack_of(first, second, third)).value == "NO"
    third[where, 5, 5] = True  # one voxel of the third segment, inside the first
    assert seg_module._segments_overlap(_stack_of(first, second, third)).value == "YES"


def test_overlap_check_allocates_no_volume_sized_array() -> None:
    """Fresh volume-sized temporaries cost page faults (0.2-0.4 s at 300x512x512)."""
    shape = (128, 256, 256)  # 8 MiB per mask
    masks = [np.zeros(shape, dtype=bool) for _ in range(3)]
    for n, mask in enumerate(masks):
        mask[:, 20 * n : 20 * n + 10, :] = True
    stack = _stack_of(*masks)
    tracemalloc.start()
    try:
        assert seg_module._segments_overlap(stack).value == "NO"
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < masks[0].nbytes // 2


def test_a_laterality_modifier_qualifies_the_segmented_property(
    phantom_volume: Volume, tmp_path: Path
) -> None:
    mask = np.zeros(phantom_volume.voxels.shape, dtype=bool)
    mask[4:8, 20:30, 10:20] = True
    left = codes.SCT.Left
    findings = Findings(
        algorithm=Algorithm(name="kidneys", version="1"),
        segments=(
            Segment(
                "kidney_left",
                mask,
                codes.SCT.AnatomicalStructure,
                codes.SCT.Kidney,
                property_modifier=left,
            ),
        ),
    )
    path = _write(phantom_volume, findings, tmp_path / "seg.dcm")
    assert dciodvfy_errors(path) == []
    [item] = pydicom.dcmread(path).SegmentSequence
    [modifier] = item.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence
    assert (modifier.CodeValue, modifier.CodingSchemeDesignator) == ("7771000", "SCT")
