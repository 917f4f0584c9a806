"""Run dicom3tools' ``dciodvfy`` on a written file and collect its errors."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

DCIODVFY = "/usr/bin/dciodvfy"


def dciodvfy_path() -> str:
    """The validator's path, skipping the calling test when it is not installed."""
    found = shutil.which("dciodvfy") or (DCIODVFY if Path(DCIODVFY).exists() else None)
    if found is None:
        pytest.skip("dciodvfy is not installed (Debian package dicom3tools)")
    return found


def dciodvfy_errors(path: Path) -> list[str]:
    """The "Error" lines dciodvfy prints for ``path`` (warnings are ignored).

    The file must exist: given no file, dciodvfy reads stdin and reports nonsense.
    """
    if not path.is_file():
        raise FileNotFoundError(f"cannot validate {path}: no such file")
    completed = subprocess.run(
        [dciodvfy_path(), str(path)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    lines = (completed.stdout + completed.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]
