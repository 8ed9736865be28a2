"""The `ckl` command.

Process-wide set-up (logging levels, progress-bar switches) happens here, never at
import time of the library. User mistakes become one message and exit code 2.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from ckl.errors import InputError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="ckl: teach, update, edit and unlearn facts in language models, and measure what they forgot.")
# Piped output (logs, CI) gets a wide console so tables are not squeezed to 80 columns.
_WIDTH = None if sys.stdout.isatty() else int(os.environ.get("COLUMNS", "160"))
console = Console(width=_WIDTH)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else int(os.environ.get("COLUMNS", "160")))


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # ckl never downloads at run time
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _fail(err: Exception) -> None:
    from rich.markup import escape

    err_console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _guard(fn):
    """Run `fn`, turning user mistakes into exit code 2 with one message."""
    try:
        return fn()
    except InputError as err:
        _fail(err)
    except FileNotFoundError as err:
        _fail(InputError(str(err.filename), None, None, "not found"))


@app.command()
def world(
    out: Path = typer.Option(..., "--out", help="directory to write the stream to"),
    seed: int = typer.Option(0, help="random seed (the same seed gives identical files)"),
    people: int = typer.Option(200, help="people in the base knowledge"),
    stages: int = typer.Option(2, help="number of stages of changes"),
    learn: int = typer.Option(40, help="new people per stage"),
    update: int = typer.Option(40, help="facts updated per stage"),
    forget: int = typer.Option(10, help="deletion requests per stage"),
) -> None:
    """Write a synthetic temporal world (a stream directory of JSONL files)."""
    from ckl.world import WorldConfig, build_world

    try:
        config = WorldConfig(seed=seed, people=people, stages=stages, learn_per_stage=learn, update_per_stage=update, forget_per_stage=forget)
    except ValueError as err:
        _fail(InputError("<options>", None, None, str(err)))
    stream = build_world(config)
    stream.save(out)
    n = sum(len(c.learn) + len(c.update) + len(c.edit) + len(c.forget) for c in stream.stages)
    console.print(f"wrote {out}: {len(stream.base)} base facts, {stream.T} stages, {n} changes")


@app.command()
def pretrain(
    stream_dir: Path = typer.Option(..., "--world", "--stream", help="stream directory (from `ckl world`)"),
    out: Path = typer.Option(..., "--out", help="directory for the Hugging Face model"),
    target: float = typer.Option(0.97, help="invariant accuracy to reach"),
    max_epochs: int = typer.Option(300, help="epoch budget"),
    max_seconds: float = typer.Option(0.0, help="wall-time budget (0 = none)"),
    n_layer: int = typer.Option(4), n_embd: int = typer.Option(128), n_head: int = typer.Option(4),
    lr: float = typer.Option(3e-3), seed: int = typer.Option(0),
) -> None:
    """Train the tiny default base model from scratch on the stream's base knowledge."""
    _quiet_libraries()
    from ckl.experiment import make_accelerator
    from ckl.pretrain import PretrainConfig
    from ckl.pretrain import pretrain as run_pretrain
    from ckl.stream import Stream

    stream = _guard(lambda: Stream.load(stream_dir))
    try:
        config = PretrainConfig(n_layer=n_layer, n_embd=n_embd, n_head=n_head, lr=lr, max_epochs=max_epochs, max_seconds=max_seconds, target=target, seed=seed)
    except ValueError as err:
        _fail(InputError("<options>", None, None, str(err)))
    _, _, result = run_pretrain(stream, config, make_accelerator(), out, progress=lambda e, a: console.print(f"epoch {e}: invariant accuracy {a:.3f}"))
    console.print(f"saved {out}: {result.parameters:,} parameters, accuracy {result.accuracy:.3f} after {result.epochs} epochs, {result.seconds:.0f}s")
    if not result.reached_target:
        err_console.print(f"[yellow]warning:[/] target {target} not reached within the budget")


@app.command()
def run(
    config_path: Path = typer.Argument(..., metavar="EXPERIMENT.yaml", help="experiment config"),
    out: Optional[Path] = typer.Option(None, "--out", help="run directory (default runs/<name>)"),
    model: Optional[Path] = typer.Option(None, "--model", help="a local Hugging Face causal LM to use instead of the config's model/pretrain"),
) -> None:
    """Run every method x seed of an experiment; resumes if run again."""
    _quiet_libraries()
    from ckl.config import load_config
    from ckl.experiment import run_experiment
    from ckl.progress import RunProgress

    config = _guard(lambda: load_config(config_path))
    if model is not None:
        if not (model / "config.json").exists():
            _fail(InputError(str(model), None, None, "not a Hugging Face model directory (no config.json)"))
        config.model, config.pretrain = str(model.resolve()), None
    run_dir = out or Path("runs") / config.name
    with RunProgress(console) as progress:
        _guard(lambda: run_experiment(config, run_dir, say=console.print, progress=progress))
    show(run_dir)


@app.command()
def show(
    run_dir: Path = typer.Argument(..., metavar="RUN", help="run directory"),
    matrix: bool = typer.Option(True, help="print each method's matrix"),
    markdown: bool = typer.Option(False, "--markdown", help="print only the metrics table, as Markdown (mean ± std over seeds)"),
) -> None:
    """Print a run's metrics table (and each method's results matrix)."""
    from ckl.store import Store
    from ckl.summary import summarize
    from ckl.table import markdown_table, matrix_table, summary_table

    if not (run_dir / "results.sqlite").exists():
        _fail(InputError(str(run_dir), None, None, "no results.sqlite here; is this a run directory?"))
    with Store(run_dir / "results.sqlite") as store:
        summary = summarize(store)
    if markdown:
        print(markdown_table(summary))
        return
    if matrix:
        for method, entry in summary.items():
            for s in entry["per_seed"][:1]:
                if s.get("matrix"):
                    console.print(matrix_table(f"{method} (seed {s['seed']})", s["matrix"]))
    console.print(summary_table(summary, title=f"{run_dir}"))
    for method, entry in summary.items():
        for kind, n in entry["not_applied"].items():
            console.print(f"[yellow]note:[/] {method} does not support '{kind}': {n} request(s) per seed were not applied")


@app.command()
def methods() -> None:
    """List every method and part with what it does and the change kinds it supports."""
    from rich.table import Table

    from ckl.methods.base import TEACHING_KINDS, load_builtin

    table = Table(header_style="bold")
    for col in ("name", "family", "supports", "description"):
        table.add_column(col)
    for name, entry in sorted(load_builtin().items()):
        kinds = entry.kinds | (TEACHING_KINDS if entry.family == "part" else frozenset())
        order = [k for k in ("learn", "update", "edit", "forget") if k in kinds]
        table.add_row(name, entry.family, ", ".join(order), entry.help)
    console.print(table)
    console.print("Parts compose with '+': e.g. lora+replay. A training method supports learn, update and edit, plus what its parts add.")


@app.command()
def demo(
    out: Path = typer.Option(Path("demo_out"), "--out", help="output directory"),
    model: Optional[Path] = typer.Option(None, "--model", help="a local Hugging Face causal LM instead of pretraining the tiny default"),
) -> None:
    """World -> pretrain -> naive, replay, lora, lora+replay -> the table and summary.json."""
    _quiet_libraries()
    from ckl.demo import run_demo

    if model is not None and not (model / "config.json").exists():
        _fail(InputError(str(model), None, None, "not a Hugging Face model directory (no config.json)"))
    summary = _guard(lambda: run_demo(out, console, model=str(model) if model else None))
    console.print(f"demo finished in {summary['total_seconds']:.0f}s; summary in {out / 'summary.json'}")


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
