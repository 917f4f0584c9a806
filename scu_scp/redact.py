"""Text that is safe to put in a log line, an error message, the API or the monitor.

Two dangers, one module: credentials written into a URL (``https://user:secret@host``,
``redis://:secret@host``) would be shown to whoever reads the message, and control
characters in a received value (a newline or an ANSI escape in an AccessionNumber) would
let a sender forge log lines or repaint an admin's terminal.
"""

from __future__ import annotations

import re

__all__ = ["escape_controls", "redact_credentials"]

# scheme://userinfo@ : the userinfo runs to the last "@" before the path, as urlsplit reads it.
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/?#\s]*@")

# C0 controls, DEL, C1 controls and the Unicode line/paragraph separators; tab is harmless.
_CONTROLS = [*range(0x00, 0x09), *range(0x0A, 0x20), *range(0x7F, 0xA0), 0x2028, 0x2029]
_NAMED = {"\n": "\\n", "\r": "\\r", "\x1b": "\\x1b"}
_ESCAPES = {
    code: _NAMED.get(chr(code), f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
    for code in _CONTROLS
}
_ESCAPES_BUT_NEWLINE = {code: text for code, text in _ESCAPES.items() if code != ord("\n")}


def redact_credentials(text: str) -> str:
    """``text`` with the user and password of every URL in it replaced by ``***``.

    Works on a bare URL and on a message quoting URLs (an exception's text).
    """
    return _USERINFO.sub(r"\1***@", text)


def escape_controls(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with control characters written visibly (``\\n``, ``\\x1b``), so that it
    stays on one line; ``keep_newlines`` for multi-line text such as a traceback."""
    return text.translate(_ESCAPES_BUT_NEWLINE if keep_newlines else _ESCAPES)
