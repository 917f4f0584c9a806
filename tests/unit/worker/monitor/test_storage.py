"""Data per kind on /metrics, the dashboard and /readyz, over the monitor's real state
(a job done and one failed through the real pipeline, a study still receiving)."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from tests.unit.worker.monitor.conftest import OWN_ORIGIN, Env, bearer, login
from worker.config import GIB, MIB
from worker.jobs.usage import DataUsage, KindUsage
from worker.monitor.app import create_monitor_app
from worker.monitor.state import disk_pressure_check

MORE_THAN_ANY_DISK = 10**18


def _value(text: str, line_start: str) -> float:
    (line,) = [ln for ln in text.splitlines() if ln.startswith(line_start)]
    return float(line.rsplit(" ", 1)[1])


def test_metrics_give_bytes_items_and_oldest_age_per_kind(client: TestClient) -> None:
    text = client.get("/metrics").text
    for kind in ("receiving", "sealed", "results", "failed", "quarantine", "superseded"):
        assert f'pacs_annotator_data_bytes{{kind="{kind}"}}' in text, kind
    assert _value(text, 'pacs_annotator_data_items{kind="receiving"}') == 1  # the pending study
    assert _value(text, 'pacs_annotator_data_items{kind="sealed"}') == 1  # the done job
    assert _value(text, 'pacs_annotator_data_items{kind="failed"}') >= 1
    assert _value(text, 'pacs_annotator_data_bytes{kind="sealed"}') > 0
    assert _value(text, 'pacs_annotator_data_oldest_age_seconds{kind="sealed"}') >= 0
    assert _value(text, "pacs_annotator_data_freeable_bytes ") > 0  # the done job's data
    assert _value(text, "pacs_annotator_spool_free_bytes ") > 0
    assert _value(text, "pacs_annotator_disk_pressure_threshold_bytes ") == 2 * GIB


def test_dashboard_and_summary_show_data_per_kind(client: TestClient) -> None:
    login(client)
    page = client.get("/").text
    assert 'id="data-usage"' in page and 'id="data-receiving-count">1<' in page
    summary = client.get("/api/summary", headers=bearer()).json()
    assert summary["data"]["kinds"]["sealed"]["count"] == 1
    assert summary["data"]["pressure"]["ok"] is True


def test_readyz_says_what_disk_pressure_can_and_cannot_free(env: Env) -> None:
    retention = env.settings.retention.model_copy(
        update={"pressure_free_bytes": MORE_THAN_ANY_DISK}
    )
    scp = env.settings.scp.model_copy(update={"min_free_disk_bytes": 0})
    settings = env.settings.model_copy(update={"retention": retention, "scp": scp})
    with TestClient(create_monitor_app(settings), headers=OWN_ORIGIN) as c:
        ready = c.get("/readyz").json()
    check = ready["checks"]["disk_pressure"]
    assert check["ok"] is True  # the done job's data can still go
    assert "the purge can free" in check["detail"] and "cannot free: receiving" in check["detail"]


def test_disk_pressure_fails_when_nothing_purgeable_is_left(env: Env) -> None:
    usage = DataUsage()
    usage.kinds["failed"] = KindUsage(count=3, bytes=300 * MIB)
    usage.kinds["quarantine"] = KindUsage(count=1, bytes=5 * MIB)
    check = disk_pressure_check(env.settings, usage, free=GIB)
    assert not check.ok
    assert "failed 300 MB" in check.detail and "quarantine 5 MB" in check.detail
    assert disk_pressure_check(env.settings, usage, free=3 * GIB).ok


def test_a_purged_job_page_says_so_and_offers_no_retry(client: TestClient, env: Env) -> None:
    from datetime import UTC, datetime

    from worker.jobs.store import JobState

    env.store.create(
        job_id="purged-job",
        study_uid="1.2.3",
        accession_number="A1",
        calling_ae="PACS",
        spool_path="/gone",
        instance_count=1,
        received_at=datetime.now(UTC),
    )
    env.store.mark_failed("purged-job", "delivery refused")
    assert env.store.mark_purged("purged-job", JobState.FAILED, inputs=True, results=True)
    login(client)
    page = client.get("/jobs/purged-job").text
    assert 'id="inputs-purged"' in page and "send the study again from the PACS" in page
    assert 'id="retry"' not in page
    assert 'id="preview-purged"' in page and 'id="preview"' not in page
    detail = client.get("/api/jobs/purged-job", headers=bearer()).json()
    assert detail["inputs_purged_at"] and detail["results_purged_at"]
    refused = client.post("/api/jobs/purged-job/retry", headers=bearer())
    assert refused.status_code == 409 and "purged" in refused.json()["detail"]


def test_the_example_alert_rules_use_only_metrics_the_monitor_serves(client: TestClient) -> None:
    import re
    from pathlib import Path

    import yaml

    rules_file = Path(__file__).parents[4] / "deploy" / "prometheus-alerts.yml"
    groups = yaml.safe_load(rules_file.read_text())["groups"]
    served = set(re.findall(r"^# TYPE (\w+) ", client.get("/metrics").text, re.MULTILINE))
    exprs = [rule["expr"] for group in groups for rule in group["rules"]]
    used = {name for expr in exprs for name in re.findall(r"\bpacs_annotator_\w+", expr)}
    assert used and used <= served, used - served


def test_the_data_walk_is_reused_for_its_ttl_then_taken_again(tmp_path: Path) -> None:
    from scu_scp.spool import Spool
    from worker.jobs.store import JobStore
    from worker.jobs.usage import UsageCache

    now = [100.0]
    cache = UsageCache(15.0, clock=lambda: now[0])
    store = JobStore(f"sqlite:///{tmp_path / 'jobs.sqlite3'}")
    spool, results = Spool(tmp_path / "spool"), tmp_path / "results"
    (results / "job-a").mkdir(parents=True)
    (results / "job-a" / "seg.dcm").write_bytes(b"x" * 100)
    first = cache.get(store, spool, results)
    assert first.kinds["results"].bytes == 100
    (results / "job-a" / "sr.dcm").write_bytes(b"y" * 50)
    now[0] += 14.9
    assert cache.get(store, spool, results).kinds["results"].bytes == 100  # not walked again
    now[0] += 0.2
    assert cache.get(store, spool, results).kinds["results"].bytes == 150
    assert UsageCache(0).get(store, spool, results).kinds["results"].bytes == 150
    store.close()


def test_metrics_and_readyz_share_the_monitors_cached_walk(env: Env, tmp_path: Path) -> None:
    """The monitor process keeps one walk for ``monitor.data_usage_cache_seconds``: a second
    scrape does not see a new file, a monitor with 0 does."""
    settings = env.settings.model_copy(update={"data_dir": tmp_path / "data"})
    results = settings.results_dir / "job-b"
    results.mkdir(parents=True)
    (results / "seg.dcm").write_bytes(b"x" * 1000)
    line = 'pacs_annotator_data_bytes{kind="results"}'

    def scrape(c: TestClient) -> float:
        return _value(c.get("/metrics").text, line)

    cached = settings.monitor.model_copy(update={"data_usage_cache_seconds": 3600.0})
    with TestClient(create_monitor_app(settings.model_copy(update={"monitor": cached}))) as c:
        assert scrape(c) == 1000
        (results / "sr.dcm").write_bytes(b"y" * 500)
        assert c.get("/readyz").json()["checks"]["disk_pressure"]["ok"] is True
        assert scrape(c) == 1000  # the walk of the first scrape, reused
    fresh = settings.monitor.model_copy(update={"data_usage_cache_seconds": 0.0})
    with TestClient(create_monitor_app(settings.model_copy(update={"monitor": fresh}))) as c:
        assert scrape(c) == 1500
