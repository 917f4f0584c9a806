"""Rendered job previews, kept per job and version so that page reloads cost nothing.

A preview changes only when the job's results can: its attempts, state, finish time or the
results manifest. That makes a version string; the job page puts it in the image URL, and
the answer for a current version may be cached by the browser for a day, so the page's
auto-refresh does not ask for the image again. Renders run one at a time per process: a
burst of requests costs one image's memory, not one per request.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from worker.jobs.store import Job


def preview_version(job: Job, results_dir: Path) -> str:
    """Changes whenever what the preview shows can change."""
    manifest = results_dir / job.id / "manifest.json"
    try:
        results = manifest.stat().st_mtime_ns
    except FileNotFoundError:
        results = 0
    finished = job.finished_at.isoformat() if job.finished_at else ""
    key = f"{job.id}|{job.attempts}|{job.state.value}|{finished}|{job.instance_count}|{results}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


class PreviewCache:
    """A small LRU of rendered PNGs keyed by (job id, version)."""

    def __init__(self, entries: int) -> None:
        self.entries = entries
        self._pngs: OrderedDict[tuple[str, str], bytes | None] = OrderedDict()
        self._render_lock = threading.Lock()
        self._lock = threading.Lock()

    def _cached(self, key: tuple[str, str]) -> tuple[bool, bytes | None]:
        with self._lock:
            if key in self._pngs:
                self._pngs.move_to_end(key)
                return True, self._pngs[key]
        return False, None

    def get(self, key: tuple[str, str], render: Callable[[], bytes | None]) -> bytes | None:
        """The cached PNG for ``key``, else ``render()`` it (one render at a time)."""
        found, png = self._cached(key)
        if found:
            return png
        with self._render_lock:
            found, png = self._cached(key)  # rendered while this request waited
            if found:
                return png
            png = render()
            with self._lock:
                self._pngs[key] = png
                while len(self._pngs) > self.entries:
                    self._pngs.popitem(last=False)
        return png
