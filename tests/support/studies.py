"""Copies of a study under fresh UIDs, for tests and benchmarks that send the same images twice."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

from tests.support.phantom import make_ct_phantom


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


def write_series_study(
    folder: Path, *, series: int, slices: int, size: int = 32, seed: int = 0
) -> tuple[str, list[list[Path]]]:
    """A new CT phantom study of ``series`` series of ``slices`` slices; its UID and the
    files of each series (for senders that use one association per series)."""
    study = generate_uid()
    files: list[list[Path]] = []
    for n in range(series):
        phantom = make_ct_phantom(
            slices=slices,
            size=size,
            pixel_spacing=3.6,
            study_uid=study,
            series_uid=generate_uid(),
            seed=seed + n,
        )
        (folder / f"series{n}").mkdir(parents=True)
        paths = []
        for i, ds in enumerate(phantom.datasets):
            ds.SeriesNumber = n + 1
            path = folder / f"series{n}" / f"ct{i:03d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
        files.append(paths)
    return study, files
