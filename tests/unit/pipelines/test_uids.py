"""Deterministic UIDs are what make a re-run replace, not duplicate, its results."""

from __future__ import annotations

import pytest
from pydicom.uid import UID

from pipelines.uids import derive_uid


def test_same_parts_same_uid() -> None:
    assert derive_uid("study", "series", "ct-basic") == derive_uid("study", "series", "ct-basic")


def test_different_or_regrouped_parts_differ() -> None:
    uids = {
        derive_uid("a", "bc"),
        derive_uid("ab", "c"),
        derive_uid("bc", "a"),
        derive_uid("a", "bc", ""),
    }
    assert len(uids) == 4


def test_uid_is_a_valid_2_25_uid() -> None:
    uid = derive_uid("1.2.3", "x" * 500)
    assert uid.startswith("2.25.")
    assert len(uid) <= 64
    assert UID(uid).is_valid


def test_needs_string_parts() -> None:
    with pytest.raises(ValueError, match="at least one part"):
        derive_uid()
    with pytest.raises(TypeError, match="must be str"):
        derive_uid("a", 3)  # type: ignore[arg-type]
