"""Command-line overrides of the worker section, validated like the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.config import SettingsError, load_settings, with_worker_options, worker_hostname


def test_options_override_the_file_and_are_validated(tmp_path: Path) -> None:
    settings = load_settings(None, data_dir=tmp_path, worker={"queues": ["a"]})
    assert with_worker_options(settings, device=None, queues=None) is settings
    changed = with_worker_options(settings, device="cuda:1", queues=" gpu, ,cpu ")
    assert changed.worker.device == "cuda:1" and changed.worker.queues == ("gpu", "cpu")
    assert settings.worker.queues == ("a",)  # the original is unchanged (frozen)
    with pytest.raises(SettingsError, match=r"invalid worker option: --device: .*cuda:N"):
        with_worker_options(settings, device="tpu", queues=None)


def test_one_worker_per_gpu_gets_its_own_node_name() -> None:
    assert worker_hostname("cpu") == "pacs-annotator"
    assert worker_hostname("cuda:0") == "pacs-annotator-cuda0"
