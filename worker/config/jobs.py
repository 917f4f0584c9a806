"""Settings of the workers that run jobs, the queues they take, and the recovery loop."""

from __future__ import annotations

import re

from pydantic import Field, field_validator, model_validator

from worker.config.base import Section

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

    _device = field_validator("device")(check_device)
    _queues = field_validator("queues")(check_queues)

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
