"""A bundle's own Python code (its ``scripts/`` package), importable while the bundle runs.

Model Zoo configs name classes of the bundle itself, e.g. the lung nodule detector's
``"_target_": "scripts.detection_inferer.RetinaNetInferer"``. MONAI's bundle runner makes
that work by putting the bundle root on ``sys.path`` (``ConfigWorkflow.run``) and leaving it
there. A worker holds several bundles in one process, and many of them ship a package named
``scripts``: whichever was imported first would be found by all. So here the root is on
``sys.path`` only while that bundle's code runs (config parsing, pre-processing, inference,
post-processing), and the modules it imported are swapped in and out of ``sys.modules`` with
it: each bundle sees its own ``scripts``, and a module of the same name elsewhere (another
bundle's, an installed one) is put back afterwards.

The import system is process-wide, so one lock serialises the bundles' use of it; the
worker runs one job at a time per process, so it is never contended there.
"""

from __future__ import annotations

import importlib
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

#: Guards sys.path and sys.modules while a bundle's names are swapped in (re-entrant: a
#: bundle's code may load another part of the same bundle).
_IMPORT_STATE = threading.RLock()


def top_level_names(root: Path) -> frozenset[str]:
    """The modules and packages directly in ``root`` that ``import NAME`` would find there."""
    names = set()
    for entry in root.iterdir() if root.is_dir() else ():
        if entry.is_file() and entry.suffix == ".py" and entry.stem.isidentifier():
            names.add(entry.stem)
        elif entry.is_dir() and entry.name.isidentifier() and any(entry.glob("*.py")):
            names.add(entry.name)
    return frozenset(names)


def _take(names: frozenset[str]) -> dict[str, ModuleType]:
    """Remove ``names`` and their submodules from ``sys.modules``; return what was there."""
    taken = {}
    for key in [k for k in sys.modules if k.partition(".")[0] in names]:
        taken[key] = sys.modules.pop(key)
    return taken


class BundleModules:
    """The import state of one bundle: its root on ``sys.path``, its own modules cached."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.names = top_level_names(root)
        self._own: dict[str, ModuleType] = {}

    @contextmanager
    def active(self) -> Iterator[None]:
        """Within: ``import scripts...`` finds this bundle's, as under MONAI's runner."""
        if not self.names:
            yield
            return
        entry = str(self.root)
        with _IMPORT_STATE:
            others = _take(self.names)
            sys.modules.update(self._own)
            # First on the path, so the bundle's own package wins over any installed one.
            sys.path.insert(0, entry)
            importlib.invalidate_caches()
            try:
                yield
            finally:
                if entry in sys.path:
                    sys.path.remove(entry)
                self._own = _take(self.names)
                sys.modules.update(others)
