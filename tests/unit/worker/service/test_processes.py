"""Children of the service: how they stop, and how the service hears a stop signal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from worker.service.processes import stop_on_signals, stop_process


def _child(code: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"  # its signal handlers are set
    return proc


def test_a_child_that_ignores_sigterm_is_killed_after_the_timeout() -> None:
    proc = _child(
        "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ready', flush=True); time.sleep(60)"
    )
    stop_process(proc, timeout=0.5)
    assert proc.returncode == -signal.SIGKILL


def test_a_child_that_obeys_sigterm_exits_with_it() -> None:
    proc = _child("import time; print('ready', flush=True); time.sleep(60)")
    stop_process(proc, timeout=10)
    assert proc.returncode == -signal.SIGTERM
    stop_process(proc, timeout=10)  # already gone: nothing to do


@pytest.fixture
def restore_handlers() -> Iterator[None]:
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


@pytest.mark.usefixtures("restore_handlers")
def test_sigterm_sets_the_stop_event() -> None:
    stop = stop_on_signals()
    assert not stop.is_set()
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop.wait(5)
