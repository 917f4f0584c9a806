"""What an admin installs from deploy/: systemd units, the container recipe, the compose
file and the Grafana dashboard are checked by the tools that will read them, and every
command they start must exist in our CLI with the options they pass."""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from scu_scp.spool import Spool
from tests.support.fleet import Clock, run_job
from tests.support.jobs import FakeRedis
from worker.cli import _COMMANDS, _parser
from worker.config import load_settings
from worker.jobs import store as store_module
from worker.jobs.ops_store import OpsStore
from worker.jobs.store import JobStore
from worker.monitor.metrics import render_metrics
from worker.monitor.state import Sources

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
COMPOSE = DEPLOY / "docker" / "compose.yaml"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
GRAFANA = DEPLOY / "grafana" / "pacs-annotator-dashboard.json"
INSTALLED_BINARY = "/opt/pacs-annotator/.venv/bin/pacs-annotator"
DATA_DIR = "/var/lib/pacs-annotator"


def _unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(path)
    return parser


def test_there_is_a_unit_for_each_service() -> None:
    assert [u.name for u in UNITS] == [
        "pacs-annotator-monitor.service",
        "pacs-annotator-scp.service",
        "pacs-annotator-up.service",
        "pacs-annotator-worker@.service",
    ]


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_units_run_as_a_dedicated_user_with_hardening(path: Path) -> None:
    service = _unit(path)["Service"]
    assert service["User"] == "pacs-annotator" and service["Group"] == "pacs-annotator"
    expected = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "ReadWritePaths": DATA_DIR,
        "CapabilityBoundingSet": "",
        "WorkingDirectory": DATA_DIR,
        "Environment": f"PACS_ANNOTATOR_DATA_DIR={DATA_DIR}",  # data_dir is what it may write
        "UMask": "0077",
    }
    assert {k: service.get(k) for k in expected} == expected
    assert service["StateDirectory"] == Path(DATA_DIR).name


def test_systemd_analyze_verifies_the_units(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (deploy/install.sh --dev installs systemd)")
    binary = Path(sys.executable).with_name("pacs-annotator")
    assert binary.exists(), f"{binary}: install the project (deploy/install.sh --dev)"
    for unit in UNITS:  # verify checks that ExecStart's program exists: point it at ours
        (tmp_path / unit.name).write_text(unit.read_text().replace(INSTALLED_BINARY, str(binary)))
    # %I of "cuda\x3a0" is "cuda:0"; systemd-analyze takes a bare ':' in an argument as a path.
    names = [u.name for u in UNITS if "@" not in u.name] + [
        "pacs-annotator-worker@cpu.service",
        r"pacs-annotator-worker@cuda\x3a0.service",
    ]
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{tmp_path}:", "SYSTEMD_LOG_COLOR": "0"}
    done = subprocess.run(
        [analyze, "verify", "--man=no", *names],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    # verify also reports unknown keys and bad values, as warnings with status 0
    ours = [line for line in done.stderr.splitlines() if "pacs-annotator" in line]
    assert done.returncode == 0 and not ours, done.stderr


def _compose(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed (deploy/install.sh --dev installs it)")
    project = tmp_path / "docker"
    shutil.copytree(DEPLOY / "docker", project)
    (project / "config.yaml").write_text((DEPLOY / "config.example.yaml").read_text())
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "POSTGRES_"))}
    return subprocess.run(
        [
            binary,
            "--project-directory",
            str(project),
            "-f",
            str(project / "compose.yaml"),
            "config",
        ],
        capture_output=True,
        text=True,
        env={**clean, **env},
        timeout=120,
        check=False,
    )


