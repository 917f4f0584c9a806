"""Settings of the workers that run jobs, the queues they take, and the recovery loop."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from worker.config.base import Section, check_ca_bundle, check_http_url

#: The queue every job goes to unless a pipeline names another one.
DEFAULT_QUEUE = "pacs-annotator"
_DEVICE = re.compile(r"^(cpu|cuda|cuda:\d+)$")
_QUEUE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")


def check_device(value: str) -> str:
    if not _DEVICE.match(value):
        raise ValueError(f"must be cpu, cuda or cuda:N, not {value!r}")
    return value


def check_queue(value: str) -> str:
    if not _QUEUE.match(value):
        raise ValueError(
            f"a queue name is 1-64 letters, digits, '_', '.', ':' or '-', not {value!r}"
        )
    return value


def check_queues(value: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(check_queue(q) for q in value)


class WorkerSettings(Section):
    """The Celery worker processes."""

    concurrency: int = Field(default=1, ge=1, le=64)
    job_time_limit_seconds: float = Field(default=3600.0, gt=0)
    device: str = "cpu"  # cpu, cuda or cuda:N: where this worker's models run
    queues: tuple[str, ...] = ()  # queues this worker takes jobs from; empty: all configured
    # Redis hands an unacknowledged job (its worker died) to another worker after this.
    # Empty: twice the job time limit plus 10 minutes. See README "Reliability".
    visibility_timeout_seconds: float | None = Field(default=None, gt=0)
    # A running job whose worker stopped refreshing its lease for this long may be taken over.
    lease_seconds: float = Field(default=60.0, gt=0, le=86400)
    # A remote worker (no shared disk with the central node): the central monitor's URL,
    # from which it downloads each job's study and to which it uploads the results (README
    # "Workers on other machines"). Empty: the spool and results are in data_dir.
    central_url: str | None = None
    central_token_file: Path | None = None  # the token from `pacs-annotator worker-token create`
    central_ca_file: Path | None = None  # CA bundle for an https central_url; empty: system CAs
    transfer_attempts: int = Field(default=6, ge=1, le=100)  # per request, then the job fails
    transfer_backoff_seconds: float = Field(default=1.0, gt=0, le=600)  # doubles, capped at 60
    transfer_timeout_seconds: float = Field(default=60.0, gt=0)  # connect and each read

    _device = field_validator("device")(check_device)
    _queues = field_validator("queues")(check_queues)
    _central_url = field_validator("central_url")(check_http_url)
    _central_ca = field_validator("central_ca_file")(check_ca_bundle)

    @model_validator(mode="after")
    def _central_credentials(self) -> WorkerSettings:
        if self.central_url and self.central_token_file is None:
            raise ValueError(
                "worker.central_url needs worker.central_token_file (a token from "
                "`pacs-annotator worker-token create NAME` on the central node)"
            )
        if self.central_token_file is not None and not self.central_token_file.is_file():
            raise ValueError(f"worker.central_token_file {self.central_token_file} is not a file")
        return self

    @model_validator(mode="after")
    def _lease_below_visibility(self) -> WorkerSettings:
        timeout = self.visibility_timeout_seconds
        if timeout is not None and timeout <= self.lease_seconds:
            raise ValueError(
                "worker.visibility_timeout_seconds must exceed worker.lease_seconds, "
                "or a redelivered job would find its dead worker's lease still valid"
            )
        return self

    @property
    def effective_visibility_timeout(self) -> float:
        if self.visibility_timeout_seconds is not None:
            return self.visibility_timeout_seconds
        return self.job_time_limit_seconds * 2 + 600


class RecoverySettings(Section):
    """How the dispatcher re-queues jobs the broker lost (Redis restarted without its data)."""

    interval_seconds: float = Field(default=60.0, gt=0, le=86400)
    # A queued job with no message in the broker for this long is queued again.
    requeue_after_seconds: float = Field(default=120.0, gt=0)
