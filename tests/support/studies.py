"""Copies of a study under fresh UIDs, for tests and benchmarks that send the same images twice."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid


def write_copy(sources: Sequence[pydicom.Dataset], folder: Path) -> tuple[str, list[Path]]:
    """The series as a new study (fresh Study/Series/SOP UIDs); returns its UID and the files.

    Every copy is a new study to the receiver, so it becomes a new job with new results.
    """
    folder.mkdir(parents=True)
    study, series = generate_uid(), generate_uid()
    paths = []
    for i, ds in enumerate(sources):
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = folder / f"{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return study, paths
