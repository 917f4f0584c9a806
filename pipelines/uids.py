"""Deterministic DICOM UIDs: the same job inputs always give the same output UIDs.

Determinism is what keeps a re-run job idempotent: the PACS receives an instance with a
SOP Instance UID it already holds and replaces it instead of storing a second copy.

Note: ``pydicom.uid.generate_uid(prefix=None, entropy_srcs=...)`` ignores ``entropy_srcs``
and returns a *random* 2.25 UID, so it cannot be used here. We build the 2.25 form from a
name-based (SHA-1, version 5) UUID instead, as DICOM PS3.5 B.2 allows.
"""

from __future__ import annotations

import json
import uuid

from pydicom.uid import UID

# Fixed namespace for pacs-annotator's name-based UUIDs (uuid5(NAMESPACE_URL, project URL)).
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/pacs-annotator/pacs-annotator")


def derive_uid(*parts: str) -> str:
    """A ``2.25.<int>`` UID that depends only on ``parts`` (order matters).

    The parts are JSON-encoded before hashing so ("a", "bc") and ("ab", "c") differ.
    """
    if not parts:
        raise ValueError("derive_uid needs at least one part")
    for part in parts:
        if not isinstance(part, str):
            raise TypeError(f"derive_uid parts must be str, got {type(part).__name__}")
    name = json.dumps(list(parts), separators=(",", ":"))
    return str(UID(f"2.25.{uuid.uuid5(_NAMESPACE, name).int}"))
