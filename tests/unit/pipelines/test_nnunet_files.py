"""nnU-Net model folders read without nnunetv2: label names, the shipped TotalSegmentator map."""

from __future__ import annotations

import pytest

from pipelines.nnunet_files import (
    NnunetModelError,
    label_names,
    structure_code,
    totalsegmentator_map,
)


def test_plain_labels_name_their_values() -> None:
    dataset = {"labels": {"background": 0, "liver": 1, "tumour": 2, "ignore": 3}}
    assert label_names(dataset) == {1: "liver", 2: "tumour"}


def test_region_based_labels_take_the_values_of_regions_class_order() -> None:
    """BraTS-style: overlapping regions, each written as its regions_class_order value."""
    dataset = {
        "labels": {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing": 3},
        "regions_class_order": [1, 2, 3],
    }
    assert label_names(dataset) == {1: "whole tumor", 2: "tumor core", 3: "enhancing"}
    with pytest.raises(NnunetModelError, match="regions_class_order"):
        label_names({"labels": dataset["labels"]})


def test_dataset_json_without_labels_is_refused() -> None:
    with pytest.raises(NnunetModelError, match="no 'labels'"):
        label_names({"channel_names": {"0": "CT"}})


def test_the_shipped_map_codes_every_class_of_the_total_task() -> None:
    """Each of TotalSegmentator's 117 total classes has a SNOMED CT code and a colour."""
    datasets = totalsegmentator_map()["tasks"]["total"]["modes"]["default"]["datasets"]
    names = {name for part in datasets for name in part["labels"].values()}
    assert len(names) == 117
    for name in names:
        code = structure_code(name)
        assert code is not None, name
        assert code.property_type[1] == "SCT" and code.color and code.color.startswith("#")
