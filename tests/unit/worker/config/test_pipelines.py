"""Settings of the pipelines: routing rules, label codes and MONAI bundles, checked at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipelines.routing import DEFAULT_RULES, RoutingRule
from tests.support.jobs import settings_only_bundle
from worker.config import (
    DEFAULT_QUEUE,
    LabelCodeSettings,
    RoutingRuleSettings,
    SettingsError,
    load_settings,
)


def refusal(tmp_path: Path, **settings: Any) -> str:
    with pytest.raises(SettingsError) as info:
        load_settings(None, data_dir=tmp_path, **settings)
    return str(info.value)


def test_without_routing_the_built_in_rules_apply(tmp_path: Path) -> None:
    assert load_settings(None, data_dir=tmp_path).routing_rules == DEFAULT_RULES


def test_a_routing_rule_becomes_the_runners_rule_unchanged() -> None:
    rule = RoutingRuleSettings(
        pipelines=("ct-basic",), modality="CT", series_description="*lung*", body_part="CHEST"
    )
    assert rule.to_rule() == RoutingRule(
        pipelines=("ct-basic",), modality="CT", series_description="*lung*", body_part="CHEST"
    )


def test_a_routing_rule_names_at_least_one_pipeline(tmp_path: Path) -> None:
    assert "  routing.0.pipelines: " in refusal(tmp_path, routing=[{"modality": "CT"}])
    assert "  routing.0.pipelines: " in refusal(tmp_path, routing=[{"pipelines": []}])


def test_a_label_is_an_anatomical_structure_unless_told_otherwise() -> None:
    label = LabelCodeSettings(code="39607008", meaning="Lung", color="#00ff00")
    assert (label.scheme, label.color) == ("SCT", "#00ff00")
    assert (label.category_code, label.category_scheme, label.category_meaning) == (
        "91723000",
        "SCT",
        "Anatomical Structure",
    )


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return settings_only_bundle(tmp_path / "bundle")


def test_a_bundle_pipeline_gets_an_absolute_path_and_its_defaults(
    tmp_path: Path, bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(None, data_dir=tmp_path, pipelines={"seg": {"bundle": "bundle"}})
    seg = settings.pipelines["seg"]
    assert seg.bundle == bundle.resolve() and seg.bundle.is_absolute()
    assert (seg.config, seg.kind, seg.modalities, seg.min_score, seg.amp) == (
        "inference",
        "auto",
        ("CT",),
        0.5,
        True,
    )
    assert (seg.queue, seg.oom_fallback_queue, seg.time_limit_seconds) == (
        DEFAULT_QUEUE,
        None,
        None,
    )
    monkeypatch.setenv("HOME", str(tmp_path))
    home = load_settings(None, data_dir=tmp_path, pipelines={"seg": {"bundle": "~/bundle"}})
    assert home.pipelines["seg"].bundle == bundle.resolve()


def test_bundle_labels_take_codes_and_colours(tmp_path: Path, bundle: Path) -> None:
    labels = {"1": {"code": "39607008", "meaning": "Lung", "color": "#00FF00"}}
    settings = load_settings(
        None, data_dir=tmp_path, pipelines={"seg": {"bundle": str(bundle), "labels": labels}}
    )
    assert settings.pipelines["seg"].labels["1"].meaning == "Lung"


def test_a_bundle_without_its_files_is_refused_at_start_up(tmp_path: Path, bundle: Path) -> None:
    absent = refusal(tmp_path, pipelines={"seg": {"bundle": str(tmp_path / "nope")}})
    assert "  pipelines.seg: " in absent
    assert f"bundle directory {(tmp_path / 'nope').resolve()} does not exist" in absent
    other_config = refusal(tmp_path, pipelines={"seg": {"bundle": str(bundle), "config": "train"}})
    assert "no configs/train.json or .yaml" in other_config
    (bundle / "models" / "model.pt").unlink()
    assert "no weights (models/model.pt or models/model.ts)" in refusal(
        tmp_path, pipelines={"seg": {"bundle": str(bundle)}}
    )


@pytest.mark.parametrize(
    ("values", "named", "message"),
    [
        ({"queue": "gpu queue"}, "pipelines.seg.queue", "a queue name is 1-64"),
        ({"oom_fallback_queue": "-cpu"}, "pipelines.seg.oom_fallback_queue", "'-cpu'"),
        ({"min_score": 1.5}, "pipelines.seg.min_score", "less than or equal to 1"),
        ({"modalities": []}, "pipelines.seg.modalities", "at least 1"),
        ({"time_limit_seconds": 0}, "pipelines.seg.time_limit_seconds", "greater than 0"),
        ({"kind": "regression"}, "pipelines.seg.kind", "'segmentation'"),
        (
            {"labels": {"1": {"code": "1", "meaning": "X", "color": "green"}}},
            "pipelines.seg.labels.1.color",
            "colour 'green' is not of the form #rrggbb",
        ),
        (
            {"labels": {"1": {"code": "1", "meaning": ""}}},
            "pipelines.seg.labels.1.meaning",
            "at least 1 character",
        ),
    ],
)
def test_bad_bundle_settings_are_refused_naming_the_setting(
    tmp_path: Path, bundle: Path, values: dict[str, Any], named: str, message: str
) -> None:
    text = refusal(tmp_path, pipelines={"seg": {"bundle": str(bundle), **values}})
    assert f"  {named}: " in text and message in text


def test_a_bundle_may_not_take_a_built_in_pipelines_name(tmp_path: Path, bundle: Path) -> None:
    text = refusal(tmp_path, pipelines={"ct-basic": {"bundle": str(bundle)}})
    assert "pipelines.ct-basic: the name of a built-in pipeline" in text
