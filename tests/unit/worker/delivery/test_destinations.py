"""Which destinations a job's results go to: rules, the source's own, delivery.to, fallbacks."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.config import load_settings
from worker.delivery.destinations import (
    NoDestinationError,
    choose_destinations,
    needed_outputs,
    plan_deliveries,
)


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


def test_what_each_destination_receives_and_what_the_job_builds(tmp_path: Path) -> None:
    dests = {
        "a": {"ae_title": "A", "host": "h", "port": 1, "outputs": ["kos", "rtstruct"]},
        "b": {"ae_title": "B", "host": "h", "port": 2, "default": True},
        "web": {"type": "dicomweb", "url": "https://archive.example"},
    }
    rules = [{"to": ["web"], "modality": "MR", "outputs": ["sr"]}]
    settings = load_settings(None, data_dir=tmp_path, destinations=dests, delivery={"rules": rules})
    assert [(d.name, d.outputs) for d in plan_deliveries(settings, "A")] == [
        ("a", ("rtstruct", "kos"))
    ]
    assert [(d.name, d.outputs) for d in plan_deliveries(settings, "X")] == [("b", ("seg", "sr"))]
    assert needed_outputs(settings, "A") == ("rtstruct", "kos")
    assert needed_outputs(settings, "X", modalities=["MR"]) == ("sr",)  # the rule's own
    both = load_settings(
        None,
        data_dir=tmp_path,
        destinations=dests,
        delivery={"to": ["a", "b"], "outputs": ["seg"]},
    )
    assert needed_outputs(both, "A") == ("seg", "rtstruct", "kos")
    # A study pulled from a DICOMweb source goes to its deliver_to, each with its own kinds.
    pulled = load_settings(
        None,
        data_dir=tmp_path,
        destinations=dests,
        sources={"archive": {"url": "https://archive.example", "deliver_to": ["a", "web"]}},
    )
    assert [(d.name, d.outputs) for d in plan_deliveries(pulled, "archive")] == [
        ("a", ("rtstruct", "kos")),
        ("web", ("seg", "sr")),
    ]
    # Without a destination the job builds the default; its delivery fails with the reason.
    lonely = load_settings(None, data_dir=tmp_path, destinations={"a": dests["a"]})
    assert needed_outputs(lonely, "X") == ("seg", "sr")
