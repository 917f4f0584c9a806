"""Independent readers and validators for the SEGs and SRs we write.

- dicom3tools' ``dciodvfy`` (IOD, module and attribute checks, every object);
- PixelMed's ``DicomInstanceValidator`` (IOD checks; this PixelMed knows the Segmentation
  IOD but no SR IOD) and ``DicomSRValidator`` (SR content: templates, value sets);
- dcmqi's ``segimage2itkimage`` and ``tid1500reader``, which read a SEG and a TID 1500 SR
  back into label volumes and JSON, for comparison with what we wrote;
- DCMTK's ``dsr2xml``, for the SR's spatial coordinates and the root's qualitative
  evaluations (tid1500reader reads neither);
- DCMTK's ``drtdump``, which reads an RT Structure Set with DCMTK's RT library and names
  every missing or wrong attribute of its modules (this PixelMed has no RT IOD).

Every tool's output is parsed line by line: a line that is neither an error, a warning nor
one of the tool's known informational lines, a crash or a non-zero exit becomes an error,
so an output this module cannot read fails the test instead of passing it. A test is
skipped only when a tool is not installed (``deploy/install.sh --dev`` installs them all).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import nibabel as nib
import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from pydicom.uid import (
    Comprehensive3DSRStorage,
    KeyObjectSelectionDocumentStorage,
    RTStructureSetStorage,
    SegmentationStorage,
)

DCIODVFY = "/usr/bin/dciodvfy"
DSR2XML = "/usr/bin/dsr2xml"
DRTDUMP = "/usr/bin/drtdump"
#: Debian's libpixelmed-java; its manifest's Class-Path names the jars it depends on.
PIXELMED_JAR = Path(os.environ.get("PIXELMED_JAR", "/usr/share/java/pixelmed.jar"))
#: Runs a PixelMed validator over many files in one JVM (see the file).
PIXELMED_BATCH = Path(__file__).with_name("PixelmedBatch.java")
#: JDK 17's XPath limits are too low for PixelMed's compiled stylesheets.
JAVA_OPTIONS = (
    "-Djdk.xml.xpathExprGrpLimit=0",
    "-Djdk.xml.xpathExprOpLimit=0",
    "-Djdk.xml.xpathTotalOpLimit=0",
    "-XX:+UseSerialGC",
)
PixelmedKind = Literal["instance", "sr"]
_PIXELMED_CLASSES: dict[PixelmedKind, str] = {
    "instance": "com.pixelmed.validate.DicomInstanceValidator",
    "sr": "com.pixelmed.validate.DicomSRValidator",
}


@dataclass(frozen=True)
class Messages:
    """What one tool said about one file: its errors and its warnings, in its own words."""

    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    def __add__(self, other: Messages) -> Messages:
        return Messages(self.errors + other.errors, self.warnings + other.warnings)


# --- tools -----------------------------------------------------------------------------------


def _tool(name: str, fallback: str | None, package: str) -> str:
    found = shutil.which(name) or (fallback if fallback and Path(fallback).exists() else None)
    if found is None:
        pytest.skip(f"{name} is not installed ({package})")
    return found


def dciodvfy_path() -> str:
    """The validator's path, skipping the calling test when it is not installed."""
    return _tool("dciodvfy", DCIODVFY, "Debian package dicom3tools")


def java_path() -> str:
    """``java``, skipping the calling test when PixelMed or Java is not installed."""
    if not PIXELMED_JAR.is_file():
        pytest.skip(f"PixelMed is not installed ({PIXELMED_JAR}; Debian package libpixelmed-java)")
    return _tool("java", None, "Debian package default-jdk-headless")


def dcmqi_tool(name: str) -> str:
    """A dcmqi binary (the PyPI package dcmqi puts them beside the venv's python)."""
    beside_python = Path(sys.executable).parent / name
    fallback = str(beside_python) if beside_python.exists() else None
    return _tool(name, fallback, "PyPI package dcmqi, in the dev extra")


def dsr2xml_path() -> str:
    return _tool("dsr2xml", DSR2XML, "Debian package dcmtk")


