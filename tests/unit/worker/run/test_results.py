"""A job's results folder: whole files or none, and an attempt without a manifest is none."""

from __future__ import annotations

import copy
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom import filewriter
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import UID, ExplicitVRLittleEndian, SecondaryCaptureImageStorage

from pipelines.findings import Algorithm, Findings, Segment
from pipelines.runner import SeriesOutcome, StudyResult
from pipelines.seg import build_seg
from pipelines.volume import load_series
from tests.support.phantom import make_ct_phantom
from worker.run.results import MANIFEST, encode, load_results, save_results, write_atomic


def test_write_atomic_replaces_the_file_whole_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    target.write_text("old")
    write_atomic(target, lambda tmp: tmp.write_text("new"))
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    target.write_text("old")

    def fail(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, fail)
    assert target.read_text() == "old"


def test_a_folder_without_its_manifest_is_an_interrupted_attempt(tmp_path: Path) -> None:
    assert load_results(tmp_path) is None
    (tmp_path / MANIFEST).write_text('{"outputs": [], "outcomes": [{"status": "skipped"}]}')
    # A manifest from before kinds were recorded: the SEG and SR were all it built.
    assert load_results(tmp_path) == ([], [{"status": "skipped"}], [], ("seg", "sr"))


def test_the_manifest_records_each_output_kind_and_what_was_asked_for(tmp_path: Path) -> None:
    seg = _segmentation()
    outcome = SeriesOutcome("2.25.1", "CT", "box", "done", None, (seg,))
    save_results(tmp_path, StudyResult(outcomes=(outcome,), kinds=("seg", "rtstruct")))
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert manifest["kinds"] == {seg.SOPInstanceUID: "seg"}
    assert manifest["built"] == ["seg", "rtstruct"]
    saved = load_results(tmp_path)
    assert saved is not None
    assert [ds.SOPInstanceUID for ds in saved.outputs] == [seg.SOPInstanceUID]
    assert (saved.kinds, saved.built) == (["seg"], ("seg", "rtstruct"))
    # The recorded kind is what counts (delivery filters by it), not a guess from the file.
    manifest["kinds"] = {seg.SOPInstanceUID: "rtstruct"}
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    assert load_results(tmp_path).kinds == ["rtstruct"]  # type: ignore[union-attr]


def _segmentation() -> Dataset:
    """A small real SEG (highdicom, through build_seg): hundreds of nested items."""
    volume = load_series(make_ct_phantom(slices=12, size=64).datasets)
    mask = np.zeros(volume.voxels.shape, dtype=bool)
    mask[2:9, 10:40, 12:30] = True
    findings = Findings(
        Algorithm("box", "1.0"),
        segments=(Segment("Box", mask, codes.SCT.AnatomicalStructure, codes.SCT.Lung),),
    )
    return build_seg(
        volume,
        findings,
        series_uid="2.25.51",
        sop_uid="2.25.52",
        series_number=1001,
        software_version="1",
    )


def _with_ambiguous_vr_in_an_item() -> Dataset:
    """Signed pixels, and an item value whose VR (US or SS) depends on them."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = UID("2.25.53")
    ds.SOPClassUID, ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPClassUID, "2.25.53"
    ds.PixelRepresentation = 1
    mapping = Dataset()
    mapping.RealWorldValueFirstValueMapped = -5
    ds.RealWorldValueMappingSequence = [mapping]
    return ds


@pytest.mark.parametrize("build", [_segmentation, _with_ambiguous_vr_in_an_item])
def test_encode_writes_what_pydicom_writes(build: Callable[[], Dataset]) -> None:
    ds = build()
    expected = io.BytesIO()
    copy.deepcopy(ds).save_as(expected, enforce_file_format=True)
    blob = encode(ds)
    assert blob == expected.getvalue()
    back = pydicom.dcmread(io.BytesIO(blob))
    if "RealWorldValueMappingSequence" in back:
        item = back.RealWorldValueMappingSequence[0]
        assert item["RealWorldValueFirstValueMapped"].VR == "SS"
        assert item.RealWorldValueFirstValueMapped == -5


def test_saving_resolves_ambiguous_vrs_once_not_per_item(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pins the pydicom behaviour encode relies on: if this fails, pydicom changed.

    pydicom's writer calls ``correct_ambiguous_vr`` (over the whole subtree) for each
    dataset not marked as already in the encoding being written; encode marks them all.
    """
    seg = _segmentation()
    plain = io.BytesIO()
    copy.deepcopy(seg).save_as(plain, enforce_file_format=True)
    calls: list[Dataset] = []
    original = filewriter.correct_ambiguous_vr

    def counting(ds: Dataset, *args: Any, **kwargs: Any) -> Dataset:
        # The writer's own calls; not the recursion inside one (it passes the ancestors),
        # nor the file meta information (a few elements).
        if len(args) == 1 and not kwargs and not isinstance(ds, FileMetaDataset):
            calls.append(ds)
        return original(ds, *args, **kwargs)

    monkeypatch.setattr(filewriter, "correct_ambiguous_vr", counting)
    outcome = SeriesOutcome("2.25.1", "CT", "box", "done", None, (seg,))
    save_results(tmp_path, StudyResult(outcomes=(outcome,)))
    assert calls == []
    assert (tmp_path / f"{seg.SOPInstanceUID}.dcm").read_bytes() == plain.getvalue()
    # The same dataset written plainly is corrected item by item (what save no longer does).
    seg_again = _segmentation()
    seg_again.save_as(io.BytesIO(), enforce_file_format=True)
    assert len(calls) > int(seg_again.NumberOfFrames)
