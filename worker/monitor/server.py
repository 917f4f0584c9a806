"""Serving the monitor with uvicorn (``pacs-annotator monitor``, and a child of ``up``)."""

from __future__ import annotations

import logging

import uvicorn

from worker.config import Settings
from worker.monitor.app import create_monitor_app

log = logging.getLogger(__name__)


def serve(settings: Settings) -> int:
    """Run until SIGTERM/SIGINT (uvicorn handles both)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = create_monitor_app(settings)
    if app.state.generated_password:
        path = settings.monitor_dir / "admin-password"
        # Under `up` this line lands in the service log: say where the password is, not what.
        print(
            f"monitor first login: user {settings.monitor.admin_user!r}, password in {path} "
            "(mode 0600; set monitor.password_hash to replace it, and the file is removed)",
            flush=True,
        )
    print(f"monitor listening on {settings.monitor.url}", flush=True)
    config = uvicorn.Config(
        app,
        host=settings.monitor.host,
        port=settings.monitor.port,
        log_level=settings.log_level.lower(),
        access_log=False,  # URLs carry study UIDs and search terms; keep the log to our lines
        log_config=None,  # uvicorn's records go through the service's one-line log format
        ssl_certfile=settings.monitor.tls_certificate,
        ssl_keyfile=settings.monitor.tls_private_key,
    )
    uvicorn.Server(config).run()
    return 0
