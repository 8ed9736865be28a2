"""Errors a user can act on.

Every mistake in user input (a fact file, a change file, an experiment config) is raised
as `InputError`, which names the file, the line (or record) and the field. The CLI turns
it into one message on stderr and exit code 2, with nothing written.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class InputError(Exception):
    """A user-supplied input is invalid.

    Attributes:
        file: path of the offending file (or "<config>" for in-memory configs).
        line: 1-based line or record number, or None when not line-oriented.
        field: the offending field or config key, or None.
        message: what is wrong and, where possible, what to do.
    """

    file: str
    line: int | None
    field: str | None
    message: str

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
        if self.field:
            where += f": field '{self.field}'"
        return f"{where}: {self.message}"


class DivergenceError(RuntimeError):
    """Training produced a NaN/inf loss or weights."""
