"""Errors a user can act on.

Every mistake in user input (a fact file, a change file, an experiment config) is raised
as `InputError`, which names the file, the line (or record) and the field. The CLI turns
it into one message on stderr and exit code 2, with nothing written.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
    more: list[InputError] = field(default_factory=list)  # further problems found in the same check

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
        if self.field:
            where += f": field '{self.field}'"
        return "\n".join([f"{where}: {self.message}", *(str(e) for e in self.more)])

    @classmethod
    def of(cls, errors: list[InputError]) -> InputError:
        """One error that reports every problem in `errors` (in order), the first as
        itself and the rest under `more`."""
        first, *rest = errors
        return cls(first.file, first.line, first.field, first.message, [*first.more, *rest])


class WeakBaseError(RuntimeError):
    """The pretrained base model missed its target: every table measured on it would
    mean little. The CLI prints the message and exits 1; `allow_weak_base` goes on."""


class DivergenceError(RuntimeError):
    """Training produced a NaN/inf loss or weights."""
