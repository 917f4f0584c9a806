from __future__ import annotations

from pathlib import Path

import pytest

from worker.config import SettingsError, load_settings

REPO = Path(__file__).resolve().parents[4]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_example_config_loads_and_documents_every_section() -> None:
    settings = load_settings(REPO / "deploy" / "config.example.yaml")
    assert settings.scp.ae_title == "PACS_ANNOTATOR"
    assert settings.destinations["pacs"].default is True
    assert settings.routing_rules[0].pipelines == ("ct-basic", "ct-lung-nodules")
    text = (REPO / "deploy" / "config.example.yaml").read_text()
    for field in type(settings).model_fields:
        assert f"\n{field}:" in text or text.startswith(f"{field}:"), field


def test_defaults_without_a_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(None)
    assert settings.broker_url == ""
    assert settings.effective_database_url == f"sqlite:///{tmp_path / 'var' / 'jobs.sqlite3'}"
    assert settings.completion.quiet_seconds == 30
    assert settings.completion.release_grace_seconds == 5
    assert settings.completion.quiet_only_aets == ()


def test_environment_overrides_the_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = write(tmp_path, "scp:\n  ae_title: FROMFILE\n  port: 104\n")
    monkeypatch.setenv("PACS_ANNOTATOR_SCP__PORT", "11113")
    monkeypatch.setenv("PACS_ANNOTATOR_BROKER_URL", "redis://127.0.0.1:1/0")
    settings = load_settings(path)
    assert settings.scp.port == 11113
    assert settings.scp.ae_title == "FROMFILE"  # nested sections are merged, not replaced
    assert settings.broker_url == "redis://127.0.0.1:1/0"


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("scp:\n  port: 70000\n", "scp.port"),
        ("scp:\n  ae_title: THIS_AE_TITLE_IS_TOO_LONG\n", "scp.ae_title"),
        ("scp:\n  prot: 104\n", "scp.prot"),
        ("broker_url: amqp://x\n", "broker_url"),
        ("completion:\n  quiet_seconds: 0\n", "completion.quiet_seconds"),
        ("completion:\n  release_grace_seconds: 0\n", "completion.release_grace_seconds"),
        ("completion:\n  quiet_only_aets: [ABCDEFGHIJKLMNOPQ]\n", "completion.quiet_only_aets"),
        ("routing:\n  - modality: CT\n    pipelines: [nope]\n", "unknown pipeline 'nope'"),
        ("delivery:\n  to: [missing]\n", "unknown destination 'missing'"),
        (
            "destinations:\n  a: {ae_title: A, host: h, port: 1, default: true}\n"
            "  b: {ae_title: B, host: h, port: 2, default: true}\n",
            "only one may be default",
        ),
    ],
)
def test_invalid_settings_name_the_setting(tmp_path: Path, text: str, named: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(write(tmp_path, text))
    assert named in str(info.value)


def test_unreadable_or_non_mapping_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot read"):
        load_settings(tmp_path / "absent.yaml")
    with pytest.raises(SettingsError, match="mapping"):
        load_settings(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(SettingsError, match="not valid YAML"):
        load_settings(write(tmp_path, "scp: [\n"))


def test_monitor_hash_settings_must_be_hashes(tmp_path: Path) -> None:
    path = write(tmp_path, "monitor:\n  password_hash: plain-text-password\n")
    with pytest.raises(SettingsError, match=r"monitor\.password_hash: .*hash-password"):
        load_settings(path)


def test_completion_rules_from_the_file_and_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = write(tmp_path, "completion:\n  quiet_seconds: 60\n  quiet_only_aets: [' SERIES* ']\n")
    assert load_settings(path).completion.quiet_only_aets == ("SERIES*",)
    monkeypatch.setenv("PACS_ANNOTATOR_COMPLETION__RELEASE_GRACE_SECONDS", "2.5")
    monkeypatch.setenv("PACS_ANNOTATOR_COMPLETION__QUIET_ONLY_AETS", '["PACS1", "MOD*"]')
    completion = load_settings(path).completion
    assert completion.quiet_seconds == 60  # the existing name, unchanged
    assert completion.release_grace_seconds == 2.5
    assert completion.quiet_only_aets == ("PACS1", "MOD*")


@pytest.mark.parametrize(("cores", "expected"), [(1, 1), (2, 2), (3, 3), (16, 4)])
def test_scp_processes_zero_is_one_per_core_up_to_four(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cores: int, expected: int
) -> None:
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: set(range(cores)))
    settings = load_settings(None)
    assert settings.scp.processes == 0  # the default: as many as the machine has cores
    assert settings.scp.receiver_processes == expected
    path = tmp_path / "config.yaml"
    path.write_text("scp:\n  processes: 3\n")
    assert load_settings(path).scp.receiver_processes == 3  # set: taken as is
