"""The job preview from the spool alone: which series, which slices, in what order.

With results (SEG overlays, circled detections) it is checked through the API in
test_api.py; here there are none, so only the choice and the order of slices show.
"""

from __future__ import annotations

import io
import json
import tracemalloc
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import SegmentationStorage, generate_uid

from tests.support.phantom import make_ct_phantom
from worker.monitor.preview import NOTE, TILE, render_preview


def write_series(folder: Path, slices: int, seed: int, study_uid: str) -> list[Path]:
    folder.mkdir(parents=True)
    phantom = make_ct_phantom(
        slices=slices, size=32, pixel_spacing=10.0, seed=seed, study_uid=study_uid
    )
    paths = []
    for i, ds in enumerate(phantom.datasets):
        path = folder / f"{i:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def size_of(png: bytes | None) -> tuple[int, int]:
    assert png is not None
    return Image.open(io.BytesIO(png)).size


def test_a_study_without_an_image_series_has_no_preview(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not DICOM")
    assert render_preview([notes, tmp_path / "gone.dcm"], tmp_path / "results") is None
    assert render_preview([], tmp_path / "results") is None


def test_the_longest_series_is_shown_over_at_most_four_slices(tmp_path: Path) -> None:
    study = generate_uid()
    long = write_series(tmp_path / "long", slices=12, seed=1, study_uid=study)
    short = write_series(tmp_path / "short", slices=3, seed=2, study_uid=study)
    junk = tmp_path / "notes.txt"
    junk.write_text("not DICOM")  # unreadable files are passed over
    assert size_of(render_preview([*short, junk, *long], tmp_path / "results")) == (4 * TILE, TILE)
    # Three slices give two distinct picks (20-80 % of the range): two tiles.
    assert size_of(render_preview(short, tmp_path / "results")) == (2 * TILE, TILE)


def test_slices_are_ordered_by_position_not_by_file_order(tmp_path: Path) -> None:
    paths = write_series(tmp_path / "series", slices=10, seed=3, study_uid=generate_uid())
    forward = render_preview(paths, tmp_path / "results")
    assert forward is not None
    assert render_preview(list(reversed(paths)), tmp_path / "results") == forward
    assert render_preview(paths[::2] + paths[1::2], tmp_path / "results") == forward


def _orange(png: bytes | None) -> int:
    """Pixels of the note colour: how a skipped instance shows."""
    assert png is not None
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return int(((r > NOTE[0] - 60) & (abs(g - NOTE[1]) < 50) & (b < 40) & (r - g > 50)).sum())


def test_an_instance_over_the_pixel_bound_is_skipped_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = write_series(tmp_path / "series", slices=6, seed=4, study_uid=generate_uid())

    def decoded(_self: Dataset) -> None:
        raise AssertionError("pixel data decoded although the header is over the bound")

    monkeypatch.setattr(Dataset, "pixel_array", property(decoded))
    png = render_preview(paths, tmp_path / "results", max_pixels=32 * 32 - 1)
    assert size_of(png) == (4 * TILE, TILE) and _orange(png) > 0


def test_a_large_image_is_downsampled_before_float_work(tmp_path: Path) -> None:
    phantom = make_ct_phantom(slices=3, size=32, pixel_spacing=10.0, seed=5)
    side = 2048
    paths = []
    rng = np.random.default_rng(5)
    for i, ds in enumerate(phantom.datasets):
        ds.Rows = ds.Columns = side
        ds.PixelData = rng.integers(0, 2000, (side, side), dtype=np.uint16).tobytes()
        paths.append(tmp_path / f"{i}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    raw_bytes = side * side * 2
    tracemalloc.start()
    try:
        png = render_preview(paths, tmp_path / "results")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert size_of(png) == (2 * TILE, TILE)
    # The file's bytes and one decoded copy; float and colour work on <= 512 x 512 only.
    # (Converting the whole image to float64 RGB, as before, peaks above 12x the raw size.)
    assert peak < 4 * raw_bytes, f"peak {peak / 2**20:.0f} MiB for {raw_bytes / 2**20:.0f} MiB"


def test_an_undecodable_instance_gets_a_note_and_the_rest_still_show(tmp_path: Path) -> None:
    paths = write_series(tmp_path / "series", slices=10, seed=6, study_uid=generate_uid())
    for path in paths[1:]:
        ds = pydicom.dcmread(path)
        ds.PixelData = ds.PixelData[:100]  # truncated: pydicom cannot shape it
        ds.save_as(path, enforce_file_format=True)
    png = render_preview(paths, tmp_path / "results")
    assert size_of(png) == (4 * TILE, TILE) and _orange(png) > 0


def test_unreadable_results_leave_the_images_with_a_note(tmp_path: Path) -> None:
    paths = write_series(tmp_path / "series", slices=6, seed=7, study_uid=generate_uid())
    results = tmp_path / "results"
    results.mkdir()
    seg = pydicom.dcmread(paths[0])  # says it is a SEG, but has none of a SEG's content
    seg.SOPClassUID = seg.file_meta.MediaStorageSOPClassUID = SegmentationStorage
    seg.save_as(results / "1.2.3.dcm", enforce_file_format=True)
    (results / "manifest.json").write_text(json.dumps({"outputs": ["1.2.3"]}))
    png = render_preview(paths, results)
    assert size_of(png) == (4 * TILE, TILE) and _orange(png) > 0
