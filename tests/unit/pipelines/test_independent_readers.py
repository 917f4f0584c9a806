"""Every kind of SEG and SR we write, checked by readers that are not ours.

The objects come out of the runner (the code path of the Celery task and the CLI):
- ct-basic + ct-lung-nodules on the chest phantom with nodules: a SEG, and one SR over
  both algorithms (segments with their SEG reference and outline, detections with their
  image region);
- the same on the real CT (skipped without ../shared/data): a SEG, and an SR where
  ct-lung-nodules found nothing;
- an SR of a classifier (its classes as qualitative evaluations);
- an SR of an algorithm that found nothing ("Clinical finding absent").

Each must have zero errors from dciodvfy, PixelMed's DicomInstanceValidator (SEG) and
DicomSRValidator (SR), and dcmqi must read back what highdicom reads: segment labels,
codes, tracking and colours; measurement groups' tracking identifiers and UIDs, findings,
values, units and references; and DCMTK the spatial coordinates (SCOORD, SCOORD3D) and
the report's qualitative evaluations, which tid1500reader does not read. Validation is
batched once per module (one JVM per PixelMed validator). An object the runner cannot
write fails the tests of that object only.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import SegmentationStorage

from pipelines.base import Pipeline
from pipelines.findings import Algorithm, Classification, Findings, Segment
from pipelines.registry import builtin_pipelines
from pipelines.routing import DEFAULT_RULES
from pipelines.runner import StudyResult, annotate_study
from pipelines.volume import Volume
from tests.conftest import SHARED_DATA
from tests.support.dicom_validate import (
    DcmqiSegment,
    DcmtkReport,
    Location,
    Messages,
    Report,
    dcmqi_measurements,
    dcmqi_segments,
    dcmtk_sr,
    parse_dciodvfy,
    parse_pixelmed,
    validation_reports,
)
from tests.support.phantom import CtPhantom, make_ct_phantom

REAL_CT = SHARED_DATA / "ct-abdomen-crlm1004"
#: A stand-in classifier's output: a finding and a probability per class.
CLASSES = (Classification(codes.SCT.Nodule, 0.75), Classification(codes.SCT.Lesion, 0.125))


@dataclass
class _FakePipeline:
    """A pipeline with a fixed answer: classifications, or an empty segment (nothing)."""

    name: str
    algorithm: Algorithm
    modalities: frozenset[str]
    classifications: tuple[Classification, ...] = ()

    def run(self, volume: Volume) -> Findings:
        if self.classifications:
            return Findings(self.algorithm, classifications=self.classifications)
        empty = np.zeros(volume.voxels.shape, dtype=bool)
        nothing = Segment(
            "Lesion", empty, codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Lesion
        )
        return Findings(self.algorithm, segments=(nothing,))


def _save_series(datasets: list[Dataset], folder: Path) -> list[Path]:
    folder.mkdir(parents=True)
    paths = []
    for n, ds in enumerate(datasets):
        paths.append(folder / f"ct{n:03}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths


def _annotate(
    paths: list[Path], pipelines: dict[str, Pipeline] | None = None, only: str | None = None
) -> StudyResult:
    return annotate_study(
        paths,
        rules=DEFAULT_RULES if pipelines is None else (),
        pipelines=builtin_pipelines() if pipelines is None else pipelines,
        software_version="0.1.0",
        only=only,
    )


@dataclass
class Written:
    """The files the runner wrote, by name, and why a study wrote none (the error)."""

    folder: Path
    paths: dict[str, Path] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, run: Any) -> None:
        """``{name}-seg`` (when there is one) and ``{name}-sr`` from ``run()``'s result."""
        try:
            result: StudyResult = run()
            assert not result.failures, [o.reason for o in result.failures]
        except Exception as exc:  # noqa: BLE001 - recorded, and fails this object's tests
            self.failures[name] = f"the runner could not write {name}: {exc!r}"
            return
        for ds in result.outputs:
            key = f"{name}-{str(ds.Modality).lower()}"
            assert key not in self.paths, f"{name}: more than one {ds.Modality}"
            self.paths[key] = self.folder / f"{key}.dcm"
            ds.save_as(self.paths[key], enforce_file_format=True)

    def path(self, name: str) -> Path:
        if name in self.paths:
            return self.paths[name]
        study = name.rsplit("-", 1)[0]
        if study in self.failures:
            raise AssertionError(self.failures[study])
        if study == "real" and not REAL_CT.is_dir():
            pytest.skip(f"real DICOM data not available: {REAL_CT} is absent")
        raise AssertionError(f"the runner wrote no {name}: {sorted(self.paths)}")


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory, nodule_phantom: CtPhantom) -> Written:
    """Every kind of SEG and SR the product writes, through the runner, as files."""
    folder = tmp_path_factory.mktemp("independent-readers")
    done = Written(folder)
    chest = _save_series(nodule_phantom.datasets, folder / "chest")
    done.add("chest", lambda: _annotate(chest))
    if REAL_CT.is_dir():
        done.add("real", lambda: _annotate(sorted(REAL_CT.glob("*.dcm"))))
    small = make_ct_phantom(slices=12, size=64, pixel_spacing=5.5, seed=5).datasets
    small_paths = _save_series(small, folder / "small")
    classifier = _FakePipeline(
        "classifier", Algorithm("classifier", "1.0"), frozenset({"CT"}), CLASSES
    )
    done.add(
        "classification",
        lambda: _annotate(small_paths, {"classifier": classifier}, only="classifier"),
    )
    nothing = _FakePipeline("finds-nothing", Algorithm("finds-nothing", "2.0"), frozenset({"CT"}))
    done.add(
        "nothing",
        lambda: _annotate(small_paths, {"finds-nothing": nothing}, only="finds-nothing"),
    )
    return done


