"""A corpus of bad input, generated on the fly: what a PACS or a careless sender may deliver.

Each item is one study (its own Study Instance UID) as Part 10 files, with the outcome the
README's "Bad input" table documents. ``raw`` items must be sent byte for byte (pynetdicom's
chunked sending), because they cannot be decoded into a dataset first.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import highdicom
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.fileset import FileSet
from pydicom.uid import (
    BasicTextSRStorage,
    CTImageStorage,
    EncapsulatedPDFStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

from tests.support.phantom import make_ct_phantom


@dataclass(frozen=True)
class BadInput:
    """One corpus entry: the files of one study and what must become of them."""

    name: str
    study_uid: str
    files: tuple[Path, ...]
    raw: bool = False


def _phantom(slices: int, *, study_uid: str | None = None) -> list[Dataset]:
    phantom = make_ct_phantom(
        slices=slices, size=64, pixel_spacing=5.5, study_uid=study_uid or generate_uid()
    )
    return list(phantom.datasets)


def _save(folder: Path, datasets: list[Dataset]) -> tuple[Path, ...]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, ds in enumerate(datasets):
        path = folder / f"{i:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return tuple(paths)


def _file_meta(sop_class: str, sop_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return meta


def _patient_and_study(ds: Dataset, like: Dataset, modality: str) -> None:
    for keyword in (
        "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
        "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
    ):  # fmt: skip
        if keyword in like:
            setattr(ds, keyword, getattr(like, keyword))
    ds.Modality = modality
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 77
    ds.InstanceNumber = 1
    ds.Manufacturer = "pacs-annotator tests"


def truncated(folder: Path) -> BadInput:
    """A 6-slice series whose last file was cut in the middle of its pixel data."""
    datasets = _phantom(6)
    paths = _save(folder, datasets)
    data = paths[-1].read_bytes()
    paths[-1].write_bytes(data[: len(data) - len(data) // 3])
    return BadInput("truncated file", str(datasets[0].StudyInstanceUID), paths, raw=True)


def non_dicom(folder: Path) -> BadInput:
    """A valid file meta header followed by bytes that are no DICOM dataset at all."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "garbage.dcm"
    ds = Dataset()
    ds.file_meta = _file_meta(CTImageStorage, generate_uid())
    ds.save_as(path, enforce_file_format=True)  # preamble + meta, empty dataset
    rng = np.random.default_rng(5)
    with path.open("ab") as fh:
        fh.write(b"%PDF-1.4 this is not DICOM\n" + rng.integers(0, 256, 4096, np.uint8).tobytes())
    return BadInput("non-DICOM bytes", "", (path,), raw=True)


def dicomdir(folder: Path) -> BadInput:
    """A DICOMDIR (Media Storage Directory) indexing a 2-slice series."""
    datasets = _phantom(2)
    fileset = FileSet()
    for ds in datasets:
        fileset.add(ds)
    fileset.write(folder)
    return BadInput("DICOMDIR", str(datasets[0].StudyInstanceUID), (folder / "DICOMDIR",))


def missing_pixel_data(folder: Path) -> BadInput:
    datasets = _phantom(4)
    for ds in datasets:
        del ds.PixelData
    return BadInput(
        "missing pixel data", str(datasets[0].StudyInstanceUID), _save(folder, datasets)
    )


def structured_report(folder: Path) -> BadInput:
    """A Basic Text SR: no images, nothing to segment."""
    like = _phantom(1)[0]
    ds = Dataset()
    _patient_and_study(ds, like, "SR")
    ds.SOPClassUID = BasicTextSRStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta = _file_meta(BasicTextSRStorage, ds.SOPInstanceUID)
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    concept = Dataset()
    concept.CodeValue, concept.CodingSchemeDesignator = "11528-7", "LN"
    concept.CodeMeaning = "Radiology Report"
    ds.ConceptNameCodeSequence = [concept]
    ds.ContentDate, ds.ContentTime = "20260101", "120000"
    return BadInput("SR (no images)", str(ds.StudyInstanceUID), _save(folder, [ds]))


