"""The job preview from the spool alone: which series, which slices, in what order.

With results (SEG overlays, circled detections) it is checked through the API in
test_api.py; here there are none, so only the choice and the order of slices show.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image
from pydicom.uid import generate_uid

from tests.support.phantom import make_ct_phantom
from worker.monitor.preview import TILE, render_preview


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
