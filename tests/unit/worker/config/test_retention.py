"""Retention settings: defaults per the issue, and disk pressure above the SCP's refusal."""

from __future__ import annotations

import pytest

from worker.config import GIB, SettingsError, load_settings


def test_defaults_keep_delivered_images_hours_and_records_long() -> None:
    r = load_settings(None).retention
    assert r.delivered_inputs_hours == 6 and r.delivered_results_hours == 168
    assert r.failed_hours > r.delivered_results_hours and r.failed_grace_hours == 72
    assert r.job_records_days == 400
    assert r.effective_pressure_free_bytes(1 * GIB) == 2 * GIB


def test_disk_pressure_must_start_above_the_scp_refusal() -> None:
    with pytest.raises(SettingsError, match=r"retention\.pressure_free_bytes must exceed"):
        load_settings(
            None, retention={"pressure_free_bytes": GIB}, scp={"min_free_disk_bytes": GIB}
        )
    off = load_settings(None, retention={"pressure_free_bytes": 0})
    assert off.retention.effective_pressure_free_bytes(GIB) == 0


def test_a_negative_period_is_refused_with_its_name() -> None:
    with pytest.raises(SettingsError, match=r"retention\.failed_hours"):
        load_settings(None, retention={"failed_hours": -1})
