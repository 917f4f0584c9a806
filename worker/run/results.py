"""A job's results folder (``data_dir/results/<job id>``): outputs kept before delivery.

The outputs are written and fsynced before delivery, so a delivery retry sends the same
instances without computing them again. The manifest is written last: a folder without it
is an interrupted attempt and is computed again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset

from pipelines.runner import SeriesOutcome, StudyResult

MANIFEST = "manifest.json"


def write_atomic(path: Path, write: Callable[[Path], object], *, fsync: bool = True) -> None:
    """``write`` a temporary file beside ``path``, fsync it, and rename it into place.

    A reader sees the old file or the whole new one, never a part.
    """
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    if fsync:
        with tmp.open("rb+") as fh:
            os.fsync(fh.fileno())
    tmp.replace(path)


def outcome_record(outcome: SeriesOutcome) -> dict[str, Any]:
    """One series outcome as the job row and the manifest keep it."""
    return {
        "series_uid": outcome.series_uid,
        "modality": outcome.modality,
        "pipeline": outcome.pipeline,
        "status": outcome.status,
        "reason": outcome.reason,
        "outputs": [ds.SOPInstanceUID for ds in outcome.outputs],
    }


def save_results(folder: Path, result: StudyResult) -> list[dict[str, Any]]:
    """Keep the outputs and their manifest on disk; returns the outcome records."""
    folder.mkdir(parents=True, exist_ok=True)
    for ds in result.outputs:
        save = partial(ds.save_as, enforce_file_format=True)
        write_atomic(folder / f"{ds.SOPInstanceUID}.dcm", save)
    outcomes = [outcome_record(o) for o in result.outcomes]
    manifest = {"outputs": [ds.SOPInstanceUID for ds in result.outputs], "outcomes": outcomes}
    text = json.dumps(manifest, indent=1)
    write_atomic(folder / MANIFEST, lambda tmp: tmp.write_text(text))
    return outcomes


def load_results(folder: Path) -> tuple[list[Dataset], list[dict[str, Any]]] | None:
    """The outputs and outcomes of an earlier complete attempt, None if there is none."""
    manifest_path = folder / MANIFEST
    if not manifest_path.exists():
        return None
    manifest = json.loads(manifest_path.read_text())
    outputs: list[Dataset] = [pydicom.dcmread(folder / f"{uid}.dcm") for uid in manifest["outputs"]]
    outcomes: list[dict[str, Any]] = manifest["outcomes"]
    return outputs, outcomes
