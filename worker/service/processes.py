"""The child processes the service starts, and how they stop."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

from worker.config import ENV_PREFIX

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def child_dies_with_parent() -> None:
    """Run in the child before exec: the kernel sends SIGTERM to it if the parent dies.

    So a killed ``pacs-annotator up`` leaves no orphaned redis-server or worker behind.
    """
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:  # not glibc Linux: the child then outlives a killed parent
        return
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def stop_process(proc: subprocess.Popen[bytes], *, timeout: float) -> None:
    """SIGTERM, then SIGKILL if it does not exit within ``timeout`` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_child(command: str, config: Path | None, broker_url: str) -> subprocess.Popen[bytes]:
    """``pacs-annotator COMMAND`` as a child of ``up``, sharing its config and broker."""
    args = [sys.executable, "-m", "worker", command]
    if config is not None:
        args += ["--config", str(config)]
    env = dict(os.environ, **{f"{ENV_PREFIX}BROKER_URL": broker_url})
    return subprocess.Popen(args, env=env, preexec_fn=child_dies_with_parent)


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT, so services shut down cleanly."""
    stop = threading.Event()

    def handler(signum: int, _frame: object) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop
