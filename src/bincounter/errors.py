"""The error contract.

`UserError` is a mistake the user can fix (bad path, bad file, bad flag). The CLI prints its message on
one line and exits 2, the container writes it to /opt/ml/output/failure. Anything else is a bug and keeps
its traceback.
"""


class UserError(Exception):
    """A problem with the user's input, reported in one line without a traceback."""


class DataError(UserError):
    """A data file (metadata JSON, file list, image, channel) is missing or malformed."""


def write_failure_file(message: str) -> None:
    """Inside a SageMaker container the first failing process records the reason (one line) in the file named
    by BINCOUNTER_FAILURE_FILE (train_entry sets it to /opt/ml/output/failure); later writers leave it."""
    import os
    from pathlib import Path

    path = os.environ.get("BINCOUNTER_FAILURE_FILE")
    if not path:
        return
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "x") as f:  # exclusive create: the first failing rank wins
            f.write((message.strip().splitlines() or ["unknown error"])[0] + "\n")
    except OSError:
        pass