def _run(args: Sequence[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"cannot validate {path}: no such file")


# --- dciodvfy --------------------------------------------------------------------------------

#: The IOD name dciodvfy prints first (e.g. "Segmentation", "Comprehensive3DSR").
_DCIODVFY_IOD = re.compile(r"^[A-Za-z0-9]+$")


def parse_dciodvfy(output: str, returncode: int) -> Messages:
    """Errors and warnings from dciodvfy's stdout+stderr.

    Messages are "Error - ..." and "Warning - ...", either at the start of a line or after
    an attribute tag ("(0x0010,0x0010)  ?  - Error - ..."). dciodvfy exits 1 when it
    found errors, 0 otherwise; any other line, or an exit status that disagrees with the
    messages, is reported as an error.
    """
    errors: list[str] = []
    warnings: list[str] = []
    iod_lines = 0
    for line in output.splitlines():
        text = line.strip()
        if not text:
            continue
        if text.startswith("Error") or " - Error - " in text:
            errors.append(text)
        elif text.startswith("Warning") or " - Warning - " in text:
            warnings.append(text)
        elif _DCIODVFY_IOD.match(text):
            iod_lines += 1
        else:
            errors.append(f"unparsed dciodvfy output: {text}")
    if iod_lines == 0 and not errors:
        errors.append("dciodvfy named no IOD (is this a DICOM file?)")
    if returncode not in (0, 1) or (returncode == 1) != bool(errors):
        errors.append(f"dciodvfy exited {returncode} with {len(errors)} error line(s)")
    return Messages(tuple(errors), tuple(warnings))


def dciodvfy_messages(path: Path) -> Messages:
    """dciodvfy's errors and warnings for ``path``.

    The file must exist: given no file, dciodvfy reads stdin and reports nonsense.
    """
    _require_file(path)
    completed = _run([dciodvfy_path(), str(path)], timeout=120)
    return parse_dciodvfy(completed.stdout + completed.stderr, completed.returncode)


def dciodvfy_errors(path: Path) -> list[str]:
    """The errors dciodvfy reports for ``path`` (warnings are left out)."""
    return list(dciodvfy_messages(path).errors)


# --- DCMTK drtdump ---------------------------------------------------------------------------

#: drtdump's log lines: "W: StructureSetLabel (3006,0002) absent in StructureSetModule (type 1)".
_DRTDUMP_MESSAGE = re.compile(r"^(?P<level>[FEWI]): (?P<text>.+)$")


def parse_drtdump(stderr: str, returncode: int) -> Messages:
    """drtdump's complaints about an RT object, all errors: at its default log level it
    says only what the IOD's modules miss or get wrong ("W: ... absent ... (type 1)").

    Its stdout is the dump itself; any stderr line that is not a log message, or a non-zero
    exit, is an error.
    """
    errors = []
    for line in stderr.splitlines():
        text = line.strip()
        if not text:
            continue
        match = _DRTDUMP_MESSAGE.match(text)
        errors.append(match.group("text") if match else f"unparsed drtdump output: {text}")
    if returncode != 0:
        errors.append(f"drtdump exited {returncode}")
    return Messages(tuple(errors))


def drtdump_messages(path: Path) -> Messages:
    _require_file(path)
    completed = _run([_tool("drtdump", DRTDUMP, "Debian package dcmtk"), str(path)], timeout=120)
    if "RT Structure Set object" not in completed.stdout:
        return Messages((f"drtdump did not read an RT Structure Set: {completed.stdout[:200]}",))
    return parse_drtdump(completed.stderr, completed.returncode)


# --- PixelMed --------------------------------------------------------------------------------

_PIXELMED_INFO = (
    re.compile(r"^Found .+ IOD$"),
    re.compile(r"^Found Root Template .+$"),
    re.compile(r"^Root Template Validation Complete$"),
)
_PIXELMED_COMPLETE = "IOD validation complete"
#: DicomSRValidator's relationship check (PS3.3 relationship constraints), without "Error:"
_PIXELMED_RELATIONSHIP = re.compile(r"^Parent content item .+ has illegal relationship .+$")


def parse_pixelmed(output: str, tool: str) -> Messages:
    """Errors ("Error: ...", "Parent content item ... has illegal relationship ...") and
    warnings ("Warning: ...") of one PixelMed validation.

    A complete run names the IOD it found ("Found ... IOD") and ends with "IOD validation
    complete"; an unknown SOP class ("IOD (SOP Class) unrecognized"), an exception, a
    missing end line or any line of another form is an error.
    """
    errors: list[str] = []
    warnings: list[str] = []
    unparsed: list[str] = []
    found_iod = complete = False
    for line in output.splitlines():
        text = line.rstrip()
        if not text.strip():
            continue
        if text.startswith("Error: ") or _PIXELMED_RELATIONSHIP.match(text):
            errors.append(text)
        elif text.startswith("Warning: "):
            warnings.append(text)
        elif text == _PIXELMED_COMPLETE:
            complete = True
        elif any(pattern.match(text) for pattern in _PIXELMED_INFO):
            found_iod = found_iod or text.endswith(" IOD")
        elif text == "IOD (SOP Class) unrecognized":
            errors.append(f"{tool}: IOD (SOP Class) unrecognized (it cannot check this object)")
        else:
            unparsed.append(text)
    if unparsed:
        shown = "\n".join(unparsed[:40])
        errors.append(f"{tool}: crashed or printed output of unknown form:\n{shown}")
    elif not (found_iod and complete) and not errors:
        errors.append(f"{tool}: incomplete run (no 'Found ... IOD' or no '{_PIXELMED_COMPLETE}')")
    return Messages(tuple(errors), tuple(warnings))


def _split_batch(stdout: str, count: int) -> list[str]:
    """The per-file outputs of PixelmedBatch; a file without a complete block gets a marker."""
    blocks: dict[int, list[str]] = {}
    current: int | None = None
    for line in stdout.splitlines():
        if line.startswith("@@@ BEGIN "):
            current = int(line.split()[2])
            blocks[current] = []
        elif line.startswith("@@@ END "):
            current = None
        elif line.startswith("@@@ EXCEPTION "):
            if current is not None:
                blocks[current].append("exception: " + line.split(" ", 3)[3])
        elif current is not None:
            blocks[current].append(line)
    return [
        "\n".join(blocks[index]) if index in blocks else "no output for this file (JVM died?)"
        for index in range(count)
    ]


def _pixelmed_batch_command(kind: PixelmedKind, paths: Sequence[Path]) -> list[str]:
    return [
        java_path(),
        *JAVA_OPTIONS,
        "-cp",
        str(PIXELMED_JAR),
        str(PIXELMED_BATCH),
        kind,
        *(str(path) for path in paths),
    ]


def pixelmed_messages(paths: Sequence[Path], kind: PixelmedKind) -> dict[Path, Messages]:
    """One PixelMed validator (``"instance"`` or ``"sr"``) over ``paths``, in one JVM.

    With a JDK the source launcher runs ``PixelmedBatch.java`` (the validator's stylesheet
    is compiled once, seconds saved per file); with only a JRE each file gets its own JVM
    and the validator's ``main``.
    """
    for path in paths:
        _require_file(path)
    if not paths:
        return {}
    tool = _PIXELMED_CLASSES[kind].rsplit(".", 1)[1]
    java = java_path()
    if shutil.which("javac"):
        completed = _run(_pixelmed_batch_command(kind, paths), timeout=120 + 60 * len(paths))
        outputs = _split_batch(completed.stdout, len(paths))
        stderr = "\n".join(
            line for line in completed.stderr.splitlines() if not line.startswith("Picked up ")
        ).strip()
        if completed.returncode != 0 or stderr:
            # the driver sends stderr to stdout per file; anything here is a JVM failure
            trouble = f"JVM exited {completed.returncode}: {stderr[:2000]}"
            outputs = [f"{output}\n{trouble}" for output in outputs]
    else:
        outputs = []
        for path in paths:
            single = _run(
                [java, *JAVA_OPTIONS, "-cp", str(PIXELMED_JAR), _PIXELMED_CLASSES[kind], str(path)]
            )
            outputs.append(single.stdout + single.stderr)
    return {path: parse_pixelmed(output, tool) for path, output in zip(paths, outputs, strict=True)}


def pixelmed_errors(path: Path) -> list[str]:
    """PixelMed DicomInstanceValidator's errors for ``path`` (a Segmentation)."""
    return list(pixelmed_messages([path], "instance")[path].errors)


def pixelmed_sr_errors(path: Path) -> list[str]:
    """PixelMed DicomSRValidator's errors for the SR at ``path``."""
    return list(pixelmed_messages([path], "sr")[path].errors)


# --- dcmqi: SEG ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DcmqiSegment:
    """One segment as segimage2itkimage's meta JSON describes it, and its label volume."""

    number: int
    label: str
    rgb: tuple[int, int, int]
    category: tuple[str, str, str]
    property_type: tuple[str, str, str]
    tracking_id: str
    tracking_uid: str
    algorithm_name: str
    voxels: npt.NDArray[np.bool_] = field(repr=False, compare=False)


def _code(item: dict[str, str]) -> tuple[str, str, str]:
    return (item["CodeValue"], item["CodingSchemeDesignator"], item["CodeMeaning"])


def _dcmqi_messages(output: str, returncode: int, tool: str) -> Messages:
    """dcmqi's failures and warnings: "E:"/"Error" lines, "W:"/"Warning" lines, exit status.

    dcmqi prints much else (geometry, progress); those lines are information, not findings.
    """
    errors = [
        line.strip()
        for line in output.splitlines()
        if line.startswith(("E:", "F:", "Error", "ERROR", "terminate called"))
    ]
    warnings = [
        line.strip()
        for line in output.splitlines()
        if line.startswith(("W:", "Warning", "WARNING")) or "initializing to default" in line
    ]
    if returncode != 0:
        errors.append(f"{tool} exited {returncode}: {output.strip()[-2000:]}")
    return Messages(tuple(errors), tuple(warnings))


@dataclass(frozen=True)
class DcmqiSegmentation:
    segments: list[DcmqiSegment]
    meta: dict[str, Any]
    messages: Messages


def dcmqi_segments(path: Path, outdir: Path) -> DcmqiSegmentation:
    """``segimage2itkimage`` on the SEG at ``path``: its segments and their label volumes.

    Segments are read from the meta JSON it writes (label, ``recommendedDisplayRGBValue``,
    codes, tracking) and the NIfTI it writes per segment group (label value = labelID).
    """
    _require_file(path)
    outdir.mkdir(parents=True, exist_ok=True)
    completed = _run(
        [
            dcmqi_tool("segimage2itkimage"),
            "--inputDICOM",
            str(path),
            "--outputDirectory",
            str(outdir),
            "--outputType",
            "nifti",
        ]
    )
    messages = _dcmqi_messages(
        completed.stdout + completed.stderr, completed.returncode, "segimage2itkimage"
    )
    if completed.returncode != 0:
        raise AssertionError("; ".join(messages.errors))
    meta: dict[str, Any] = json.loads((outdir / "meta.json").read_text())
    segments = []
    for group_number, group in enumerate(meta["segmentAttributes"], start=1):
        image = nib.load(outdir / f"{group_number}.nii.gz")
        labels = np.asarray(image.dataobj)  # type: ignore[attr-defined]
        for item in group:
            segments.append(
                DcmqiSegment(
                    number=int(item["labelID"]),
                    label=str(item.get("SegmentLabel", "")),
                    rgb=tuple(int(v) for v in item["recommendedDisplayRGBValue"]),  # type: ignore[arg-type]
                    category=_code(item["SegmentedPropertyCategoryCodeSequence"]),
                    property_type=_code(item["SegmentedPropertyTypeCodeSequence"]),
                    tracking_id=str(item.get("TrackingIdentifier", "")),
                    tracking_uid=str(item.get("TrackingUniqueIdentifier", "")),
                    algorithm_name=str(item.get("SegmentAlgorithmName", "")),
                    voxels=labels == int(item["labelID"]),
                )
            )
    return DcmqiSegmentation(segments=segments, meta=meta, messages=messages)


# --- dcmqi: SR -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DcmqiMeasurements:
    """tid1500reader's JSON ("Measurements": one entry per measurement group) and messages."""

    report: dict[str, Any]
    messages: Messages

    @property
    def groups(self) -> list[dict[str, Any]]:
        return list(self.report.get("Measurements", []))


def dcmqi_measurements(path: Path, outdir: Path | None = None) -> DcmqiMeasurements:
    """``tid1500reader`` on the SR at ``path``: measurement groups with tracking identifier
    and UID, finding, finding site, measurement values, units and derivations, algorithm,
    referenced segment and SEG instance, source series; and the evidence it lists."""
    _require_file(path)
    target = (outdir or path.parent) / f"{path.stem}.tid1500.json"
    target.parent.mkdir(parents=True, exist_ok=True)  # tid1500reader exits 0 without it
    completed = _run(
        [
            dcmqi_tool("tid1500reader"),
            "--inputDICOM",
            str(path),
            "--outputMetadata",
            str(target),
        ]
    )
    messages = _dcmqi_messages(
        completed.stdout + completed.stderr, completed.returncode, "tid1500reader"
    )
    if completed.returncode != 0 or not target.is_file():
        raise AssertionError("; ".join(messages.errors) or f"tid1500reader wrote no {target}")
    return DcmqiMeasurements(report=json.loads(target.read_text()), messages=messages)


# --- DCMTK: SR coordinates and root evaluations ---------------------------------------------


@dataclass(frozen=True)
class Location:
    """A SCOORD (points on an image, "column/row") or SCOORD3D (patient mm) content item.

    ``reference`` is the image's SOP Instance UID for SCOORD, the Frame of Reference UID
    for SCOORD3D.
    """

    value_type: Literal["SCOORD", "SCOORD3D"]
    graphic_type: str
    points: tuple[tuple[float, ...], ...]
    reference: str


@dataclass(frozen=True)
class DcmtkGroup:
    """One measurement group as ``dsr2xml`` reads it: its tracking UID, whether it
    references a SEG segment, and every spatial coordinate in it (nested ones too)."""

    tracking_uid: str
    references_segment: bool
    locations: tuple[Location, ...]


@dataclass(frozen=True)
class DcmtkReport:
    groups: list[DcmtkGroup]
    #: Items of the root's "Qualitative Evaluations" container: (concept code, value).
    qualitative_evaluations: list[tuple[str, str]]
    messages: Messages


def dcmtk_sr(path: Path) -> DcmtkReport:
    """DCMTK's ``dsr2xml`` reading of an SR: measurement groups (in document order) with
    their spatial coordinates, which tid1500reader leaves out, and the root's qualitative
    evaluations, which it does not read either."""
    _require_file(path)
    completed = _run([dsr2xml_path(), str(path)])
    messages = _dcmqi_messages(completed.stderr, completed.returncode, "dsr2xml")
    if completed.returncode != 0:
        raise AssertionError("; ".join(messages.errors))
    root = ET.fromstring(completed.stdout)
    groups = []
    evaluations: list[tuple[str, str]] = []
    for container in root.iter("container"):
        concept = _concept(container)
        if concept == "C0034375":  # UMLS "Qualitative Evaluations"
            for item in container:
                if item.tag in ("code", "text"):  # the code's value, or the text
                    evaluations.append((_concept(item), item.findtext("value", "")))
        if concept != "125007":  # DCM "Measurement Group"
            continue
        uids = [
            item.findtext("value", "")
            for item in container.findall("uidref")
            if _concept(item) == "112040"
        ]
        if len(uids) != 1:
            raise AssertionError(f"a measurement group with {len(uids)} Tracking UIDs")
        segment = any(_concept(item) == "121191" for item in container.findall("image"))
        locations = tuple(_location(item) for item in container.iter() if item.tag in _SCOORDS)
        groups.append(DcmtkGroup(uids[0], segment, locations))
    return DcmtkReport(groups, evaluations, messages)


_SCOORDS = {"scoord": "SCOORD", "scoord3d": "SCOORD3D"}


def _location(item: ET.Element) -> Location:
    data = item.find("data")
    if data is None or data.text is None:
        raise AssertionError(f"{item.tag} without data")
    # dsr2xml writes points as "x/y" (SCOORD) or "x/y/z" (SCOORD3D), comma-separated
    points = tuple(
        tuple(float(v) for v in point.split("/")) for point in data.text.strip().split(",")
    )
    if item.tag == "scoord3d":
        reference = data.get("uid", "")
    else:
        instance = item.find("image/value/instance")
        reference = "" if instance is None else instance.get("uid", "")
    value_type: Literal["SCOORD", "SCOORD3D"] = "SCOORD3D" if item.tag == "scoord3d" else "SCOORD"
    return Location(value_type, item.get("type", ""), points, reference)


def _concept(item: ET.Element) -> str:
    return item.findtext("concept/value", "")


# --- everything at once ----------------------------------------------------------------------


@dataclass(frozen=True)
class Report:
    """Every applicable validator's messages for one file, "tool: message" each."""

    path: Path
    errors: list[str]
    warnings: list[str]


def _prefixed(tool: str, messages: Messages) -> Messages:
    return Messages(
        tuple(f"{tool}: {m}" for m in messages.errors),
        tuple(f"{tool}: {m}" for m in messages.warnings),
    )


def validation_reports(paths: Iterable[Path], workdir: Path) -> dict[Path, Report]:
    """dciodvfy, PixelMed and dcmqi on every file, batched: one JVM per PixelMed validator.

    SEG: dciodvfy, DicomInstanceValidator, segimage2itkimage (must read it). SR (TID 1500):
    dciodvfy, DicomSRValidator, tid1500reader (must read it). KOS: dciodvfy and
    DicomSRValidator (TID 2010). RTSTRUCT: dciodvfy and drtdump. This PixelMed's
    DicomInstanceValidator knows none of the SR, KOS or RT IODs ("IOD (SOP Class)
    unrecognized"), so their IOD checks are dciodvfy's (and DCMTK's for RT) and the
    documents' content checks DicomSRValidator's. Any other SOP class gets dciodvfy only.
    """
    paths = list(paths)
    workdir.mkdir(parents=True, exist_ok=True)
    sop_classes = {
        path: str(pydicom.dcmread(path, stop_before_pixels=True).SOPClassUID) for path in paths
    }
    segs = [p for p in paths if sop_classes[p] == SegmentationStorage]
    srs = [p for p in paths if sop_classes[p] == Comprehensive3DSRStorage]
    documents = [p for p in paths if sop_classes[p] == KeyObjectSelectionDocumentStorage]
    rtstructs = [p for p in paths if sop_classes[p] == RTStructureSetStorage]
    combined = {path: Messages() for path in paths}
    with ThreadPoolExecutor(max_workers=2) as pool:
        instance = pool.submit(pixelmed_messages, segs, "instance")
        sr = pool.submit(pixelmed_messages, [*srs, *documents], "sr")
        for path in paths:
            combined[path] += _prefixed("dciodvfy", dciodvfy_messages(path))
        for path in rtstructs:
            combined[path] += _prefixed("drtdump", drtdump_messages(path))
        for index, path in enumerate(segs):
            try:
                messages = dcmqi_segments(path, workdir / f"dcmqi-seg-{index}").messages
            except (AssertionError, OSError, ValueError, KeyError) as exc:
                messages = Messages(errors=(f"could not read the SEG: {exc}",))
            combined[path] += _prefixed("segimage2itkimage", messages)
        for path in srs:
            try:
                messages = dcmqi_measurements(path, workdir).messages
            except (AssertionError, OSError, ValueError) as exc:
                messages = Messages(errors=(f"could not read the SR: {exc}",))
            combined[path] += _prefixed("tid1500reader", messages)
        for path, messages in instance.result().items():
            combined[path] += _prefixed("PixelMed DicomInstanceValidator", messages)
        for path, messages in sr.result().items():
            combined[path] += _prefixed("PixelMed DicomSRValidator", messages)
    return {
        path: Report(path, list(messages.errors), list(messages.warnings))
        for path, messages in combined.items()
    }


def validation_report(path: Path, workdir: Path) -> Report:
    """:func:`validation_reports` for one file."""
    return validation_reports([path], workdir)[path]


def validation_errors(paths: Iterable[Path], workdir: Path) -> list[str]:
    """Every validator's errors on every file, "file name: tool: message" each, so a test
    can ``assert validation_errors([...], tmp_path) == []`` and read what failed."""
    reports = validation_reports(paths, workdir)
    return [f"{path.name}: {error}" for path, report in reports.items() for error in report.errors]