def _broken(written: Written, folder: Path) -> dict[str, Path]:
    """Copies of the chest SEG and SR with a known defect each, to show the checks bite."""
    seg = pydicom.dcmread(written.path("chest-seg"))
    del seg.SegmentSequence[0].SegmentLabel  # Type 1
    sr = pydicom.dcmread(written.path("chest-sr"))
    [measurements] = [
        item for item in sr.ContentSequence if item.ConceptNameCodeSequence[0].CodeValue == "126010"
    ]
    # Type 1C: a content item's name (that of "Procedure reported")
    [procedure] = [
        item for item in sr.ContentSequence if item.ConceptNameCodeSequence[0].CodeValue == "121058"
    ]
    del procedure.ConceptNameCodeSequence
    # TID 300: a measurement is CONTAINed in its group, not a property of it
    [measurement, *_] = [
        item for item in measurements.ContentSequence[0].ContentSequence if item.ValueType == "NUM"
    ]
    measurement.RelationshipType = "HAS PROPERTIES"
    broken = {"broken-seg": folder / "broken-seg.dcm", "broken-sr": folder / "broken-sr.dcm"}
    seg.save_as(broken["broken-seg"])
    sr.save_as(broken["broken-sr"])
    return broken


@pytest.fixture(scope="module")
def reports(written: Written, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Report]:
    """All validators on all objects, and on two broken ones, at once (one JVM per
    PixelMed validator)."""
    folder = tmp_path_factory.mktemp("validation")
    files = dict(written.paths)
    if "chest-seg" in files and "chest-sr" in files:
        files |= _broken(written, folder)
    found = validation_reports(files.values(), folder)
    return {name: found[path] for name, path in files.items()}


ALL_OBJECTS = ["chest-seg", "chest-sr", "real-seg", "real-sr", "classification-sr", "nothing-sr"]
SEGS = [name for name in ALL_OBJECTS if name.endswith("-seg")]
SRS = [name for name in ALL_OBJECTS if name.endswith("-sr")]


def test_the_runner_wrote_every_kind(written: Written) -> None:
    expected = {"chest-seg", "chest-sr", "classification-sr", "nothing-sr"}
    if REAL_CT.is_dir():
        expected |= {"real-seg", "real-sr"}
    assert written.failures == {}
    assert set(written.paths) == expected


@pytest.mark.parametrize("name", ALL_OBJECTS)
def test_validators_report_no_errors(
    name: str, written: Written, reports: dict[str, Report]
) -> None:
    """dciodvfy, PixelMed (DicomInstanceValidator on SEG, DicomSRValidator on SR), dcmqi."""
    written.path(name)
    errors = reports[name].errors
    assert errors == [], f"{len(errors)} error(s) on {name}:\n" + "\n".join(errors)


