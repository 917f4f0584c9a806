"""Telling "the device ran out of memory" apart from other runtime errors of a model."""

from __future__ import annotations

import torch

from pipelines.errors import DeviceOutOfMemoryError
from pipelines.volume import Volume

#: What torch says when a CUDA or CPU allocation fails (not always as OutOfMemoryError).
_MESSAGES = ("out of memory", "can't allocate memory")


def out_of_memory(
    exc: RuntimeError, *, pipeline: str, device: torch.device, volume: Volume
) -> DeviceOutOfMemoryError | None:
    """The error to raise when ``exc`` is an allocation failure (cache freed), else None."""
    message = str(exc).lower()
    if not isinstance(exc, torch.OutOfMemoryError) and not any(t in message for t in _MESSAGES):
        return None
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return DeviceOutOfMemoryError(
        f"{pipeline}: out of memory on {device} for series "
        f"{volume.series_uid} ({tuple(volume.voxels.shape)} voxels): {exc}",
        pipeline=pipeline,
        device=str(device),
    )
