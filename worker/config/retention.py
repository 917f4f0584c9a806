"""How long each kind of data stays on this node, and when disk pressure frees it early.

Patient images should stay on an annotation node no longer than the work needs them;
every period here is 0 for "keep forever", for sites that want that. See README "Where
data lives and how long it stays" and ``worker/jobs/retention.py``.
"""

from __future__ import annotations

from pydantic import Field

from worker.config.base import Section


class RetentionSettings(Section):
    """Retention per kind of data (0: keep forever) and the purge that applies it."""

    # Received instances (spool studies/<job id>) of a job whose results were delivered.
    delivered_inputs_hours: float = Field(default=6.0, ge=0)
    # Results folders (SEG, SR, manifest) of a delivered job.
    delivered_results_hours: float = Field(default=168.0, ge=0)
    # Inputs and results of failed and cancelled jobs: kept longer, so an admin can retry.
    failed_hours: float = Field(default=336.0, ge=0)
    # Cap on the bytes failed/cancelled jobs may hold; beyond it the oldest go first, but
    # never one that failed within failed_grace_hours (0: no cap).
    failed_max_bytes: int = Field(default=0, ge=0)
    failed_grace_hours: float = Field(default=72.0, ge=0)
    # Job rows and audit log entries (metadata, no pixels), kept for accounting. A job row
    # goes only once its inputs and results are gone.
    job_records_days: float = Field(default=400.0, ge=0)
    # Staging folders (spool/pulls/) left behind by interrupted DICOMweb pulls.
    pull_staging_hours: float = Field(default=24.0, ge=0)
    # How often `up`/`scp` run the purge (0: never on a schedule; `pacs-annotator purge`).
    purge_interval_seconds: float = Field(default=600.0, ge=0, le=86400)
    # Disk pressure: below this much free space on the spool's file system the purge also
    # removes delivered data before it expires, oldest first. Must exceed
    # scp.min_free_disk_bytes so the SCP never has to refuse. Empty: twice
    # scp.min_free_disk_bytes; 0: off.
    pressure_free_bytes: int | None = Field(default=None, ge=0)

    def effective_pressure_free_bytes(self, scp_min_free_bytes: int) -> int:
        """The free-space threshold of disk pressure (0: off), above the SCP's refusal."""
        if self.pressure_free_bytes is None:
            return 2 * scp_min_free_bytes
        return self.pressure_free_bytes
