"""Fixtures shared by all tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
#: ../shared/data, or PACS_ANNOTATOR_TEST_DATA (a checkout elsewhere, e.g. a git worktree).
SHARED_DATA = Path(
    os.environ.get("PACS_ANNOTATOR_TEST_DATA") or REPO_ROOT.parent / "shared" / "data"
)


def shared_data_path(*parts: str) -> Path:
    """A path inside ../shared/data, skipping the test with a reason when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(
            f"real DICOM data not available: {path} is absent (see ../shared/data/README.md)"
        )
    return path


@pytest.fixture
def ct_series_dir() -> Path:
    """The real 41-slice contrast CT (TCIA CRLM-CT-1004) from ../shared/data."""
    return shared_data_path("ct-abdomen-crlm1004")
