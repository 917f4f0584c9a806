"""Errors that describe bad input: the job fails with the message, nothing is retried."""


class InputError(ValueError):
    """The received data cannot be processed as it is (a clear reason is in the message)."""


class VolumeError(InputError):
    """A series cannot form a consistent 3D volume."""


class ModelRunError(InputError):
    """A model could not process this series (its transforms or network refused the input)."""


class BundleError(ValueError):
    """A MONAI bundle directory cannot be used: a configuration error, found at load time."""


class DeviceOutOfMemoryError(RuntimeError):
    """The model ran out of memory on its device.

    Not an ``InputError``: the series may well run elsewhere (a CPU worker), so the worker
    decides whether the job fails with this reason or is retried on another queue.
    """

    def __init__(self, message: str, *, pipeline: str, device: str) -> None:
        super().__init__(message)
        self.pipeline = pipeline
        self.device = device
