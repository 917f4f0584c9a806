"""Fixtures for scu_scp tests: a running storescp (helpers in ``tests.support.storescp``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.storescp import StoreSCP, start_storescp


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[StoreSCP]:
    """storescp accepting its default (uncompressed) transfer syntaxes."""
    yield from start_storescp(tmp_path)


@pytest.fixture
def storescp_refusing(tmp_path: Path) -> Iterator[StoreSCP]:
    """storescp that refuses every association."""
    yield from start_storescp(tmp_path, "--refuse")
