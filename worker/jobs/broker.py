"""The broker seam: where the broker is, what a job message is, and how kombu lays it out in Redis.

Everything that knows Redis keys or the task's name is here, so the dispatcher's recovery
(``worker.jobs.reliability``) and the monitor's queue depths read the same layout, and no
kombu exception travels past the producer: it raises :class:`EnqueueError`.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from worker.config import SettingsError

#: The Celery task name of a job; producers send it by name and never import the tasks.
PROCESS_STUDY = "pacs_annotator.process_study"

#: File under ``redis_dir`` where a running ``up`` publishes its embedded broker's URL.
URL_FILE = "url"

# kombu's Redis transport: a queue is a list per priority step (priorities 3, 6, 9 in lists
# named queue + "\x06\x16" + step), and messages delivered but not yet acknowledged live in
# the "unacked" hash until acked or restored.
_PRIORITY_SEPARATOR = "\x06\x16"
_PRIORITY_STEPS = (0, 3, 6, 9)
_UNACKED_KEY = "unacked"


class EnqueueError(Exception):
    """A job could not be queued: the broker is down or none is configured.

    The job stays as it was in the job store (the store is the truth); the service's
    recovery loop queues it once the broker is back.
    """


def require_broker_url(url: str, why: str) -> str:
    """``url``, or a SettingsError saying why a broker is needed here."""
    if not url:
        raise SettingsError(f"broker_url is empty: {why}")
    return url


def running_url(redis_dir: Path) -> str | None:
    """The URL of the embedded redis-server a running ``up`` published, if any."""
    try:
        return (redis_dir / URL_FILE).read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        return None


def service_broker_url(broker_url: str, redis_dir: Path) -> str:
    """The configured broker, else the embedded one a running ``up`` published ('' if none).

    Commands started beside ``up`` (annotate, retry, flower) reach its queue this way.
    """
    return broker_url or running_url(redis_dir) or ""


def queue_key_names(queue: str) -> list[str]:
    """The Redis lists holding ``queue``'s waiting messages, one per priority step."""
    return [
        queue if step == 0 else f"{queue}{_PRIORITY_SEPARATOR}{step}" for step in _PRIORITY_STEPS
    ]


def queue_depths(client: redis.Redis, queues: Iterable[str]) -> dict[str, int]:
    """Messages waiting per Celery queue (LLEN of its Redis lists)."""
    return {q: sum(int(client.llen(k)) for k in queue_key_names(q)) for q in queues}


def _job_id_of(raw: bytes | str) -> str | None:
    """The job id carried by one serialized kombu message, None if it is not ours."""
    try:
        message: Any = json.loads(raw)
        if isinstance(message, list):  # unacked entries are [message, exchange, routing_key]
            message = message[0]
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    if isinstance(args, list) and args and isinstance(args[0], str):
        return args[0]
    return None


@dataclass(frozen=True)
class BrokerView:
    """Job ids with a message in Redis: waiting in the queue, or delivered and not acked."""

    waiting: frozenset[str]
    unacked: frozenset[str]


def broker_job_ids(client: redis.Redis, queues: Iterable[str]) -> BrokerView:
    """What Redis holds for ``queues`` right now (kombu's lists and its "unacked" hash)."""
    waiting: list[Any] = []
    for queue in queues:
        for key in queue_key_names(queue):
            waiting += client.lrange(key, 0, -1)
    unacked = client.hvals(_UNACKED_KEY)

    def ids(raw: Iterable[Any]) -> frozenset[str]:
        return frozenset(job_id for job_id in map(_job_id_of, raw) if job_id is not None)

    return BrokerView(waiting=ids(waiting), unacked=ids(unacked))
