"""Fixtures shared by all tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.nnunet import nnunet_models  # noqa: F401  (session fixture, built once)

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


@pytest.fixture(autouse=True)
def _keep_umask() -> Iterator[None]:
    """Tests that call ``worker.cli.main`` set the service's umask 077 in this process;
    restore the one pytest started with, so no test depends on another's order."""
    umask = os.umask(0o022)
    os.umask(umask)
    yield
    os.umask(umask)
