"""A job's results folder: whole files or none, and an attempt without a manifest is none."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.run.results import MANIFEST, load_results, write_atomic


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
    assert load_results(tmp_path) == ([], [{"status": "skipped"}])
