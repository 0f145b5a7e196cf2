"""The project's own error type: every user-facing failure names the file, the record and the reason."""

from __future__ import annotations

from os import PathLike


class InterPLMError(Exception):
    """A failure the user can act on: bad input, a missing file, a mismatched model.

    ``str(err)`` is one line, ``"<file>: <record>: <reason>"`` (parts that do not apply are left
    out), which the command line prints before exiting non-zero.
    """

    def __init__(self, reason: str, *, file: str | PathLike | None = None, record: str | None = None):
        self.reason = reason
        self.file = None if file is None else str(file)
        self.record = record
        parts = [p for p in (self.file, None if record is None else f"record {record}", reason) if p]
        super().__init__(": ".join(parts).replace("\n", " "))