def encapsulated_pdf(folder: Path) -> BadInput:
    like = _phantom(1)[0]
    ds = Dataset()
    _patient_and_study(ds, like, "DOC")
    ds.SOPClassUID = EncapsulatedPDFStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta = _file_meta(EncapsulatedPDFStorage, ds.SOPInstanceUID)
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.DocumentTitle = "scanned request"
    ds.BurnedInAnnotation = "YES"
    ds.ConceptNameCodeSequence = []
    ds.ContentDate, ds.ContentTime = "20260101", "120000"
    ds.AcquisitionDateTime = "20260101120000"
    pdf = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
    ds.EncapsulatedDocument = pdf + b"\0" * (len(pdf) % 2)
    return BadInput("encapsulated PDF", str(ds.StudyInstanceUID), _save(folder, [ds]))


def mixed_orientations(folder: Path) -> BadInput:
    """One series: half its slices axial, half coronal."""
    study_uid, series_uid = generate_uid(), generate_uid()
    axial = make_ct_phantom(slices=3, size=64, pixel_spacing=5.5, study_uid=study_uid,
                            series_uid=series_uid)  # fmt: skip
    coronal = make_ct_phantom(slices=3, size=64, pixel_spacing=5.5, study_uid=study_uid,
                              series_uid=series_uid, orientation="coronal", seed=1)  # fmt: skip
    datasets = [*axial.datasets, *coronal.datasets]
    for i, ds in enumerate(datasets):
        ds.InstanceNumber = i + 1
        ds.SOPInstanceUID = generate_uid()  # the phantom derives them from the slice index
    return BadInput("mixed orientations", study_uid, _save(folder, datasets))


def one_slice(folder: Path) -> BadInput:
    datasets = _phantom(1)
    return BadInput("1-slice series", str(datasets[0].StudyInstanceUID), _save(folder, datasets))


def enhanced_multiframe_ct(folder: Path) -> BadInput:
    """A multi-frame CT (Legacy Converted Enhanced CT, built by highdicom from 4 slices)."""
    datasets = _phantom(4)
    for ds in datasets:
        ds.PixelData = ds.PixelData  # materialise before copying
    frames = highdicom.legacy.LegacyConvertedEnhancedCTImage(
        legacy_datasets=[copy.deepcopy(ds) for ds in datasets],
        series_instance_uid=generate_uid(),
        series_number=50,
        sop_instance_uid=generate_uid(),
        instance_number=1,
    )
    return BadInput(
        "enhanced multi-frame CT", str(datasets[0].StudyInstanceUID), _save(folder, [frames])
    )


def gap_too_large(folder: Path) -> BadInput:
    """Two neighbouring slices missing: a gap of three slice spacings (not interpolated)."""
    datasets = _phantom(8)
    del datasets[3:5]
    return BadInput("gap too large", str(datasets[0].StudyInstanceUID), _save(folder, datasets))


def repeated_positions(folder: Path) -> BadInput:
    """Every position twice, and nothing (acquisition, phase, time) that tells them apart."""
    datasets = _phantom(4)
    again = copy.deepcopy(datasets)
    for ds in again:
        ds.SOPInstanceUID = generate_uid()
    return BadInput(
        "repeated positions", str(datasets[0].StudyInstanceUID), _save(folder, datasets + again)
    )


BUILDERS = (
    truncated,
    non_dicom,
    dicomdir,
    missing_pixel_data,
    structured_report,
    encapsulated_pdf,
    mixed_orientations,
    one_slice,
    enhanced_multiframe_ct,
    gap_too_large,
    repeated_positions,
)


def build_corpus(root: Path) -> list[BadInput]:
    return [build(root / build.__name__) for build in BUILDERS]
