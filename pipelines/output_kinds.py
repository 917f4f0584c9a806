"""The names of the output kinds and the SOP classes they write: all that settings and
delivery need to know of them, without the writers (``pipelines.outputs``) and what those
import (highdicom's SR and SEG code, scikit-image), so loading the settings stays light.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Final

from pydicom.dataset import Dataset
from pydicom.uid import (
    Comprehensive3DSRStorage,
    GrayscaleSoftcopyPresentationStateStorage,
    KeyObjectSelectionDocumentStorage,
    RTStructureSetStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
)

#: Every output kind, in the order they are built and sent.
OUTPUT_KINDS: Final = ("seg", "rtstruct", "gsps", "sc", "sr", "kos")
#: What a destination receives when nobody says otherwise.
DEFAULT_OUTPUTS: Final = ("seg", "sr")
#: The SOP classes each kind writes: how a saved object's kind is known again. A kind is
#: available (accepted by the settings) once it is here and has a writer in
#: ``pipelines.outputs``.
SOP_CLASSES: Final[dict[str, frozenset[str]]] = {
    "seg": frozenset({str(SegmentationStorage)}),
    "rtstruct": frozenset({str(RTStructureSetStorage)}),
    "gsps": frozenset({str(GrayscaleSoftcopyPresentationStateStorage)}),
    "sc": frozenset({str(SecondaryCaptureImageStorage)}),
    "sr": frozenset({str(Comprehensive3DSRStorage)}),
    "kos": frozenset({str(KeyObjectSelectionDocumentStorage)}),
}


@dataclass(frozen=True)
class OutputOptions:
    """Settings of single kinds (the ``delivery.outputs_options`` settings)."""

    #: sc: one image per source slice (True) or only per slice with a finding (False).
    sc_every_slice: bool = False


def available_kinds() -> tuple[str, ...]:
    return tuple(kind for kind in OUTPUT_KINDS if kind in SOP_CLASSES)


def check_kinds(names: Collection[str]) -> tuple[str, ...]:
    """``names`` in build order, each once; ``ValueError`` naming any unknown one."""
    available = available_kinds()
    unknown = [name for name in names if name not in available]
    if unknown:
        raise ValueError(
            f"unknown output {', '.join(repr(n) for n in unknown)} (known: {', '.join(available)})"
        )
    return tuple(kind for kind in OUTPUT_KINDS if kind in names)


def output_kind(ds: Dataset) -> str:
    """The kind of an object we wrote, from its SOP class; ``ValueError`` if not ours."""
    sop_class = str(ds.get("SOPClassUID", ""))
    for kind, sop_classes in SOP_CLASSES.items():
        if sop_class in sop_classes:
            return kind
    raise ValueError(f"SOP class {sop_class or '-'} is not one of the output kinds")
