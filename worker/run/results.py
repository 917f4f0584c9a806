"""A job's results folder (``data_dir/results/<job id>``): outputs kept before delivery.

The outputs are written and fsynced before delivery, so a delivery retry sends the same
instances without computing them again. The manifest is written last: a folder without it
is an interrupted attempt and is computed again. It records the kind of every output
(seg, rtstruct, sr, kos ...: what delivery filters each destination's share by) and the
kinds the attempt was asked for, so results built before a destination asked for more
are built again.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import pydicom
from pydicom.dataset import Dataset
from pydicom.filewriter import correct_ambiguous_vr

from pipelines.output_kinds import DEFAULT_OUTPUTS, output_kind
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


def encode(ds: Dataset) -> bytes:
    """``ds`` as a DICOM file, its ambiguous VRs resolved in one pass over the tree.

    Before writing a dataset whose encoding differs from the one it was read with (every
    dataset built in memory), pydicom resolves the ambiguous VRs (US or SS, OB or OW) of its
    whole subtree, and it does so again for each item of each sequence: a SEG's per-frame
    items are walked once per level above them (about half of writing a 300-slice SEG).
    Resolving them once for the whole tree, then stating the encoding it is written in as
    each dataset's original one (``Dataset.set_original_encoding``, the option pydicom
    offers for optimised writing), writes the same bytes without the repeats.
    ``tests/unit/worker/run/test_results.py`` checks both.
    """
    syntax = ds.file_meta.TransferSyntaxUID
    correct_ambiguous_vr(ds, syntax.is_little_endian)
    for item in _datasets(ds):
        item.set_original_encoding(
            syntax.is_implicit_VR, syntax.is_little_endian, item._character_set
        )
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _write_bytes(blob: bytes, path: Path) -> None:
    path.write_bytes(blob)


def _datasets(ds: Dataset) -> Iterator[Dataset]:
    """``ds`` and every item of its sequences, depth first.

    ``Dataset.elements`` leaves values not yet decoded as they are (an RTSTRUCT's Contour
    Data is handed over encoded, ``pipelines/rtstruct.py``): only sequences are decoded.
    """
    yield ds
    for elem in ds.elements():
        if elem.VR == "SQ":
            for item in ds[elem.tag].value:
                yield from _datasets(item)


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


class SavedResults(NamedTuple):
    """A complete earlier attempt: outputs with their kinds, outcomes, kinds asked for."""

    outputs: list[Dataset]
    outcomes: list[dict[str, Any]]
    kinds: list[str]
    built: tuple[str, ...]


def save_results(folder: Path, result: StudyResult) -> list[dict[str, Any]]:
    """Keep the outputs and their manifest on disk; returns the outcome records."""
    folder.mkdir(parents=True, exist_ok=True)
    for ds in result.outputs:
        write_atomic(folder / f"{ds.SOPInstanceUID}.dcm", partial(_write_bytes, encode(ds)))
    outcomes = [outcome_record(o) for o in result.outcomes]
    manifest = {
        "outputs": [ds.SOPInstanceUID for ds in result.outputs],
        "kinds": {ds.SOPInstanceUID: output_kind(ds) for ds in result.outputs},
        "built": list(result.kinds),
        "outcomes": outcomes,
    }
    text = json.dumps(manifest, indent=1)
    write_atomic(folder / MANIFEST, lambda tmp: tmp.write_text(text))
    return outcomes


def load_results(folder: Path) -> SavedResults | None:
    """The outputs and outcomes of an earlier complete attempt, None if there is none.

    A manifest written before kinds were recorded gets them from the SOP classes, and
    counts as built for the SEG and SR (all that was written then).
    """
    manifest_path = folder / MANIFEST
    if not manifest_path.exists():
        return None
    manifest = json.loads(manifest_path.read_text())
    outputs: list[Dataset] = [pydicom.dcmread(folder / f"{uid}.dcm") for uid in manifest["outputs"]]
    recorded: dict[str, str] = manifest.get("kinds", {})
    kinds = [recorded.get(str(ds.SOPInstanceUID)) or output_kind(ds) for ds in outputs]
    built = tuple(manifest.get("built", DEFAULT_OUTPUTS))
    return SavedResults(outputs, manifest["outcomes"], kinds, built)
