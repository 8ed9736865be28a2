"""Progress bars (rich) for long work: pretraining, stages and training steps."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class RunProgress:
    """One bar per (method, seed) over its stages, and a transient bar of training steps."""

    def __init__(self, console: Console):
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"), TimeElapsedColumn(), console=console, transient=False,
        )
        self.task = None
        self.step_task = None

    def __enter__(self) -> RunProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def start(self, label: str, total: int) -> None:
        if self.step_task is not None:
            self.progress.remove_task(self.step_task)
            self.step_task = None
        self.task = self.progress.add_task(label, total=total, status="")

    def advance(self) -> None:
        if self.task is not None:
            self.progress.advance(self.task)

    def epoch(self, epoch: int, step: int, loss: float) -> None:
        """For epoch-counted work (pretraining): the bar shows epochs done."""
        if self.task is not None:
            self.progress.update(self.task, completed=epoch - 1, status=f"step {step}  loss {loss:.3f}")

    def train_step(self, step: int, loss: float) -> None:
        if self.task is not None:
            self.progress.update(self.task, status=f"step {step}  loss {loss:.3f}")
