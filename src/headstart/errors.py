"""Exceptions raised for problems the user can fix.

The CLI prints a `HeadstartError` as one line (``error: ...``) and exits non-zero;
anything else is a bug and keeps its traceback under ``--debug``.
"""


class HeadstartError(Exception):
    """Bad input or an impossible request: the message says what was expected, what was
    found, and how to fix it."""


class DataError(HeadstartError):
    """A data folder, CSV or image that cannot be used as given."""


class BackboneError(HeadstartError):
    """An unknown backbone, or weights that cannot be had or do not fit."""


class ModelDirError(HeadstartError):
    """A model directory that is missing, incomplete or from an unknown format."""
