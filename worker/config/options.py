"""Command-line overrides of ``worker:`` (``--device``, ``--queues``), validated like the file."""

from __future__ import annotations

from pydantic import ValidationError

from worker.config.jobs import WorkerSettings
from worker.config.settings import Settings, SettingsError


def with_worker_options(settings: Settings, *, device: str | None, queues: str | None) -> Settings:
    """``settings`` with the given options applied; ``SettingsError`` names a bad one."""
    update: dict[str, object] = {}
    if device is not None:
        update["device"] = device
    if queues is not None:
        update["queues"] = tuple(q.strip() for q in queues.split(",") if q.strip())
    if not update:
        return settings
    try:
        worker = WorkerSettings(**{**settings.worker.model_dump(), **update})
    except ValidationError as exc:
        problems = "; ".join(
            f"--{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise SettingsError(f"invalid worker option: {problems}") from exc
    return settings.model_copy(update={"worker": worker})


def worker_hostname(device: str) -> str:
    """Celery node name: one worker per GPU on a machine needs distinct names."""
    return "pacs-annotator" if device == "cpu" else f"pacs-annotator-{device.replace(':', '')}"