def test_docker_compose_config_accepts_the_compose_file(tmp_path: Path) -> None:
    done = _compose(tmp_path, REDIS_PASSWORD="r-secret", POSTGRES_PASSWORD="p-secret")
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(done.stdout)
    services = config["services"]
    assert set(services) >= {"redis", "postgres", "scp", "worker-gpu0", "monitor", "orthanc"}
    assert services["orthanc"]["profiles"] == ["demo"]
    gpu = services["worker-gpu0"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["device_ids"] == ["0"] and "cuda:0" in services["worker-gpu0"]["command"]
    for name in ("scp", "worker-gpu0", "monitor"):
        env = services[name]["environment"]
        assert env["PACS_ANNOTATOR_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert ":p-secret@postgres:5432/" in env["PACS_ANNOTATOR_DATABASE_URL"]
        assert env["PACS_ANNOTATOR_BROKER_URL"] == "redis://:r-secret@redis:6379/0"


def test_compose_refuses_to_start_without_its_passwords(tmp_path: Path) -> None:
    done = _compose(tmp_path, POSTGRES_PASSWORD="p-secret")
    assert done.returncode != 0 and "REDIS_PASSWORD" in done.stderr


def _started_commands() -> list[tuple[str, list[str]]]:
    """(where, argv after the program) of every command deploy/ starts."""
    found: list[tuple[str, list[str]]] = []
    for unit in UNITS:
        argv = shlex.split(_unit(unit)["Service"]["ExecStart"])
        assert argv[0] == INSTALLED_BINARY, unit.name
        found.append((unit.name, [a.replace("%I", "cuda:0") for a in argv[1:]]))
    compose = yaml.safe_load(COMPOSE.read_text())
    for name, service in compose["services"].items():
        if service.get("image", "").startswith("${PACS_ANNOTATOR_IMAGE"):
            found.append((f"compose {name}", list(service["command"])))
    text = DOCKERFILE.read_text()
    entry = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M).group(1))  # type: ignore[union-attr]
    assert entry[-1] == "pacs-annotator", "the image's entry point is our CLI"
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))  # type: ignore[union-attr]
    found.append(("Dockerfile CMD", cmd))
    return found


def test_every_command_deploy_starts_exists_in_the_cli() -> None:
    started = _started_commands()
    assert len(started) >= len(UNITS) + 4
    for where, argv in started:
        try:
            args = _parser().parse_args(argv)
        except SystemExit as exc:  # argparse: unknown command or option
            raise AssertionError(f"{where}: pacs-annotator {shlex.join(argv)} is refused") from exc
        assert args.command in _COMMANDS, where


def test_the_image_installs_torch_at_the_exact_pin_of_pyproject(tmp_path: Path) -> None:
    script = re.search(r"RUN python - <<'PY'.*?\n(.*?)\nPY\n", DOCKERFILE.read_text(), re.S)
    assert script, "the Dockerfile reads torch's pin with an inline Python script"
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    done = subprocess.run(
        [sys.executable, "-c", script.group(1)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch = [d for d in deps if re.match(r"torch(vision)?\s*==", d)]
    assert torch and done.stdout.split() == torch


def _grafana_metric_names() -> set[str]:
    board = json.loads(GRAFANA.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in board["templating"]["list"] if "definition" in v]
    return {m for e in exprs for m in re.findall(r"\bpacs_annotator_[a-z_]+", e)}


def test_the_grafana_dashboard_uses_only_metrics_we_serve(tmp_path: Path) -> None:
    settings = load_settings(None, data_dir=tmp_path / "data")
    store = JobStore(settings.effective_database_url)
    clock = Clock()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(store_module, "utc_now", clock)
        run_job(
            store,
            clock,
            "j",
            queue="gpu",
            worker="h/1",
            pipelines=["seg"],
            at=clock.now,
            wait=2,
            processing=9,
        )
    ops = OpsStore(store.engine)
    sources = Sources(settings, store, ops, Spool(settings.spool_dir), FakeRedis({}))  # type: ignore[arg-type]
    text = render_metrics(sources).decode()
    store.close()
    served = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    used = _grafana_metric_names()
    assert used, "the dashboard queries no metric"
    assert used <= served, f"not served: {sorted(used - served)}"
    board = json.loads(GRAFANA.read_text())
    assert {p["gridPos"]["y"] for p in board["panels"]}  # every panel is placed
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"])
