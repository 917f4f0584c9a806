"""The composition root, grouped as the data flows (see docs/architecture.md): config, jobs,
run, delivery, sources, service, admin, monitor and the CLI."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pacs-annotator")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
