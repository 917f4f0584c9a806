"""Helpers for tests that start real external processes (redis-server, storescp, Orthanc...).

Everything here binds to 127.0.0.1 on ports picked by the kernel, so tests can run in parallel
with each other and with services already running on the machine.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

__all__ = [
    "free_port",
    "log_tail",
    "pid_alive",
    "require_binaries",
    "start_command",
    "stop_process",
    "wait_for_port",
    "wait_for_process_gone",
]


def require_binaries(*names: str) -> None:
    """Skip the calling test (``pytest.skip``) when any of the named executables is missing.

    A name may be a bare command (looked up on PATH) or a path (a plugin .so, say), which
    only has to exist.
    """
    missing = [name for name in names if _which(name) is None]
    if missing:
        pytest.skip(
            "required binaries not installed: "
            + ", ".join(missing)
            + " (Debian packages: orthanc, orthanc-dicomweb, dcmtk, redis-server)"
        )


def _which(name: str) -> str | None:
    if os.sep in name:
        return name if Path(name).exists() else None
    return shutil.which(name)


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 (and 0.0.0.0) a moment ago.

    There is an unavoidable race between closing the probe socket and the child binding it;
    callers that start a server should retry on "address in use" if that ever matters.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("0.0.0.0", 0))  # Orthanc binds DICOM on 0.0.0.0: probe the same
        return int(sock.getsockname()[1])


def wait_for_port(
    host: str,
    port: int,
    timeout: float = 10.0,
    proc: subprocess.Popen[Any] | None = None,
) -> None:
    """Wait until a TCP connect to ``host:port`` succeeds.

    Raises ``TimeoutError`` after ``timeout`` seconds, or ``RuntimeError`` at once if ``proc``
    is given and exits first.
    """
    deadline = time.monotonic() + timeout
    last_error: OSError | None = None
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"process {proc.args!r} exited with code {proc.returncode} "
                f"before {host}:{port} accepted connections"
            )
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"{host}:{port} did not accept connections within {timeout:.1f} s "
                f"(last error: {last_error})"
            )
        time.sleep(0.05)


def pid_alive(pid: int) -> bool:
    """True while a process with this PID exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); look at /proc where available.
    stat = Path(f"/proc/{pid}/stat")
    try:
        fields = stat.read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return True
    return fields[0] != "Z"


def wait_for_process_gone(pid: int, timeout: float = 10.0) -> bool:
    """Poll until ``pid`` no longer exists; returns False on timeout."""
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10.0) -> int | None:
    """Stop ``proc``: SIGTERM, wait up to ``timeout`` s, then SIGKILL; wait for the PID to go.

    ``timeout <= 0`` sends SIGKILL straight away. Safe to call on a process that has already
    exited. Returns the exit code (None only if the process could not be reaped).
    """
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            if timeout > 0:
                proc.send_signal(signal.SIGTERM)
            else:
                proc.kill()
        try:
            proc.wait(timeout=timeout if timeout > 0 else 10.0)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10.0)
    if proc.returncode is None:
        # Not reaped (should not happen after SIGKILL): at least wait for the PID to vanish.
        wait_for_process_gone(proc.pid, timeout=5.0)
    # Once wait() has reaped the child its PID no longer exists (and may be reused).
    return proc.returncode


def log_tail(path: Path, max_lines: int = 40) -> str:
    """The last ``max_lines`` lines of a log file, or a note if it cannot be read."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return "\n".join(lines[-max_lines:])


def start_command(command: str, config: Path, log_path: Path) -> subprocess.Popen[bytes]:
    """``pacs-annotator COMMAND --config CONFIG`` as a process, its output into ``log_path``."""
    with log_path.open("wb") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "worker", command, "--config", str(config)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