@pytest.mark.parametrize(
    ("name", "tools"),
    [
        ("broken-seg", ["dciodvfy", "PixelMed DicomInstanceValidator"]),
        ("broken-sr", ["dciodvfy", "PixelMed DicomSRValidator", "tid1500reader"]),
    ],
)
def test_the_validators_catch_a_broken_object(
    name: str, tools: list[str], written: Written, reports: dict[str, Report]
) -> None:
    written.path(name.replace("broken", "chest"))
    errors = reports[name].errors
    for tool in tools:
        assert any(error.startswith(f"{tool}: ") for error in errors), (tool, errors)


# --- SEG -------------------------------------------------------------------------------------


def _segment_voxel_counts(seg: hd.seg.Segmentation) -> dict[int, int]:
    """Set pixels per segment, summed over the SEG's frames."""
    frames = seg.pixel_array.reshape((int(seg.NumberOfFrames), seg.Rows, seg.Columns))
    counts: dict[int, int] = {}
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        counts[number] = counts.get(number, 0) + int(np.count_nonzero(frame))
    return counts


def _coded(item: Dataset) -> tuple[str, str, str]:
    return (str(item.CodeValue), str(item.CodingSchemeDesignator), str(item.CodeMeaning))


@pytest.fixture(scope="module")
def dcmqi_seg_reads(
    written: Written, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, list[DcmqiSegment]]:
    out = tmp_path_factory.mktemp("dcmqi-seg")
    return {
        name: dcmqi_segments(path, out / name).segments
        for name, path in written.paths.items()
        if name.endswith("-seg")
    }


@pytest.mark.parametrize("name", SEGS)
def test_dcmqi_reads_the_segments_we_wrote(
    name: str, written: Written, dcmqi_seg_reads: dict[str, list[DcmqiSegment]]
) -> None:
    seg = hd.seg.segread(written.path(name))
    theirs = {segment.number: segment for segment in dcmqi_seg_reads[name]}
    ours = {int(item.SegmentNumber): item for item in seg.SegmentSequence}
    assert sorted(theirs) == sorted(ours)
    counts = _segment_voxel_counts(seg)
    for number, item in ours.items():
        read = theirs[number]
        assert read.label == item.SegmentLabel
        assert read.category == _coded(item.SegmentedPropertyCategoryCodeSequence[0])
        assert read.property_type == _coded(item.SegmentedPropertyTypeCodeSequence[0])
        assert read.tracking_id == item.TrackingID
        assert read.tracking_uid == item.TrackingUID
        assert read.algorithm_name == item.SegmentAlgorithmName
        assert int(read.voxels.sum()) == counts[number] > 0, item.SegmentLabel


@pytest.mark.parametrize("name", SEGS)
def test_dcmqi_shows_the_colours_we_wrote(
    name: str, written: Written, dcmqi_seg_reads: dict[str, list[DcmqiSegment]]
) -> None:
    """RecommendedDisplayCIELabValue, as dcmqi converts it to RGB, is the colour we meant."""
    seg = pydicom.dcmread(written.path(name), stop_before_pixels=True)
    theirs = {segment.number: segment for segment in dcmqi_seg_reads[name]}
    missing = [
        str(item.SegmentLabel)
        for item in seg.SegmentSequence
        if "RecommendedDisplayCIELabValue" not in item
    ]
    assert missing == [], f"segments without RecommendedDisplayCIELabValue: {missing}"
    colours = []
    for item in seg.SegmentSequence:
        lab = [int(v) for v in item.RecommendedDisplayCIELabValue]
        expected = hd.color.CIELabColor.from_dicom_value(lab).to_rgb()
        got = theirs[int(item.SegmentNumber)].rgb
        assert max(abs(a - b) for a, b in zip(got, expected, strict=True)) <= 1, (
            f"{item.SegmentLabel}: dcmqi shows {got}, CIELab {lab} is {expected}"
        )
        colours.append(got)
    assert len(set(colours)) == len(colours), f"segments share colours: {colours}"


# --- SR --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dcmqi_sr_reads(
    written: Written, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, dict[str, Any]]:
    out = tmp_path_factory.mktemp("dcmqi-sr")
    return {
        name: dcmqi_measurements(path, out).report
        for name, path in written.paths.items()
        if name.endswith("-sr")
    }


