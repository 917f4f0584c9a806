"""Every stack a scanner sends: tilted, uneven, gapped, enhanced multi-frame, mixed series.

Each case goes through the runner (series -> volumes -> pipeline -> SEG + SR), and the SEG
is judged on the source images: the sphere's volume and centre as the SEG frames on the
source slices give them, every frame on a source slice, every SR outline on the sphere.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import pytest
from highdicom.legacy import LegacyConvertedEnhancedCTImage, LegacyConvertedEnhancedMRImage
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.tag import Tag

from pipelines.findings import Algorithm, Findings, Segment
from pipelines.registry import builtin_pipelines
from pipelines.routing import RoutingRule
from pipelines.runner import StudyResult, annotate_study
from pipelines.volume import Volume, load_series, load_volumes, scan_files
from tests.conftest import shared_data_path
from tests.support.dicom_validate import dciodvfy_errors, pixelmed_messages, validation_errors
from tests.support.phantom import image_point_mm
from tests.support.tilted import HEAD_HU, SPHERE_HU, SphereStack, make_sphere_stack, seg_sphere

TILTS = (0.0, 15.0, 30.0)
#: Table positions (mm) of 40 slices 2.5 mm apart; "gap" drops two single slices,
#: "uneven" goes 2.5 mm, then 5 mm, then 2.5 mm (as head protocols change spacing).
REGULAR = [-48.75 + 2.5 * k for k in range(40)]
LAYOUTS = {
    "regular": REGULAR,
    "gap": [z for k, z in enumerate(REGULAR) if k not in (14, 22)],
    "uneven": [float(v) for v in np.cumsum([2.5] * 14 + [5.0] * 8 + [2.5] * 10) - 52.5],
}


@dataclass
class _Threshold:
    """A pipeline that segments what is denser than halfway between head and sphere."""

    name: str = "sphere"
    algorithm: Algorithm = field(default_factory=lambda: Algorithm("sphere", "1"))
    modalities: frozenset[str] = frozenset({"CT", "MR"})
    threshold: float = (SPHERE_HU + HEAD_HU) / 2

    def run(self, volume: Volume) -> Findings:
        mask = volume.voxels >= self.threshold
        return Findings(
            self.algorithm, (Segment("Sphere", mask, codes.SCT.Tissue, codes.SCT.Bone),)
        )


def _annotate(datasets: list[Dataset], folder: Path, **options: object) -> StudyResult:
    folder.mkdir(parents=True)
    for n, ds in enumerate(datasets):
        ds.save_as(folder / f"{n:04}.dcm", enforce_file_format=True)
    settings: dict[str, object] = {
        "rules": (RoutingRule(pipelines=("sphere",), modality="CT"),),
        "pipelines": {"sphere": _Threshold()},
        "software_version": "0.0.1",
    }
    settings.update(options)
    return annotate_study(sorted(folder.iterdir()), **settings)  # type: ignore[arg-type]


def _save(result: StudyResult, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in result.outputs:
        path = folder / f"{ds.Modality}-{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


@dataclass(frozen=True)
class _Case:
    stack: SphereStack
    result: StudyResult
    paths: list[Path]


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[float, str], _Case]:
    """Every tilt and layout, run once through the runner (about 0.3 s each)."""
    found = {}
    for tilt in TILTS:
        for layout, positions in LAYOUTS.items():
            stack = make_sphere_stack(tilt_degrees=tilt, table_positions=positions)
            folder = tmp_path_factory.mktemp(f"tilt{tilt:g}-{layout}")
            result = _annotate(stack.datasets, folder / "in")
            found[tilt, layout] = _Case(stack, result, _save(result, folder / "out"))
    return found


def _seg(result: StudyResult) -> Dataset:
    [seg] = [ds for ds in result.outputs if ds.Modality == "SEG"]
    return seg


def _scoords(item: Dataset) -> Iterator[Dataset]:
    for child in item.get("ContentSequence", []):
        if child.ValueType == "SCOORD":
            yield child
        yield from _scoords(child)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("tilt", TILTS)
def test_the_sphere_comes_back_on_the_source_slices(
    cases: dict[tuple[float, str], _Case], tilt: float, layout: str
) -> None:
    case = cases[tilt, layout]
    [outcome] = case.result.outcomes
    assert outcome.status == "done", outcome.reason
    if tilt:
        assert f"gantry tilt {tilt:.1f} degrees" in (outcome.reason or "")
    if layout != "regular":
        assert "uneven slice gaps" in (outcome.reason or "")
    seg = _seg(case.result)
    measured = seg_sphere(seg, 1, case.stack.datasets)
    assert measured.volume_mm3 == pytest.approx(case.stack.sphere_volume_mm3, rel=0.03)
    assert np.linalg.norm(measured.centre - case.stack.centre) < 1.0

    # Every frame lies on a source slice and references that slice.
    sources = {
        tuple(np.round(np.array(ds.ImagePositionPatient, dtype=float), 3)): ds
        for ds in case.stack.datasets
    }
    iop = [float(v) for v in case.stack.datasets[0].ImageOrientationPatient]
    shared = seg.SharedFunctionalGroupsSequence[0]
    assert np.allclose(shared.PlaneOrientationSequence[0].ImageOrientationPatient, iop)
    assert (seg.Rows, seg.Columns) == (64, 64)
    for item in seg.PerFrameFunctionalGroupsSequence:
        position = tuple(
            np.round(np.array(item.PlanePositionSequence[0].ImagePositionPatient, dtype=float), 3)
        )
        assert position in sources, f"SEG frame at {position} is on no source slice"
        referenced = item.DerivationImageSequence[0].SourceImageSequence[0]
        assert referenced.ReferencedSOPInstanceUID == sources[position].SOPInstanceUID

    # The SR draws the sphere on a source image: its outline maps onto the sphere's surface.
    report = case.result.report
    assert report is not None
    outlines = list(_scoords(report))
    assert outlines
    by_uid = {ds.SOPInstanceUID: ds for ds in case.stack.datasets}
    for scoord in outlines:
        image = by_uid[scoord.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID]
        points = np.array(scoord.GraphicData, dtype=float).reshape(-1, 2)
        distances = [
            np.linalg.norm(image_point_mm(image, column, row) - case.stack.centre)
            for column, row in points
        ]
        # On the sphere's surface, within 1.5 pixels (the outline follows pixel edges).
        assert np.abs(np.array(distances) - case.stack.radius).max() < 3.0


def test_every_seg_and_sr_from_tilted_and_uneven_stacks_is_valid(
    cases: dict[tuple[float, str], _Case], tmp_path: Path
) -> None:
    """dciodvfy and PixelMed on the SEG and SR of every layout at the steepest tilt.

    The other tilts write the same structure (only positions differ); validating all 18
    objects took two minutes on a loaded CI machine, so the most sheared ones stand for them.
    """
    paths = [path for (tilt, _), case in cases.items() if tilt == max(TILTS) for path in case.paths]
    assert len(paths) == 2 * len(LAYOUTS)
    segs = [path for path in paths if path.name.startswith("SEG")]
    srs = [path for path in paths if path.name.startswith("SR")]
    errors = [f"{path.name}: {error}" for path in paths for error in dciodvfy_errors(path)]
    checked = {**pixelmed_messages(segs, "instance"), **pixelmed_messages(srs, "sr")}
    for path, messages in checked.items():
        errors.extend(f"{path.name}: PixelMed: {error}" for error in messages.errors)
    assert errors == []


def test_a_gap_too_large_to_interpolate_fails_the_series_with_the_reason(tmp_path: Path) -> None:
    positions = [z for k, z in enumerate(REGULAR) if k not in (20, 21)]  # 7.5 mm: 3 gaps
    stack = make_sphere_stack(tilt_degrees=15.0, table_positions=positions)
    result = _annotate(stack.datasets, tmp_path / "in")
    [outcome] = result.outcomes
    assert outcome.status == "failed"
    assert "too large to interpolate" in (outcome.reason or "")
    assert "7.24 mm" in (outcome.reason or "")  # 7.5 mm along the table, cos 15 along the normal
    assert stack.datasets[19].SOPInstanceUID in (outcome.reason or "")
    assert result.outputs == ()


def test_the_resampled_grid_shows_the_object_where_it_is() -> None:
    """The pipelines see the sphere at its true place: a voxel's value is the phantom's."""
    stack = make_sphere_stack(tilt_degrees=30.0, table_positions=LAYOUTS["uneven"])
    volume = load_series(stack.datasets)
    assert volume.resampled
    index = np.argwhere(volume.voxels >= (SPHERE_HU + HEAD_HU) / 2)
    points = (volume.affine @ np.column_stack([index, np.ones(len(index))]).T)[:3].T
    assert np.linalg.norm(points.mean(axis=0) - stack.centre) < 1.0
    spacing = volume.spacing
    assert spacing[0] == pytest.approx(2.5 * np.cos(np.radians(30.0)), rel=0.01)
    assert spacing[1:] == (2.0, 2.0)


# --- Enhanced and legacy-converted multi-frame --------------------------------------------


@pytest.fixture(scope="module")
def enhanced_ct(real_ct_datasets: list[Dataset]) -> Dataset:
    """The real CT as one Legacy Converted Enhanced CT instance, built by highdicom."""
    return LegacyConvertedEnhancedCTImage(
        real_ct_datasets,
        series_instance_uid="2.25.415001",
        series_number=77,
        sop_instance_uid="2.25.415002",
        instance_number=1,
    )


def test_enhanced_ct_reads_as_the_single_frame_series(
    enhanced_ct: Dataset, real_volume: Volume
) -> None:
    volume = load_series([enhanced_ct])
    assert volume.voxels.shape == real_volume.voxels.shape
    assert np.array_equal(volume.voxels, real_volume.voxels)
    assert np.allclose(volume.affine, real_volume.affine, atol=1e-4)
    assert volume.multiframe_source is enhanced_ct
    positions = {
        tuple(np.round(np.array(ds.ImagePositionPatient, dtype=float), 3))
        for ds in real_volume.datasets
    }
    assert {tuple(np.round(plane.position, 3)) for plane in volume.planes} == positions


def test_enhanced_ct_gives_the_same_segments_referenced_frame_by_frame(
    enhanced_ct: Dataset, real_findings: Findings, tmp_path: Path
) -> None:
    """The single-frame series' segments (ct-basic, shared fixture) against the enhanced CT's."""
    options = {"rules": (), "pipelines": builtin_pipelines(), "only": "ct-basic"}
    multi = _annotate([enhanced_ct], tmp_path / "multi", **options)
    assert [o.status for o in multi.outcomes] == ["done"]
    multi_seg = _seg(multi)
    present = [segment for segment in real_findings.segments if segment.mask.any()]
    assert [item.SegmentLabel for item in multi_seg.SegmentSequence] == [
        segment.label for segment in present
    ]
    for number, segment in enumerate(present, start=1):
        expected = int(np.count_nonzero(segment.mask))
        assert _segment_pixels(multi_seg, number) == pytest.approx(expected, rel=0.01)

    source_positions = [
        np.array(item.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
        for item in enhanced_ct.PerFrameFunctionalGroupsSequence
    ]
    for item in multi_seg.PerFrameFunctionalGroupsSequence:
        [source] = item.DerivationImageSequence[0].SourceImageSequence
        assert source.ReferencedSOPInstanceUID == enhanced_ct.SOPInstanceUID
        frame = int(source.ReferencedFrameNumber)
        position = np.array(item.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
        assert np.allclose(position, source_positions[frame - 1], atol=1e-3)
    referenced = multi_seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    assert [item.ReferencedSOPInstanceUID for item in referenced] == [enhanced_ct.SOPInstanceUID]

    paths = _save(multi, tmp_path / "out")
    assert validation_errors(paths, tmp_path / "validate") == []


def _segment_pixels(seg: Dataset, number: int) -> int:
    pixels = seg.pixel_array.reshape(int(seg.NumberOfFrames), -1)
    shared = seg.SharedFunctionalGroupsSequence[0].get("SegmentIdentificationSequence")
    total = 0
    for index, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        identification = item.get("SegmentIdentificationSequence") or shared
        if int(identification[0].ReferencedSegmentNumber) == number:
            total += int(np.count_nonzero(pixels[index]))
    return total


def _two_stack_mr(datasets: list[Dataset]) -> Dataset:
    """An enhanced MR of two interleaved stacks (the second half a slice further on).

    Without its dimension index the 2 x 35 frames would pass for one stack of 70 at half
    the spacing; the second stack's values are halved so each volume can be told apart.
    """
    first = sorted(datasets, key=lambda ds: float(ds.ImagePositionPatient[0]))
    iop = np.array(first[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    spacing = float(
        np.dot(
            np.array(first[1].ImagePositionPatient, dtype=float)
            - np.array(first[0].ImagePositionPatient, dtype=float),
            normal,
        )
    )
    second = []
    for n, ds in enumerate(first):
        other = copy.deepcopy(ds)
        other.SOPInstanceUID = f"2.25.416{n:03}"
        shifted = np.array(ds.ImagePositionPatient, dtype=float) + normal * spacing / 2
        other.ImagePositionPatient = [round(float(v), 4) for v in shifted]
        other.PixelData = (ds.pixel_array // 2).astype(ds.pixel_array.dtype).tobytes()
        other.InstanceNumber = 100 + n
        second.append(other)
    mr = LegacyConvertedEnhancedMRImage(
        first + second,
        series_instance_uid="2.25.416900",
        series_number=78,
        sop_instance_uid="2.25.416901",
        instance_number=1,
    )
    stack_dimension = Dataset()
    stack_dimension.DimensionIndexPointer = Tag("StackID")
    stack_dimension.FunctionalGroupPointer = Tag("FrameContentSequence")
    stack_dimension.DimensionOrganizationUID = "2.25.416902"
    position_dimension = Dataset()
    position_dimension.DimensionIndexPointer = Tag("InStackPositionNumber")
    position_dimension.FunctionalGroupPointer = Tag("FrameContentSequence")
    position_dimension.DimensionOrganizationUID = "2.25.416902"
    mr.DimensionIndexSequence = DicomSequence([stack_dimension, position_dimension])  # type: ignore[assignment]
    for index, item in enumerate(mr.PerFrameFunctionalGroupsSequence):
        source = item.ConversionSourceAttributesSequence[0].ReferencedSOPInstanceUID
        stack = 2 if source.startswith("2.25.416") else 1
        in_stack = second if stack == 2 else first
        number = [ds.SOPInstanceUID for ds in in_stack].index(source) + 1
        content = item.FrameContentSequence[0]
        content.StackID = str(stack)
        content.InStackPositionNumber = number
        content.DimensionIndexValues = [stack, number]
        del index
    return mr


@pytest.fixture(scope="module")
def two_stack_mr() -> Dataset:
    folder = shared_data_path("mr-brain-t1-sag")
    [datasets] = scan_files(sorted(folder.glob("*.dcm"))).series.values()
    return _two_stack_mr(datasets)


def test_an_enhanced_mr_with_two_stacks_is_two_volumes(two_stack_mr: Dataset) -> None:
    found = load_volumes([two_stack_mr])
    assert [volume.label for volume in found.volumes] == ["stack 1", "stack 2"]
    first, second = found.volumes
    assert first.voxels.shape == second.voxels.shape == (35, 256, 256)
    assert not first.resampled and not second.resampled
    assert np.array_equal(second.voxels, np.floor(first.voxels / 2))
    assert {plane.frame for plane in first.planes}.isdisjoint(
        plane.frame for plane in second.planes
    )
    offset = second.affine[:3, 3] - first.affine[:3, 3]
    assert np.linalg.norm(offset) == pytest.approx(first.spacing[0] / 2, rel=1e-3)
    with pytest.raises(ValueError, match="holds 2 volumes"):
        load_series([two_stack_mr])


def test_each_stack_gets_its_own_seg_on_its_own_frames(
    two_stack_mr: Dataset, tmp_path: Path
) -> None:
    rules = (RoutingRule(pipelines=("sphere",), modality="MR"),)
    brightest = float(np.percentile(load_volumes([two_stack_mr]).volumes[0].voxels, 99.5))
    pipeline = _Threshold(threshold=brightest / 2)
    result = _annotate([two_stack_mr], tmp_path / "in", rules=rules, pipelines={"sphere": pipeline})
    assert [(o.status, (o.reason or "").split(";")[0]) for o in result.outcomes] == [
        ("done", "stack 1"),
        ("done", "stack 2"),
    ]
    segs = [ds for ds in result.outputs if ds.Modality == "SEG"]
    assert len({seg.SOPInstanceUID for seg in segs}) == 2
    stacks = {
        index: item.FrameContentSequence[0].StackID
        for index, item in enumerate(two_stack_mr.PerFrameFunctionalGroupsSequence, start=1)
    }
    for seg, stack in zip(segs, ("1", "2"), strict=True):
        frames = {
            int(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber)
            for item in seg.PerFrameFunctionalGroupsSequence
        }
        assert frames and {stacks[frame] for frame in frames} == {stack}
    paths = _save(result, tmp_path / "out")
    errors = [f"{path.name}: {error}" for path in paths for error in dciodvfy_errors(path)]
    assert errors == []
    seg_paths = [path for path in paths if path.name.startswith("SEG")]
    assert all(not m.errors for m in pixelmed_messages(seg_paths, "instance").values())


# --- Series that hold several volumes ----------------------------------------------------


def _phases(acquisition_numbers: tuple[int, int]) -> list[Dataset]:
    """Two acquisitions of the same positions in one series (e.g. two contrast phases)."""
    first = make_sphere_stack(table_positions=REGULAR[14:26]).datasets
    second = copy.deepcopy(first)
    for n, ds in enumerate(second):
        ds.SOPInstanceUID = f"2.25.417{n:03}"
        ds.AcquisitionNumber = acquisition_numbers[1]
        ds.InstanceNumber = 100 + n
    for ds in first:
        ds.AcquisitionNumber = acquisition_numbers[0]
    return first + second


def test_two_phases_in_one_series_are_split_by_acquisition() -> None:
    found = load_volumes(_phases((1, 2)))
    assert [volume.label for volume in found.volumes] == ["acquisition 1", "acquisition 2"]
    assert all(volume.voxels.shape == (12, 64, 64) for volume in found.volumes)
    assert all(len(volume.datasets) == 12 for volume in found.volumes)


def test_repeated_positions_nothing_tells_apart_are_refused_not_averaged(tmp_path: Path) -> None:
    result = _annotate(_phases((1, 1)), tmp_path / "in")
    [outcome] = result.outcomes
    assert outcome.status == "failed"
    assert "duplicate slice position" in (outcome.reason or "")
    assert "not averaged" in (outcome.reason or "")


def test_a_localizer_in_the_series_is_left_out_with_the_reason(tmp_path: Path) -> None:
    datasets = make_sphere_stack(table_positions=REGULAR[14:26]).datasets
    localizer = copy.deepcopy(datasets[0])
    localizer.SOPInstanceUID = "2.25.418001"
    localizer.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    localizer.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    result = _annotate([*datasets, localizer], tmp_path / "in")
    statuses = sorted((o.status, o.reason or "") for o in result.outcomes)
    assert statuses[0][0] == "done"
    assert statuses[1][0] == "skipped"
    assert "1 localizer image(s) left out" in statuses[1][1]
    assert "2.25.418001" in statuses[1][1]
    seg = _seg(result)
    referenced = {
        item.ReferencedSOPInstanceUID
        for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    }
    assert "2.25.418001" not in referenced


def test_a_series_of_only_localizers_fails_with_the_reason() -> None:
    datasets = make_sphere_stack(table_positions=REGULAR[:3]).datasets
    for ds in datasets:
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    with pytest.raises(ValueError, match="only localizer images"):
        load_volumes(datasets)


def test_saved_multiframe_reads_back_the_same(two_stack_mr: Dataset, tmp_path: Path) -> None:
    """What the SCP stores (a file) reads as what was built in memory."""
    path = tmp_path / "mr.dcm"
    two_stack_mr.save_as(path, enforce_file_format=True)
    again = load_volumes([pydicom.dcmread(path)])
    assert [volume.label for volume in again.volumes] == ["stack 1", "stack 2"]


def test_a_one_stack_enhanced_ct_is_not_labelled_as_a_part(enhanced_ct: Dataset) -> None:
    """Its frames carry Stack ID 1, but one stack is the whole image: no part to name."""
    assert enhanced_ct.PerFrameFunctionalGroupsSequence[0].FrameContentSequence[0].StackID == "1"
    found = load_volumes([enhanced_ct])
    assert [volume.label for volume in found.volumes] == [""]
