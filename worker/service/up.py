"""``pacs-annotator up``: everything on one machine, the SCP here and the rest as children."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from worker.config import Settings
from worker.service.embedded_redis import EmbeddedRedis
from worker.service.processes import start_child, stop_process
from worker.service.scp import run_scp

log = logging.getLogger(__name__)


def announce_monitor(settings: Settings) -> None:
    print(f"pacs-annotator monitor: {settings.monitor.url}", flush=True)
    log.info("monitor at %s", settings.monitor.url)


def run_up(settings: Settings, config: Path | None, stop: threading.Event) -> int:
    """SCP + dispatcher here, one Celery worker process, and a private Redis if none is set.

    The private Redis is restarted if it dies; if it keeps dying, ``up`` stops with status 1.
    """
    embedded: EmbeddedRedis | None = None
    if not settings.broker_url:
        embedded = EmbeddedRedis(settings.redis_dir)
        settings = settings.model_copy(update={"broker_url": embedded.start()})
    children = [("worker", start_child("worker", config, settings.broker_url))]
    if settings.monitor.enabled:
        children.append(("monitor", start_child("monitor", config, settings.broker_url)))
        announce_monitor(settings)
    try:
        if embedded is None:
            return run_scp(settings, stop, children=children)
        return run_scp(settings, stop, children=children, keep_alive=embedded.keep_alive)
    finally:
        for _name, proc in reversed(children):
            stop_process(proc, timeout=30)
        if embedded is not None:
            embedded.stop()