@pytest.fixture(scope="module")
def dcmtk_sr_reads(written: Written) -> dict[str, DcmtkReport]:
    return {name: dcmtk_sr(path) for name, path in written.paths.items() if name.endswith("-sr")}


_Group = (
    hd.sr.MeasurementsAndQualitativeEvaluations
    | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
    | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
)
#: A group is known by its tracking UID, whether it references a SEG segment, and its
#: place among the groups with both the same (a detection has two groups: its box, then
#: its measurements, in document order).
_Key = tuple[str, bool, int]
T = TypeVar("T")


def _keyed(groups: list[T], key: Callable[[T], tuple[str, bool]]) -> dict[_Key, T]:
    seen: Counter[tuple[str, bool]] = Counter()
    keyed = {}
    for group in groups:
        uid, segment = key(group)
        keyed[(uid, segment, seen[(uid, segment)])] = group
        seen[(uid, segment)] += 1
    return keyed


def _our_groups(path: Path) -> dict[_Key, _Group]:
    """Every measurement group as highdicom reads it."""
    content: Any = hd.sr.srread(path).content
    groups: list[_Group] = [
        *content.get_image_measurement_groups(),
        *content.get_planar_roi_measurement_groups(),
        *content.get_volumetric_roi_measurement_groups(),
    ]
    return _keyed(
        groups,
        lambda g: (str(g.tracking_uid), getattr(g, "referenced_segment", None) is not None),
    )


def _code(item: dict[str, str]) -> tuple[str, str]:
    return (item["CodeValue"], item["CodingSchemeDesignator"])


def _hd_code(code: Any) -> tuple[str, str]:
    return (str(code.value), str(code.scheme_designator))


def _algorithm(group: _Group) -> dict[str, str]:
    return {
        str(item.ConceptNameCodeSequence[0].CodeMeaning): str(item.TextValue)
        for item in group[0].ContentSequence
        if item.ValueType == "TEXT"
        and item.ConceptNameCodeSequence[0].CodeValue in ("111001", "111003")
    }


def _source_series(group: _Group) -> str:
    [uid] = [
        str(item.UID)
        for item in group[0].ContentSequence
        if item.ValueType == "UIDREF" and item.ConceptNameCodeSequence[0].CodeValue == "121232"
    ]
    return uid


@pytest.mark.parametrize("name", SRS)
def test_dcmqi_reads_the_groups_we_wrote(
    name: str, written: Written, dcmqi_sr_reads: dict[str, dict[str, Any]]
) -> None:
    """Tracking identifiers and UIDs, findings, sites, algorithm, values, units, references."""
    ours = _our_groups(written.path(name))
    read = dcmqi_sr_reads[name]["Measurements"]
    theirs = _keyed(read, lambda g: (g["TrackingUniqueIdentifier"], "ReferencedSegment" in g))
    assert sorted(theirs) == sorted(ours)
    for key, group in ours.items():
        dcmqi = theirs[key]
        assert dcmqi["TrackingIdentifier"] == group.tracking_identifier
        if group.finding_type is not None:
            assert _code(dcmqi["Finding"]) == _hd_code(group.finding_type)
        if group.finding_sites:
            [site] = group.finding_sites
            assert _code(dcmqi["FindingSite"]) == _hd_code(site.value)
        algorithm = _algorithm(group)
        assert dcmqi["measurementAlgorithmIdentification"] == {
            "AlgorithmName": algorithm["Algorithm Name"],
            "AlgorithmVersion": algorithm["Algorithm Version"],
        }
        # dcmqi reads Numeric Value (DS); highdicom prefers Floating Point Value (FD) when
        # the DS had to round, so compare with the DS exactly and with the FD to its precision
        measured = [
            (
                _hd_code(m.name),
                _hd_code(m.unit),
                float(str(m[0].MeasuredValueSequence[0].NumericValue)),
            )
            for m in group.get_measurements()
        ]
        assert [
            (_code(item["quantity"]), _code(item["units"]), float(item["value"]))
            for item in dcmqi.get("measurementItems", [])
        ] == measured
        for m, (_, _, value) in zip(group.get_measurements(), measured, strict=True):
            assert value == pytest.approx(float(m.value), rel=1e-12, abs=1e-12)
        assert all(math.isfinite(value) for _, _, value in measured)
        reference = getattr(group, "referenced_segment", None)
        if reference is not None:
            assert dcmqi["ReferencedSegment"] == reference.referenced_segment_numbers[0]
            assert dcmqi["segmentationSOPInstanceUID"] == reference.referenced_sop_instance_uid
            assert dcmqi["SourceSeriesForImageSegmentation"] == _source_series(group)
        # both list Finding category (SCT 276214006) among the evaluations, and dcmqi the
        # detection's comment (a TEXT it does not know) too; compare all
        evaluations: list[tuple[tuple[str, str], object]] = [
            (_hd_code(e.name), _hd_code(e.value)) for e in group.get_qualitative_evaluations()
        ]
        evaluations += [
            (("121106", "DCM"), str(item.TextValue))
            for item in group[0].ContentSequence
            if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeValue == "121106"
        ]
        assert [
            (
                _code(e["conceptCode"]),
                e["conceptValue"]
                if isinstance(e["conceptValue"], str)
                else _code(e["conceptValue"]),
            )
            for e in dcmqi.get("qualitativeEvaluations", [])
        ] == evaluations


