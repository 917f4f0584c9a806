"""Process set-up shared by every service command: log format and file-creation mask.

Each record's message goes out on one line, whatever a sender put in a DICOM value (an
AccessionNumber with a newline cannot forge a record, an ANSI escape cannot repaint the
admin's terminal), and without credentials written into a URL. Data files are created
0600 and folders 0700 (umask 077): the spool, results, job database and secrets hold
patient data or keys, and children (the worker, the monitor, redis-server) inherit it.
"""

from __future__ import annotations

import logging
import os
import sys
from types import TracebackType
from typing import TypeAlias

from scu_scp.redact import escape_controls, redact_credentials

__all__ = [
    "SERVICE_UMASK",
    "SafeFormatter",
    "configure_logging",
    "receiver_process_setup",
    "restrict_new_files",
]

SERVICE_UMASK = 0o077
FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"

_ExcInfo: TypeAlias = (
    tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]
)


class SafeFormatter(logging.Formatter):
    """Escapes control characters and redacts URL credentials in what a record carries.

    The message (format and arguments, whoever logged it: our code, pynetdicom, Celery)
    is escaped to one line; a traceback keeps its line breaks but has its other control
    characters escaped, and every line after its first indented, so a line that starts at
    the left margin is always the start of a record.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = redact_credentials(escape_controls(record.message))
        return super().formatMessage(record)

    def formatException(self, ei: _ExcInfo) -> str:  # noqa: N802 - logging's name
        return _indented(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:  # noqa: N802 - logging's name
        return _indented(super().formatStack(stack_info))


def _indented(text: str) -> str:
    safe = redact_credentials(escape_controls(text, keep_newlines=True))
    return "\n".join(
        line if line.startswith((" ", "\t")) else f"  {line}" for line in safe.split("\n")
    )


def configure_logging(level: str) -> None:
    """Root logger to stderr through :class:`SafeFormatter` (records of every library)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(SafeFormatter(FORMAT))
    logging.basicConfig(level=level, handlers=[handler])


def restrict_new_files() -> None:
    """Files this process and its children create are 0600, folders 0700."""
    os.umask(SERVICE_UMASK)


def receiver_process_setup(level: str) -> None:
    """What an SCP receiver process (``scp.processes``) runs first: the service's logging
    and file modes, as the SCP process that started it."""
    configure_logging(level)
    restrict_new_files()
