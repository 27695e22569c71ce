"""Errors that carry a message meant for the user.

The CLI prints an :class:`ActionRayError` as one line (no traceback) and exits with a non-zero
code, so every message must say *what* is wrong (the file, key or URL) and *what to do*.
"""


class ActionRayError(Exception):
    """Base class for errors whose message is shown to the user as is."""


class ConfigError(ActionRayError):
    """A configuration key or value is wrong; the message names the key."""


class StoreError(ActionRayError):
    """A Zarr volume store is missing, unreadable, or not an action-ray store."""


class CaseError(ActionRayError):
    """One input case (scan/label pair) is unusable; the message names the file and the reason."""