@pytest.mark.parametrize("name", SRS)
def test_dcmqi_reads_the_evidence_and_flags_we_wrote(
    name: str, written: Written, dcmqi_sr_reads: dict[str, dict[str, Any]]
) -> None:
    sr = pydicom.dcmread(written.path(name))
    read = dcmqi_sr_reads[name]
    evidence = {
        str(ref.ReferencedSOPInstanceUID): str(ref.ReferencedSOPClassUID)
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    }
    segs = {uid for uid, sop_class in evidence.items() if sop_class == SegmentationStorage}
    assert set(read.get("compositeContext", [])) == segs
    assert set(read.get("imageLibrary", [])) == set(evidence) - segs
    assert (read["CompletionFlag"], read["VerificationFlag"]) == (
        sr.CompletionFlag,
        sr.VerificationFlag,
    )
    assert read["SeriesNumber"] == str(sr.SeriesNumber)


def _our_locations(group: _Group) -> list[Location]:
    """Every SCOORD and SCOORD3D in the group (nested ones too), in document order."""
    found = []

    def walk(items: Any) -> None:
        for item in items:
            if item.ValueType == "SCOORD":
                [image] = [i for i in item.ContentSequence if i.ValueType == "IMAGE"]
                reference = str(image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
            elif item.ValueType == "SCOORD3D":
                reference = str(item.ReferencedFrameOfReferenceUID)
            else:
                walk(item.get("ContentSequence", []))
                continue
            data = [float(v) for v in item.GraphicData]
            size = 2 if item.ValueType == "SCOORD" else 3
            points = tuple(tuple(data[i : i + size]) for i in range(0, len(data), size))
            found.append(Location(item.ValueType, str(item.GraphicType), points, reference))

    walk(group[0].ContentSequence)
    return found


@pytest.mark.parametrize("name", SRS)
def test_dcmtk_reads_the_locations_we_wrote(
    name: str, written: Written, dcmtk_sr_reads: dict[str, DcmtkReport]
) -> None:
    """Image regions and outlines (tid1500reader leaves coordinates out): same points on
    the same image (SCOORD) or in the same frame of reference (SCOORD3D)."""
    ours = _our_groups(written.path(name))
    theirs = _keyed(dcmtk_sr_reads[name].groups, lambda g: (g.tracking_uid, g.references_segment))
    assert sorted(theirs) == sorted(ours)
    for key, group in ours.items():
        mine = _our_locations(group)
        read = list(theirs[key].locations)
        assert [(m.value_type, m.graphic_type, m.reference) for m in mine] == [
            (r.value_type, r.graphic_type, r.reference) for r in read
        ], group.tracking_identifier
        for m, r in zip(mine, read, strict=True):
            assert np.allclose(m.points, r.points, rtol=1e-6, atol=1e-4), (m, r)
    # a detection is drawn where it is: an image region on the image it names
    for key, group in ours.items():
        if isinstance(group, hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations):
            assert theirs[key].locations, f"{group.tracking_identifier}: no image region"


def _our_evaluations(path: Path) -> list[tuple[str, str]]:
    """The root's "Qualitative Evaluations" items: (concept, code value or text)."""
    sr = pydicom.dcmread(path)
    found = []
    for container in sr.ContentSequence:
        if container.ConceptNameCodeSequence[0].CodeValue != "C0034375":
            continue
        for item in container.ContentSequence:
            concept = str(item.ConceptNameCodeSequence[0].CodeValue)
            if item.ValueType == "CODE":
                found.append((concept, str(item.ConceptCodeSequence[0].CodeValue)))
            elif item.ValueType == "TEXT":
                found.append((concept, str(item.TextValue)))
    return found


@pytest.mark.parametrize("name", SRS)
def test_dcmtk_reads_the_evaluations_we_wrote(
    name: str, written: Written, dcmtk_sr_reads: dict[str, DcmtkReport]
) -> None:
    assert dcmtk_sr_reads[name].qualitative_evaluations == _our_evaluations(written.path(name))


def test_the_chest_sr_covers_both_algorithms(
    written: Written, dcmqi_sr_reads: dict[str, dict[str, Any]]
) -> None:
    written.path("chest-sr")
    read = dcmqi_sr_reads["chest-sr"]
    algorithms = {
        g["measurementAlgorithmIdentification"]["AlgorithmName"] for g in read["Measurements"]
    }
    assert algorithms == {"ct-basic", "ct-lung-nodules"}
    nodules = [g for g in read["Measurements"] if g["Finding"]["CodeValue"] == "27925004"]
    assert len(nodules) >= 5


def test_the_classification_and_nothing_srs_say_so(
    written: Written, dcmtk_sr_reads: dict[str, DcmtkReport]
) -> None:
    written.path("nothing-sr")
    written.path("classification-sr")
    codes_of = {
        name: [
            value
            for concept, value in dcmtk_sr_reads[name].qualitative_evaluations
            if concept != "121106"
        ]  # DCM Comment
        for name in ("nothing-sr", "classification-sr")
    }
    assert codes_of["nothing-sr"] == ["373572006"]  # Clinical finding absent
    assert codes_of["classification-sr"] == [c.code.value for c in CLASSES]


# --- the parsers: what each tool prints, as seen on real runs -------------------------------


def test_dciodvfy_errors_after_a_tag_and_its_exit_status_count() -> None:
    output = (
        "(0x6167,0x6272)  ?  - Warning - Private tag without owner\n"
        "(0x6167,0x6272)  ?  - Error - Bad Value Length - not a multiple of 2\n"
        "Error - Dicom dataset read failed\n"
        "Warning - Missing attribute or value that would be needed to build DICOMDIR - Modality\n"
    )
    found = parse_dciodvfy(output, 1)
    assert len(found.errors) == 2 and len(found.warnings) == 2
    assert parse_dciodvfy("Segmentation\n", 0) == Messages()
    assert parse_dciodvfy("Segmentation\n", 1).errors  # exit 1 without an error line
    assert parse_dciodvfy("", 0).errors  # named no IOD
    assert parse_dciodvfy("Segmentation\nsomething else entirely\n", 0).errors


def test_pixelmed_output_that_is_not_a_complete_run_fails() -> None:
    ok = "Found Segmentation IOD\nWarning: a: b\nIOD validation complete\n"
    assert parse_pixelmed(ok, "V") == Messages(warnings=("Warning: a: b",))
    sr = (
        "Found Comprehensive3DSR IOD\nFound Root Template TID_1500 (MeasurementReport)\n"
        "Error: Template 1500 x: y\nRoot Template Validation Complete\nIOD validation complete\n"
    )
    assert parse_pixelmed(sr, "V").errors == ("Error: Template 1500 x: y",)
    relationship = (
        "Parent content item (1.9.1: CONTAINER) has illegal relationship HAS PROPERTIES"
        " with child content item (1.9.1.7: NUM)"
    )
    assert parse_pixelmed(sr.replace("Error: Template 1500 x: y", relationship), "V").errors == (
        relationship,
    )
    assert parse_pixelmed("IOD (SOP Class) unrecognized\n", "V").errors
    assert parse_pixelmed("Found Segmentation IOD\n", "V").errors  # never completed
    crashed = "exception: java.io.IOException: boom\n\tat com.pixelmed.dicom.AttributeList.read"
    assert parse_pixelmed(crashed, "V").errors
    assert parse_pixelmed("", "V").errors
