"""The broker seam: where the broker is, kombu's Redis layout, and what a message carries."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from worker.config import SettingsError
from worker.jobs.broker import (
    PROCESS_STUDY,
    URL_FILE,
    _job_id_of,
    queue_depths,
    queue_key_names,
    require_broker_url,
    service_broker_url,
)


class FakeRedis:
    """The two list reads the depth needs, over a dict of lists."""

    def __init__(self, lists: dict[str, list[bytes]]) -> None:
        self.lists = lists

    def llen(self, key: str) -> int:
        return len(self.lists.get(key, []))


def test_an_empty_broker_url_is_a_settings_error_that_says_why() -> None:
    assert require_broker_url("redis://h:6379/0", "unused") == "redis://h:6379/0"
    with pytest.raises(SettingsError, match="broker_url is empty: a worker needs a Redis URL"):
        require_broker_url("", "a worker needs a Redis URL")


def test_the_configured_broker_wins_over_the_one_up_published(tmp_path: Path) -> None:
    assert service_broker_url("", tmp_path) == ""
    (tmp_path / URL_FILE).write_text("redis://127.0.0.1:7000/0\n", encoding="utf-8")
    assert service_broker_url("", tmp_path) == "redis://127.0.0.1:7000/0"
    assert service_broker_url("redis://other:6379/0", tmp_path) == "redis://other:6379/0"


def test_queue_depth_counts_every_priority_list_of_every_queue() -> None:
    assert queue_key_names("gpu") == ["gpu", "gpu\x06\x163", "gpu\x06\x166", "gpu\x06\x169"]
    client = FakeRedis({"gpu": [b"a"], "gpu\x06\x169": [b"b", b"c"], "cpu": []})
    assert queue_depths(client, ["gpu", "cpu"]) == {"gpu": 3, "cpu": 0}  # type: ignore[arg-type]


def _message(job_id: str, *, encoded: bool) -> bytes:
    body = json.dumps([[job_id], {}, {}]).encode()
    message = {
        "body": base64.b64encode(body).decode() if encoded else body.decode(),
        "headers": {"task": PROCESS_STUDY},
        "properties": {"body_encoding": "base64"} if encoded else {},
    }
    return json.dumps(message).encode()


def test_job_id_is_read_from_waiting_and_unacked_messages() -> None:
    assert _job_id_of(_message("job-1", encoded=True)) == "job-1"
    assert _job_id_of(_message("job-2", encoded=False)) == "job-2"
    unacked = json.dumps([json.loads(_message("job-3", encoded=True)), "", "q"])
    assert _job_id_of(unacked) == "job-3"
    assert _job_id_of(b"not json") is None
    assert _job_id_of(json.dumps({"body": "[[], {}, {}]"})) is None
