"""Applying the monitor's control requests in the SCP process, and starting the monitor.

The monitor may run in another process or on another machine, and scu_scp must not touch
the database: the monitor writes requests to the job DB, and the SCP process polls them
here (each second) and calls the StorageSCP's own pause / force-complete API.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from scu_scp.scp import StorageSCP
from worker.ops_store import OpsStore
from worker.processes import child_dies_with_parent
from worker.settings import ENV_PREFIX, Settings

log = logging.getLogger(__name__)


class ControlPoller:
    """Mirrors the intake flag onto the SCP and forwards force-complete requests."""

    def __init__(self, ops: OpsStore, scp: StorageSCP) -> None:
        self._ops = ops
        self._scp = scp
        self._warned = False

    def apply(self) -> None:
        try:
            paused = self._ops.intake_paused()
            studies = self._ops.take_force_complete_requests()
        except SQLAlchemyError as exc:  # database briefly away: keep the current state
            if not self._warned:
                log.warning("cannot read admin controls (%s); will retry", exc)
                self._warned = True
            return
        self._warned = False
        if paused != self._scp.paused:
            self._scp.paused = paused
            log.info("intake %s", "paused: C-STORE answers 0xA700" if paused else "resumed")
        for study_uid in studies:
            log.info("study %s: completion forced by an admin", study_uid)
            self._scp.force_complete(study_uid)


def start_monitor_process(config: Path | None, broker_url: str) -> subprocess.Popen[bytes]:
    """``pacs-annotator monitor`` as a child of ``up``, sharing its config and broker."""
    args = [sys.executable, "-m", "worker", "monitor"]
    if config is not None:
        args += ["--config", str(config)]
    env = dict(os.environ, **{f"{ENV_PREFIX}BROKER_URL": broker_url})
    return subprocess.Popen(args, env=env, preexec_fn=child_dies_with_parent)


def announce_monitor(settings: Settings) -> None:
    from worker.monitor.server import monitor_url

    print(f"pacs-annotator monitor: {monitor_url(settings)}", flush=True)
    log.info("monitor at %s", monitor_url(settings))
