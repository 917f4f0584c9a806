"""Errors that describe bad input: the job fails with the message, nothing is retried."""


class InputError(ValueError):
    """The received data cannot be processed as it is (a clear reason is in the message)."""


class VolumeError(InputError):
    """A series cannot form a consistent 3D volume."""


class UnsupportedSeriesError(InputError):
    """A series of a kind no pipeline handles (e.g. an image-less SOP class)."""
