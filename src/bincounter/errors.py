"""The error contract.

`UserError` is a mistake the user can fix (bad path, bad file, bad flag). The CLI prints its message on
one line and exits 2, the container writes it to /opt/ml/output/failure. Anything else is a bug and keeps
its traceback.
"""


class UserError(Exception):
    """A problem with the user's input, reported in one line without a traceback."""


class DataError(UserError):
    """A data file (metadata JSON, file list, image, channel) is missing or malformed."""
