"""Progress for long work (pretraining, stages, training steps), with an ETA.

In a terminal: rich bars, redrawn in place. Anywhere else (a log file, CI): plain lines,
one when a task starts, one when a stage or task ends, and one at most every
`every_seconds` while it trains, each with elapsed time and ETA; rich's live display
would print nothing until the end there.
"""

from __future__ import annotations

import time
from datetime import timedelta

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def _clock(seconds: float | None) -> str:
    return "?" if seconds is None else str(timedelta(seconds=int(seconds)))


class RunProgress:
    """One bar per (method, seed) over its stages, or over pretraining's epochs."""

    def __init__(self, console: Console, every_seconds: float = 30.0):
        self.console = console
        self.plain = not console.is_terminal
        self.every = every_seconds
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=console, transient=False, disable=self.plain,  # disabled: tasks still keep time, nothing is drawn
        )
        self.task = None
        self.unit = "stages"
        self._last = 0.0

    def __enter__(self) -> RunProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def _say(self, force: bool = False) -> None:
        """A plain progress line (not in a terminal), at most every `every` seconds unless forced."""
        if not self.plain or self.task is None:
            return
        now = time.monotonic()
        if not force and now - self._last < self.every:
            return
        self._last = now
        task = self.progress.tasks[self.task]
        status = f", {task.fields['status']}" if task.fields.get("status") else ""
        remaining = task.time_remaining
        if remaining is None and task.completed and task.elapsed:  # rich waits for a speed estimate; a stage is enough
            remaining = task.elapsed * (task.total - task.completed) / task.completed
        eta = "done" if task.finished else f"ETA {_clock(remaining)}"
        self.console.print(f"{task.description}: {int(task.completed)}/{int(task.total)} {self.unit}{status}, "
                           f"elapsed {_clock(task.elapsed)}, {eta}", highlight=False, soft_wrap=True)

    def start(self, label: str, total: int) -> None:
        self.unit = "epochs" if label.startswith("pretraining") else "stages"
        self.task = self.progress.add_task(label, total=total, status="")
        self._say(force=True)

    def advance(self) -> None:
        if self.task is not None:
            self.progress.advance(self.task)
            self._say(force=True)

    def epoch(self, epoch: int, step: int, loss: float) -> None:
        """For epoch-counted work (pretraining): the bar shows epochs done."""
        if self.task is not None:
            self.progress.update(self.task, completed=epoch - 1, status=f"step {step}  loss {loss:.3f}")
            self._say()

    def finish(self, done: int, note: str = "") -> None:
        """Epoch-counted work that ended before its budget (a target reached): the bar ends
        at `done` of `done` instead of stopping part way."""
        if self.task is not None:
            self.progress.update(self.task, total=done, completed=done, status=note)
            self._say(force=True)

    def train_step(self, step: int, loss: float) -> None:
        if self.task is not None:
            self.progress.update(self.task, status=f"step {step}  loss {loss:.3f}")
            self._say()
