"""``pacs-annotator up``: which children start with which broker, and that all of them stop.

The children, the embedded redis-server and the SCP loop are fakes behind the names ``up``
imports; the order of events is what is checked.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from worker.config import Settings, load_settings
from worker.service import up
from worker.service.up import run_up

EMBEDDED_URL = "redis://127.0.0.1:6390/0"


class Events:
    """Everything the fakes saw, in order."""

    def __init__(self) -> None:
        self.log: list[tuple[Any, ...]] = []
        self.scp_settings: Settings | None = None
        self.scp_error: Exception | None = None
        self.keep_alive: object = None


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> Events:
    ev = Events()

    class FakeEmbeddedRedis:
        def __init__(self, data_dir: Path) -> None:
            ev.log.append(("redis dir", data_dir))

        def start(self) -> str:
            ev.log.append(("redis start",))
            return EMBEDDED_URL

        def stop(self) -> None:
            ev.log.append(("redis stop",))

        def keep_alive(self) -> bool:
            ev.log.append(("redis keep_alive",))
            return False

    def start_child(command: str, config: Path | None, broker_url: str) -> str:
        ev.log.append(("start", command, config, broker_url))
        return f"<{command} process>"

    def stop_process(proc: str, *, timeout: float) -> None:
        ev.log.append(("stop", proc, timeout))

    def run_scp(
        settings: Settings,
        stop: threading.Event,
        *,
        children: Sequence[tuple[str, str]] = (),
        keep_alive: object = None,
    ) -> int:
        ev.log.append(("scp", tuple(children)))
        ev.scp_settings = settings
        ev.keep_alive = keep_alive
        if ev.scp_error is not None:
            raise ev.scp_error
        return 3

    monkeypatch.setattr(up, "EmbeddedRedis", FakeEmbeddedRedis)
    monkeypatch.setattr(up, "start_child", start_child)
    monkeypatch.setattr(up, "stop_process", stop_process)
    monkeypatch.setattr(up, "run_scp", run_scp)
    return ev


def test_without_a_broker_up_runs_its_own_redis_for_every_child(
    tmp_path: Path, events: Events, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = load_settings(None, data_dir=tmp_path, monitor={"port": 8181})
    config = tmp_path / "config.yaml"
    assert run_up(settings, config, threading.Event()) == 3  # the SCP loop's exit status
    worker, monitor = ("worker", "<worker process>"), ("monitor", "<monitor process>")
    assert events.log == [
        ("redis dir", settings.redis_dir),
        ("redis start",),
        ("start", "worker", config, EMBEDDED_URL),
        ("start", "monitor", config, EMBEDDED_URL),
        ("scp", (worker, monitor)),
        ("stop", "<monitor process>", 30),  # in reverse order of start
        ("stop", "<worker process>", 30),
        ("redis stop",),  # last: the children may still talk to it while they stop
    ]
    assert events.scp_settings is not None and events.scp_settings.broker_url == EMBEDDED_URL
    assert settings.broker_url == ""  # the caller's settings are unchanged
    assert capsys.readouterr().out == "pacs-annotator monitor: http://127.0.0.1:8181/\n"


def test_with_a_broker_and_no_monitor_only_the_worker_starts(
    tmp_path: Path, events: Events, capsys: pytest.CaptureFixture[str]
) -> None:
    broker = "redis://redis.example:6379/2"
    settings = load_settings(None, data_dir=tmp_path, broker_url=broker, monitor={"enabled": False})
    run_up(settings, None, threading.Event())
    assert events.log == [
        ("start", "worker", None, broker),
        ("scp", (("worker", "<worker process>"),)),
        ("stop", "<worker process>", 30),
    ]
    assert capsys.readouterr().out == ""  # no monitor to announce


def test_children_and_redis_stop_when_the_scp_fails(tmp_path: Path, events: Events) -> None:
    settings = load_settings(None, data_dir=tmp_path, monitor={"enabled": False})
    events.scp_error = OSError("Address already in use")
    with pytest.raises(OSError, match="Address already in use"):
        run_up(settings, None, threading.Event())
    assert events.log[-2:] == [("stop", "<worker process>", 30), ("redis stop",)]


def test_the_scp_loop_keeps_the_embedded_redis_alive(tmp_path: Path, events: Events) -> None:
    settings = load_settings(None, data_dir=tmp_path, monitor={"enabled": False})
    run_up(settings, None, threading.Event())
    assert callable(events.keep_alive)
    assert events.keep_alive() is False  # the embedded server's answer reaches the loop
    assert events.log[-1] == ("redis keep_alive",)


def test_with_a_broker_nothing_is_kept_alive_by_up(tmp_path: Path, events: Events) -> None:
    settings = load_settings(
        None,
        data_dir=tmp_path,
        broker_url="redis://redis.example:6379/2",
        monitor={"enabled": False},
    )
    run_up(settings, None, threading.Event())
    assert events.keep_alive is None
