"""The contract every pipeline fulfils."""

from __future__ import annotations

from typing import Protocol

from pipelines.findings import Algorithm, Findings
from pipelines.volume import Volume


class Pipeline(Protocol):
    """A named algorithm that turns one volume into findings."""

    name: str
    algorithm: Algorithm
    modalities: frozenset[str]

    def run(self, volume: Volume) -> Findings: ...
