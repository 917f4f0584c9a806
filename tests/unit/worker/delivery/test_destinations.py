"""Which destinations a job's results go to: rules, the source's own, delivery.to, fallbacks."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.config import load_settings
from worker.delivery.destinations import NoDestinationError, choose_destinations


def test_caller_then_default_then_explicit_list(tmp_path: Path) -> None:
    dests = {
        "a": {"ae_title": "A", "host": "h", "port": 1},
        "b": {"ae_title": "B", "host": "h", "port": 2, "default": True},
    }
    settings = load_settings(None, data_dir=tmp_path, destinations=dests)
    assert [n for n, _ in choose_destinations(settings, "A")] == ["a"]
    assert [n for n, _ in choose_destinations(settings, "X")] == ["b"]
    explicit = load_settings(
        None, data_dir=tmp_path, destinations=dests, delivery={"to": ["a", "b"]}
    )
    assert [n for n, _ in choose_destinations(explicit, "A")] == ["a", "b"]
    none = load_settings(None, data_dir=tmp_path, destinations={"a": dests["a"]})
    with pytest.raises(NoDestinationError):
        choose_destinations(none, "X")
