from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
import pytest

from pipelines.outputs import OutputOptions
from tests.support.jobs import create_job
from tests.support.phantom import make_ct_phantom
from worker.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, main
from worker.config import load_settings
from worker.jobs.store import JobStore


def test_invalid_config_exits_2_naming_the_setting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("scp:\n  port: 0\n")
    assert main(["jobs", "--config", str(config)]) == EXIT_USAGE
    assert "scp.port" in capsys.readouterr().err


def test_run_writes_seg_for_a_local_series(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    series = tmp_path / "series"
    series.mkdir()
    for i, ds in enumerate(make_ct_phantom(slices=12, size=64, pixel_spacing=5.5).datasets):
        ds.save_as(series / f"{i}.dcm", enforce_file_format=True)
    out = tmp_path / "out"
    assert main(["run", str(series), "--out", str(out), "--pipeline", "ct-basic"]) == EXIT_OK
    written = [pydicom.dcmread(p) for p in out.glob("*.dcm")]
    assert "SEG" in {ds.Modality for ds in written}
    assert "ct-basic done" in capsys.readouterr().out


def _series(tmp_path: Path) -> Path:
    series = tmp_path / "series"
    series.mkdir()
    for i, ds in enumerate(make_ct_phantom(slices=12, size=64, pixel_spacing=5.5).datasets):
        ds.save_as(series / f"{i}.dcm", enforce_file_format=True)
    return series


def test_run_writes_the_outputs_asked_for(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    series = _series(tmp_path)
    out = tmp_path / "out"
    args = ["run", str(series), "--out", str(out), "--pipeline", "ct-basic"]
    assert main([*args, "--outputs", "rtstruct, kos"]) == EXIT_OK
    assert sorted(pydicom.dcmread(p).Modality for p in out.glob("*.dcm")) == ["KO", "RTSTRUCT"]
    assert main([*args, "--outputs", "rtstruct,overlay"]) == EXIT_USAGE
    assert "--outputs: unknown output 'overlay'" in capsys.readouterr().err


def test_run_writes_a_gsps_and_captures_with_the_sc_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipelines import runner

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PACS_ANNOTATOR_DELIVERY__OUTPUTS_OPTIONS__SC_EVERY_SLICE", "true")
    options: list[object] = []
    real = runner.annotate_study

    def spy(*args: object, **kwargs: Any) -> Any:
        options.append(kwargs["options"])
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(runner, "annotate_study", spy)
    series = _series(tmp_path)
    out = tmp_path / "out"
    args = ["run", str(series), "--out", str(out), "--pipeline", "ct-basic"]
    assert main([*args, "--outputs", "gsps,sc"]) == EXIT_OK
    assert options == [OutputOptions(sc_every_slice=True)]
    modalities = [pydicom.dcmread(p).Modality for p in out.glob("*.dcm")]
    assert modalities.count("PR") == 1 and modalities.count("OT") == 12  # one per slice


def test_run_reports_failure_with_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    series = tmp_path / "series"
    series.mkdir()
    datasets = make_ct_phantom(slices=12, size=64, pixel_spacing=5.5).datasets
    datasets[3].Rows = 32  # a slice of another size: no volume can be formed
    for i, ds in enumerate(datasets):
        ds.save_as(series / f"{i}.dcm", enforce_file_format=True)
    assert main(["run", str(series), "--out", str(tmp_path / "out")]) == EXIT_FAILED
    assert "failed" in capsys.readouterr().out


def test_run_rejects_unknown_pipeline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(tmp_path), "--out", str(tmp_path), "--pipeline", "nope"]) == EXIT_USAGE
    assert "unknown pipeline 'nope'" in capsys.readouterr().err


def test_jobs_lists_nothing_on_a_fresh_install(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["jobs", "--json"]) == EXIT_OK
    assert capsys.readouterr().out.strip() == "[]"
    assert main(["jobs", "--state", "bogus"]) == EXIT_USAGE


def test_scp_and_worker_refuse_without_broker(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["scp"]) == EXIT_USAGE
    assert "broker_url is empty" in capsys.readouterr().err
    assert main(["worker"]) == EXIT_USAGE


def test_jobs_table_shows_control_characters_of_received_values_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An AccessionNumber with a newline or an ANSI escape cannot drive the admin's terminal."""
    monkeypatch.chdir(tmp_path)
    store = JobStore(load_settings(None).effective_database_url)
    create_job(store, "job-1", accession_number="A\x1b[2J\nB")
    store.mark_failed("job-1", "bad value 'X\x1b]0;owned\x07'\nforged line")
    store.close()
    assert main(["jobs"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "A\\x1b[2J\\nB" in out and "\\nforged line" in out
    assert len(out.splitlines()) == 3  # header, the job, its error
