"""``pacs-annotator monitor``: the first-login password is shown once, on the terminal only.

uvicorn's server loop is replaced by a recorder; the app, its credentials and files are real.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from worker.config import load_settings
from worker.monitor.auth import hash_secret
from worker.monitor.server import serve


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[uvicorn.Config]:
    configs: list[uvicorn.Config] = []

    def run(self: uvicorn.Server, *_: Any) -> None:
        configs.append(self.config)

    monkeypatch.setattr(uvicorn.Server, "run", run)
    return configs


def test_the_first_start_says_where_the_password_is_and_never_prints_it(
    tmp_path: Path,
    served: list[uvicorn.Config],
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = load_settings(None, data_dir=tmp_path / "data", monitor={"port": 8181})
    caplog.set_level(logging.DEBUG)
    assert serve(settings) == 0
    out = capsys.readouterr().out
    password = (settings.monitor_dir / "admin-password").read_text().strip()
    # Under `up` stdout is the service log: the path is shown, the password is not.
    assert f"monitor first login: user 'admin', password in {settings.monitor_dir}" in out
    assert password not in out
    assert "monitor listening on http://127.0.0.1:8181/" in out
    assert password not in caplog.text
    (config,) = served
    assert (config.host, config.port, config.access_log) == ("127.0.0.1", 8181, False)

    assert serve(settings) == 0  # the next start keeps that password and does not show it
    again = capsys.readouterr().out
    assert "first login" not in again and password not in again
    assert (settings.monitor_dir / "admin-password").read_text().strip() == password


def test_with_a_configured_password_nothing_is_generated_and_the_old_file_goes(
    tmp_path: Path, served: list[uvicorn.Config], capsys: pytest.CaptureFixture[str]
) -> None:
    serve(load_settings(None, data_dir=tmp_path / "data"))  # a first start, without a hash
    capsys.readouterr()
    settings = load_settings(
        None, data_dir=tmp_path / "data", monitor={"password_hash": hash_secret("s3cret")}
    )
    assert (settings.monitor_dir / "admin-password").exists()
    serve(settings)
    assert "first login" not in capsys.readouterr().out
    assert not (settings.monitor_dir / "admin-password").exists()
    assert not (settings.monitor_dir / "admin-password.hash").exists()
    assert len(served) == 2
