"""The composition root: settings, Celery app and tasks, job store, service processes, CLI."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pacs-annotator")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
