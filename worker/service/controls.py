"""Applying the monitor's control requests in the SCP process.

The monitor may run in another process or on another machine, and scu_scp must not touch
the database: the monitor writes requests to the job DB, and the SCP process polls them
here (each second) and calls the StorageSCP's own pause / force-complete API.
"""

from __future__ import annotations

import logging

from sqlalchemy.exc import SQLAlchemyError

from scu_scp.scp import StorageSCP
from worker.jobs.ops_store import OpsStore

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
