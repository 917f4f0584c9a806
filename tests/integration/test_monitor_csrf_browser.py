"""Cross-site request forgery from another port of the same host, in real headless Chromium.

The monitor runs as `pacs-annotator monitor` on a real socket; the "other service" (think
Orthanc Explorer or Flower) is a plain HTTP server on another port of 127.0.0.1. SameSite
does not separate ports, so the browser sends the admin's session cookie along with the
other page's posts: the monitor itself must refuse them.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from scu_scp.spool import Spool
from tests.support.jobs import store_instances
from tests.support.phantom import make_ct_phantom
from tests.support.processes import free_port, require_binaries, stop_process, wait_for_port
from worker.config import load_settings
from worker.jobs.dispatch import Dispatcher
from worker.jobs.store import JobStore
from worker.monitor.auth import hash_secret
from worker.service.embedded_redis import EmbeddedRedis

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
PASSWORD = "csrf-test-password"
TOKEN = "csrf-test-token"
#: The pages reload themselves this often, as in production (10 s there).
REFRESH = 2


@dataclass
class Served:
    url: str
    failed_job: str
    http: httpx.Client  # bearer-token client: how the test looks at the state


def _failed_job(data_dir: Path) -> str:
    """A sealed study in the spool with a failed job: exactly what the admin could retry."""
    settings = load_settings(None, data_dir=data_dir)
    spool = Spool(settings.spool_dir)
    datasets = make_ct_phantom(slices=2, size=16, pixel_spacing=15.0, seed=31).datasets
    store_instances(spool, datasets, "ORTHANC")
    study = spool.seal(datasets[0].StudyInstanceUID)
    assert study is not None
    store = JobStore(settings.effective_database_url)
    try:
        job_id = Dispatcher(store, spool, lambda _id: None).dispatch(study).id
        store.mark_failed(job_id, "pipeline exploded")
    finally:
        store.close()
    return job_id


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    require_binaries("redis-server", CHROMIUM)
    root = tmp_path_factory.mktemp("csrf")
    data_dir = root / "data"
    job_id = _failed_job(data_dir)
    port = free_port()
    with EmbeddedRedis(root / "redis") as redis_server:
        config = root / "config.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "data_dir": str(data_dir),
                    "broker_url": redis_server.url,
                    "monitor": {
                        "port": port,
                        "password_hash": hash_secret(PASSWORD),
                        "token_hash": hash_secret(TOKEN),
                        "refresh_seconds": REFRESH,
                    },
                }
            )
        )
        log = (root / "monitor.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker", "monitor", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"})
        try:
            wait_for_port("127.0.0.1", port, timeout=60, proc=proc)
            yield Served(url, job_id, http)
        finally:
            http.close()
            stop_process(proc)
            log.close()


def _attack_page(monitor: str, job_id: str) -> bytes:
    """Form posts (into hidden frames) and fetch posts at the monitor's actions."""
    return f"""<!doctype html><html><body>
<iframe name="a" id="fa"></iframe><iframe name="b" id="fb"></iframe>
<form id="pause" method="post" action="{monitor}/intake/pause" target="a">
  <input name="csrf_token" value="0000"></form>
<form id="retry" method="post" action="{monitor}/jobs/{job_id}/retry" target="b"></form>
<script>
const loaded = (id) => new Promise((ok) => document.getElementById(id).onload = ok);
const frames = [loaded("fa"), loaded("fb")];
document.getElementById("pause").submit();
document.getElementById("retry").submit();
const post = (path) => fetch("{monitor}" + path,
  {{method: "POST", mode: "no-cors", credentials: "include"}}).catch(() => null);
Promise.all([...frames, post("/api/intake/pause"), post("/api/jobs/{job_id}/retry"),
             post("/jobs/{job_id}/cancel")])
  .then(() => {{ document.title = "sent"; }});
</script></body></html>""".encode()


@pytest.fixture
def other_port_page(served: Served) -> Iterator[str]:
    """A page served from another port of 127.0.0.1, like a neighbouring web app's."""
    body = _attack_page(served.url, served.failed_job)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def test_posts_from_another_port_are_refused_while_the_admin_is_logged_in(
    served: Served, other_port_page: str
) -> None:
    from playwright.sync_api import expect, sync_playwright

    before = served.http.get(f"/api/jobs/{served.failed_job}").json()
    assert before["state"] == "failed"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_context().new_page()
            page.goto(served.url + "/login")
            page.fill("#password", PASSWORD)
            page.click("#login")
            expect(page.locator("#intake-state")).to_have_text("receiving")

            attack = page.context.new_page()
            attack.goto(other_port_page)
            expect(attack).to_have_title("sent", timeout=30_000)

            # Nothing changed: intake still open, the job still failed on its first attempt.
            assert served.http.get("/api/intake").json() == {"paused": False}
            after = served.http.get(f"/api/jobs/{served.failed_job}").json()
            assert (after["state"], after["attempts"]) == ("failed", before["attempts"])
            actions = [e["action"] for e in served.http.get("/api/audit").json()]
            assert actions == ["login"], actions

            # The same session, from the monitor's own page, still works.
            page.reload()
            page.click("text=pause intake")
            expect(page.locator("#flash")).to_have_text("intake paused")
            assert served.http.get("/api/intake").json() == {"paused": True}
        finally:
            browser.close()
    served.http.post("/api/intake/resume")


def test_swagger_ui_renders_from_local_assets_under_the_csp(served: Served) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            requested: list[str] = []
            problems: list[str] = []
            page.on("request", lambda r: requested.append(r.url))
            page.on("console", lambda m: m.type == "error" and problems.append(m.text))
            page.goto(served.url + "/docs")
            expect(page.locator(".opblock").first).to_be_visible(timeout=30_000)
            assert page.locator(".opblock").count() >= 13
            assert all(u.startswith(served.url) for u in requested), requested
            assert not [p for p in problems if "Content Security Policy" in p], problems
        finally:
            browser.close()


def test_the_job_page_reloads_itself_without_asking_for_the_preview_again(
    served: Served,
) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(served.url + "/login?next=/jobs/" + served.failed_job)
            page.fill("#password", PASSWORD)
            page.click("#login")
            expect(page.locator("#job-state")).to_have_text("failed")
            # The first load's preview has arrived before counting: else its own (slow,
            # first-render) response would be counted as a reload's fetch.
            page.wait_for_function(
                "() => { const i = document.getElementById('preview');"
                " return i !== null && i.complete && i.naturalWidth > 0; }"
            )
            # What went over the network; the browser's cache answers the rest.
            cdp = page.context.new_cdp_session(page)
            cdp.send("Network.enable")
            cached: set[str] = set()
            fetched: list[str] = []
            loads: list[str] = []
            cdp.on("Network.requestServedFromCache", lambda e: cached.add(e["requestId"]))

            def received(event: dict[str, Any]) -> None:
                from_disk = event["response"].get("fromDiskCache")
                if event["requestId"] not in cached and not from_disk:
                    fetched.append(event["response"]["url"])

            cdp.on("Network.responseReceived", received)
            page.on("load", lambda: loads.append("load"))
            page.wait_for_timeout(REFRESH * 1000 * 3.5)  # about three meta refreshes
            pages = [u for u in fetched if f"/jobs/{served.failed_job}" in u]
            previews = [u for u in fetched if "preview.png" in u]
            assert len(pages) >= 2 and len(loads) >= 2, (fetched, loads)
            assert previews == [], previews
            width = page.evaluate("document.getElementById('preview').naturalWidth")
            assert width > 0  # the image is there, from the cache
        finally:
            browser.close()
