"""The `ckl` command.

Process-wide set-up (logging levels, progress-bar switches) happens here, never at
import time of the library. User mistakes become one message and exit code 2.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from typer.core import TyperGroup

from ckl.core.errors import InputError, WeakBaseError



def _command_name(ctx) -> str:
    """`ckl run`, `ckl import counterfact`: the command a user typed, for messages."""
    names, c = [], ctx
    while c.parent is not None:
        names.append(c.info_name)
        c = c.parent
    return " ".join(["ckl", *reversed(names), *([ctx.invoked_subcommand] if ctx.invoked_subcommand else [])])


# Typer >= 0.20 parses with its own copy of click, whose usage errors (BadParameter for
# `--people x`) derive from typer.TyperException, not click.ClickException.
_TYPER_CLICK = (typer.TyperException,) if hasattr(typer, "TyperException") else ()


def _flags_take_no_value() -> None:
    """Typer 0.29's help labels every option with its type, flags included (`--help
    <bool>`), though a flag takes no value; a flag's label is dropped here (no typer
    option says this)."""
    from typer.core import TyperOption

    shown = getattr(TyperOption, "display_type_rich", None)
    if shown is None or getattr(shown, "_ckl", False):
        return

    def display_type_rich(self, ctx):
        return None if getattr(self, "is_flag", False) and self.metavar is None else shown(self, ctx)

    display_type_rich._ckl = True
    TyperOption.display_type_rich = display_type_rich


_flags_take_no_value()


class _Commands(TyperGroup):
    """Every command runs under one handler: a user mistake (InputError) is one message
    and exit 2; anything unexpected is one line naming the command and exit 1, with the
    traceback only under `ckl --debug`. No traceback reaches a user otherwise."""

    def invoke(self, ctx):
        import click

        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, click.exceptions.Exit, click.ClickException, click.exceptions.Abort, *_TYPER_CLICK):
            raise  # usage errors (a bad option value): the parser's own message, exit 2
        except InputError as err:
            _fail(err)
        except WeakBaseError as err:  # not an input mistake: the run itself says its base is unfit (exit 1)
            from rich.markup import escape

            err_console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except Exception as err:
            if ctx.find_root().params.get("debug"):
                raise
            from rich.markup import escape

            command = _command_name(ctx)
            what = f"{type(err).__name__}: {err}".strip().splitlines()[0][:300] if str(err) else type(err).__name__
            err_console.print(
                f"[bold red]error:[/] {escape(command)} failed unexpectedly ({escape(what)}); "
                f"rerun as `{escape(command.replace('ckl', 'ckl --debug', 1))} ...` to see the traceback, and report it if the inputs are valid",
                highlight=False, soft_wrap=True,
            )
            raise typer.Exit(1) from None


app = typer.Typer(cls=_Commands, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="ckl: teach, update, edit and unlearn facts in language models, and measure what they forgot.")


def _print_version(value: bool) -> None:
    if value:
        from ckl import __version__

        print(f"ckl {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    debug: bool = typer.Option(False, "--debug", help="show the full traceback of an unexpected error"),
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True, help="print ckl's version and exit"),
) -> None:
    """ckl: teach, update, edit and unlearn facts in language models, and measure what they forgot."""
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


def _flag(name: str) -> str:
    """The command-line flag of a config field ("max_epochs" -> "--max-epochs")."""
    return "--" + name.replace("_", "-")


def _new_output(out: Path, what: str) -> None:
    """Refuse an output directory that holds anything (or is a file): ckl never writes
    over or beside files it did not make (exit 2, nothing written)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        _fail(InputError(str(out), None, None, f"{what} output exists and is not an empty directory; choose a new --out (ckl never overwrites)"))


def _guard(fn):
    """Run `fn`, turning user mistakes into exit code 2 with one message."""
    try:
        return fn()
    except InputError as err:
        _fail(err)
    except FileNotFoundError as err:
        _fail(InputError(str(err.filename), None, None, "not found"))


def _checked(stream_dir: Path, stream) -> list:
    """`ckl check`'s rules on a stream a command is about to use: errors stop it (exit 2,
    nothing written); the warnings are returned, for `_warn` once every other check passed."""
    from ckl.data.check import check_stream, raise_errors

    findings = _guard(lambda: check_stream(stream_dir, stream=stream))
    _guard(lambda: raise_errors(findings))
    return findings


def _warn(findings) -> None:
    from rich.markup import escape

    for finding in findings:
        err_console.print(f"[yellow]{escape(str(finding))}[/]", highlight=False, soft_wrap=True)


def _world_option(name: str, *flags: str):
    """A `ckl world` option from WorldConfig's field: its default and help, one definition."""
    from dataclasses import fields

    from ckl.data.world import WorldConfig

    spec = next(f for f in fields(WorldConfig) if f.name == name)
    return typer.Option(spec.default, *flags, help=spec.metadata["help"])


@app.command()
def world(
    out: Path = typer.Option(..., "--out", help="directory to write the stream to"),
    seed: int = _world_option("seed"),
    people: int = _world_option("people"),
    stages: int = _world_option("stages"),
    learn: int = _world_option("learn_per_stage", "--learn"),
    update: int = _world_option("update_per_stage", "--update"),
    forget: int = _world_option("forget_per_stage", "--forget"),
    corpus: int = _world_option("corpus_per_stage", "--corpus"),
    corpus_heldout: int = _world_option("corpus_heldout", "--corpus-heldout"),
    qa_fraction: float = _world_option("qa_fraction", "--qa-fraction"),
    background_people: int = _world_option("background_people", "--background-people"),
    min_probe_word_count: int = _world_option("min_probe_word_count", "--min-probe-word-count"),
    distinct_first_names: bool = _world_option("distinct_first_names", "--distinct-first-names/--shared-first-names"),
    two_hop: bool = _world_option("two_hop", "--two-hop/--no-two-hop"),
    dated: bool = _world_option("dated", "--dated/--undated"),
) -> None:
    """Write a synthetic temporal world (a stream directory of JSONL files)."""
    from ckl.data.world import WorldConfig, build_world

    _new_output(out, "the world's")

    try:
        config = WorldConfig(
            seed=seed, people=people, stages=stages, learn_per_stage=learn, update_per_stage=update, forget_per_stage=forget,
            corpus_per_stage=corpus, corpus_heldout=corpus_heldout, qa_fraction=qa_fraction, background_people=background_people, min_probe_word_count=min_probe_word_count,
            distinct_first_names=distinct_first_names, two_hop=two_hop, dated=dated,
        )
        stream = build_world(config)
    except ValueError as err:  # WorldConfig names its fields; say the flags instead
        flags = {"learn_per_stage": "learn", "update_per_stage": "update", "forget_per_stage": "forget", "corpus_per_stage": "corpus"}
        message = re.sub(r"WorldConfig\.(\w+)", lambda m: "--" + flags.get(m.group(1), m.group(1)).replace("_", "-"), str(err))
        _fail(InputError("<options>", None, None, message))
    stream.save(out)
    n = sum(len(c.learn) + len(c.update) + len(c.edit) + len(c.forget) for c in stream.stages)
    documents = sum(len(c.corpus) for c in stream.stages)
    corpora = f", {documents} corpus documents (+{sum(map(len, stream.domain_heldout.values()))} held out)" if documents else ""
    console.print(f"wrote {out}: {len(stream.base)} base facts, {stream.T} stages, {n} changes{corpora}")


def _pretrain(**values) -> None:
    """Train the tiny default base model from scratch on the stream's base knowledge."""
    from ckl.data.stream import Stream
    from ckl.train.config import PretrainConfig

    stream_dir, out = values.pop("stream_dir"), values.pop("out")
    stream = _guard(lambda: Stream.load(stream_dir))  # the inputs are checked before torch loads
    warnings = _checked(stream_dir, stream)
    _new_output(out, "the model's")
    _quiet_libraries()
    from ckl.run.experiment import make_accelerator
    from ckl.train.pretrain import knowledge_line
    from ckl.train.pretrain import pretrain as run_pretrain

    try:
        config = PretrainConfig(**values)
    except ValueError as err:
        _fail(InputError("<options>", None, _flag(err.field) if hasattr(err, "field") else None, str(err)))
    _warn(warnings)
    from ckl.core.progress import RunProgress

    with RunProgress(console) as bar:
        bar.start("pretraining (epochs)", config.max_epochs)
        _, _, result = run_pretrain(
            stream, config, make_accelerator(), out, progress=lambda e, k: console.print(f"epoch {e}: {knowledge_line(k)}"),
            step_progress=lambda e, s, loss: bar.epoch(e + 1, s, loss),
        )
        bar.finish(result.epochs, "target reached" if result.reached_target else "budget spent, target missed")
    console.print(f"saved {out}: {result.parameters:,} parameters, {knowledge_line(result.knowledge)} after {result.epochs} epochs, {result.seconds:.0f}s")
    if not result.reached_target:
        err_console.print(f"[yellow]warning:[/] target (statements {config.target}, paraphrase and extraction {config.knowledge_target}) not reached within the budget")


def _with_options(fn, cls, leading: list):
    """`fn` with a signature of `leading` parameters and one option per field of the
    dataclass `cls` (default and help from the field): a command whose options are the
    config's, one definition."""
    import dataclasses
    import inspect
    import typing

    hints = typing.get_type_hints(cls)

    def default(f):
        if f.default is not dataclasses.MISSING:
            return f.default
        return f.default_factory() if f.default_factory is not dataclasses.MISSING else ...  # ...: required

    params = list(leading) + [
        inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=hints[f.name],
                          default=typer.Option(default(f), f.metadata.get("flag", _flag(f.name)), metavar=f.metadata.get("metavar"), help=f.metadata["help"]))
        for f in dataclasses.fields(cls)
    ]
    fn.__signature__ = inspect.Signature(params)
    return fn


def _register_pretrain() -> None:
    import inspect

    from ckl.train.config import PretrainConfig

    leading = [
        inspect.Parameter("stream_dir", inspect.Parameter.KEYWORD_ONLY, annotation=Path,
                          default=typer.Option(..., "--world", "--stream", help="stream directory (from `ckl world`)")),
        inspect.Parameter("out", inspect.Parameter.KEYWORD_ONLY, annotation=Path,
                          default=typer.Option(..., "--out", help="directory for the Hugging Face model (new or empty)")),
    ]
    app.command("pretrain")(_with_options(_pretrain, PretrainConfig, leading))


_register_pretrain()


@app.command()
def run(
    config_path: Path = typer.Argument(..., metavar="EXPERIMENT.yaml", help="experiment config"),
    out: Optional[Path] = typer.Option(None, "--out", help="run directory (default runs/<name>)"),
    model: Optional[Path] = typer.Option(None, "--model", help="a local Hugging Face causal LM to use instead of the config's model/pretrain"),
    mlflow: bool = typer.Option(False, "--mlflow", help="log the finished run to MLflow (params, per-stage metrics, the report)"),
    mlflow_uri: Optional[str] = typer.Option(None, "--mlflow-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else the local file store ./mlruns)"),
    allow_weak_base: bool = typer.Option(False, "--allow-weak-base", help="run on a pretrained base model that missed its target (ckl show and the report then say so)"),
) -> None:
    """Run every method x seed of an experiment; resumes if run again."""
    from ckl.run.config import load_config  # torch-free: a mistake in the file is reported before torch loads

    config = _guard(lambda: load_config(config_path))
    _quiet_libraries()
    from ckl.run.experiment import end_processes, is_main_process, run_experiment
    from ckl.core.progress import RunProgress
    from ckl.run.rundir import path_component

    config.allow_weak_base = config.allow_weak_base or allow_weak_base
    if model is not None:
        if not (model / "config.json").exists():
            _fail(InputError(str(model), None, None, "not a Hugging Face model directory (no config.json)"))
        config.model, config.pretrain = str(model.resolve()), None
    run_dir = out or Path("runs") / path_component(config.name)  # a name like "../../etc" stays one directory under runs/
    if mlflow:
        from ckl.report.tracking import require_mlflow

        _guard(require_mlflow)  # before the run, not after it
    try:
        if not is_main_process():  # under `accelerate launch` the main process alone reports
            try:
                run_experiment(config, run_dir, say=lambda message: None)
            except (InputError, FileNotFoundError):  # the same error the main process prints
                raise typer.Exit(2) from None
            except WeakBaseError:
                raise typer.Exit(1) from None
            return
        with RunProgress(console) as progress:
            _guard(lambda: run_experiment(config, run_dir, say=console.print, progress=progress))
    finally:
        end_processes()
    show(run_dir)
    from ckl.data.facts import atomic_write_text
    from ckl.results.store import Store
    from ckl.results.summary import run_summary

    with Store(run_dir / "results.sqlite") as store:
        atomic_write_text(run_dir / "summary.json", json.dumps(run_summary(store), indent=2))
    console.print(f"summary in {run_dir / 'summary.json'}")
    if mlflow:
        from ckl.report import write_report
        from ckl.report.tracking import log_run

        report_path = write_report([run_dir], run_dir / "report.html")
        run_id = _guard(lambda: log_run(run_dir, mlflow_uri, report=report_path))
        console.print(f"logged to MLflow: run {run_id}; report in {report_path}")


@app.command()
def show(
    run_dir: Path = typer.Argument(..., metavar="RUN", help="run directory"),
    matrix: bool = typer.Option(True, help="print each method's matrix"),
    markdown: bool = typer.Option(False, "--markdown", help="print only the metrics table, as Markdown (mean ± std over seeds)"),
) -> None:
    """Print a run's metrics table (and each method's results matrix)."""
    from ckl.results.store import Store
    from ckl.results.summary import summarize
    from ckl.report.table import markdown_table, matrix_table, summary_table

    if not (run_dir / "results.sqlite").exists():
        _fail(InputError(str(run_dir), None, None, "no results.sqlite here; is this a run directory?"))
    from ckl.results.unlearning import has_forget, summarize_unlearning, unlearning_markdown, unlearning_table

    with Store(run_dir / "results.sqlite") as store:
        weak = store.get_meta("weak_base")
        environments = store.get_meta("environments") or []
        summary = summarize(store)
        unlearners = [m for m, e in summary.items() if e["seeds"] and "forget" not in e["not_applied"]]  # methods that applied deletions
        forgetting = summarize_unlearning(store, methods=unlearners) if unlearners and has_forget(store) else None
    from ckl.results.editing import editing_markdown, is_editing_run

    with Store(run_dir / "results.sqlite") as store:
        editing = editing_markdown(store) if is_editing_run(store) else None
        study = store.get_meta("study")
    if weak:
        from ckl.train.pretrain import knowledge_line

        line = f"warning: the base model missed its pretraining target ({knowledge_line(weak['knowledge'])}); the run used it because allow_weak_base was set, so read every number below with that in mind"
        print(f"> **{line}**\n") if markdown else err_console.print(f"[bold yellow]{line}[/]", highlight=False, soft_wrap=True)
    from ckl.core.environment import describe

    measured = "measured with " + "; then ".join(describe(e) for e in environments) if environments else None
    base = next((s for e in summary.values() for s in e["per_seed"] if s.get("complete") and s.get("invariant_before") is not None), None)
    base_line = (f"base model (row 0): invariant accuracy {base['invariant_before']:.3f}"
                 + (f", held-out perplexity {base['perplexity_before']:.2f}" if base.get("perplexity_before") else "")) if base else None
    if markdown:
        print(markdown_table(summary))
        if base_line:
            print(f"\n({base_line})")
        if measured:
            print(f"\n({measured})")
        if forgetting:
            print("\nUnlearning (docs/unlearning.md):\n\n" + unlearning_markdown(forgetting))
        if editing:
            print("\nEditing (docs/editing.md):\n\n" + editing)
        if study:
            print(f"\nStudy {study['name']} (docs/studies.md): **{study['verdict']}** - {study['line']}")
        return
    if matrix:
        for method, entry in summary.items():
            for s in entry["per_seed"][:1]:
                if s.get("matrix"):
                    console.print(matrix_table(f"{method} (seed {s['seed']})", s["matrix"]))
    console.print(summary_table(summary, title=f"{run_dir}"))
    if base_line:
        console.print(base_line, highlight=False)
    if forgetting:
        console.print(unlearning_table(forgetting, title="unlearning (docs/unlearning.md)"))
    if editing:
        console.print("\n[bold]Editing (docs/editing.md)[/]\n" + editing, highlight=False, soft_wrap=True)
    for method, entry in summary.items():
        for kind, n in entry["not_applied"].items():
            console.print(f"[yellow]note:[/] {method} does not support '{kind}': {n} request(s) per seed were not applied")
    if measured:
        console.print(measured, highlight=False, soft_wrap=True)
    if study:
        from rich.markup import escape

        console.print(f"[bold]study {escape(study['name'])}: {escape(study['verdict'])}[/] - {escape(study['line'])}", highlight=False, soft_wrap=True)


@app.command()
def study(
    name: Optional[str] = typer.Argument(None, metavar="NAME", help="the study (ckl study --list)"),
    config_path: Optional[Path] = typer.Option(None, "--config", help="YAML: experiment keys (world/stream, pretrain/model, seeds, eval) and the study's options under `study:`"),
    out: Optional[Path] = typer.Option(None, "--out", help="the study's run directory (default runs/study-NAME)"),
    list_studies: bool = typer.Option(False, "--list", help="list the studies and their options"),
) -> None:
    """Reproduce a finding of the literature: run its experiment, fit, store and print the verdict."""
    _quiet_libraries()
    from rich.markup import escape

    from ckl.study.base import get_study, load_study_config, load_studies, run_study, verdict_text

    if list_studies or name is None:
        import dataclasses

        for key, cls in sorted(load_studies().items()):
            console.print(f"[bold]{escape(key)}[/]: {escape(cls.question)}\n  {escape(cls.paper)}", highlight=False)
            for f in dataclasses.fields(cls.Config):
                default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
                console.print(f"    study.{f.name} = {default!r}: {escape(f.metadata.get('help', ''))}", highlight=False)
        if name is None and not list_studies:
            _fail(InputError("<command line>", None, "NAME", "name a study (listed above)"))
        return
    from ckl.core.progress import RunProgress
    from ckl.run.experiment import is_main_process

    cls = _guard(lambda: get_study(name))
    experiment, chosen = _guard(lambda: load_study_config(cls, config_path))
    run_dir = out or Path("runs") / f"study-{cls.name}"
    import torch
    from accelerate import PartialState

    if PartialState(cpu=not torch.cuda.is_available()).num_processes > 1:  # a study's own measurements (re-alignment, injection) train in one process
        if is_main_process():
            _fail(InputError("<command line>", None, None, "ckl study runs in one process; run it without `accelerate launch` "
                             "(`ckl run` under `accelerate launch` is the data-parallel path, docs/scaling.md)"))
        raise typer.Exit(2)
    with RunProgress(console) as progress:
        result = _guard(lambda: run_study(chosen, experiment, run_dir, say=console.print, progress=progress))
    console.print(f"[bold]{escape(verdict_text(result))}[/]", highlight=False, soft_wrap=True)
    console.print(f"stored in {run_dir / 'results.sqlite'}; `ckl report {run_dir}` draws it")


@app.command()
def methods() -> None:
    """List every method and part with what it does and the change kinds it supports."""
    from rich.table import Table

    from ckl.data.facts import STAGE_KINDS
    from ckl.methods.base import TEACHING_KINDS, load_builtin

    table = Table(header_style="bold")
    for col in ("name", "family", "supports", "description"):
        table.add_column(col)
    for name, entry in sorted(load_builtin().items()):
        kinds = entry.kinds | (TEACHING_KINDS if entry.family == "part" else frozenset())
        order = [k for k in STAGE_KINDS if k in kinds]
        table.add_row(name, entry.family, ", ".join(order), entry.help)
    console.print(table)
    console.print("Parts compose with '+': e.g. lora+replay. A training method supports learn, update, edit and corpus (continual pre-training), plus what its parts add.")
    from rich.markup import escape

    from ckl.methods.base import BROKEN

    for module, why in sorted(BROKEN.items()):
        console.print(f"[red]not loaded[/red]: {escape(module)} ({escape(why)})")


@app.command()
def demo(
    out: Path = typer.Option(Path("demo_out"), "--out", help="output directory"),
    model: Optional[Path] = typer.Option(None, "--model", help="a local Hugging Face causal LM instead of pretraining the tiny default"),
    allow_weak_base: bool = typer.Option(False, "--allow-weak-base", help="go on when the pretrained base model misses its target"),
    threads: int = typer.Option(2, "--threads", min=0, help="torch intra-op threads for the run, whatever OMP_NUM_THREADS says (the README's numbers: 2; 0 = torch's default)"),
) -> None:
    """World -> pretrain -> naive, replay, lora, lora+replay over 3 seeds -> the table and summary.json."""
    _quiet_libraries()
    from ckl.app.demo import run_demo

    if model is not None and not (model / "config.json").exists():
        _fail(InputError(str(model), None, None, "not a Hugging Face model directory (no config.json)"))
    summary = _guard(lambda: run_demo(out, console, model=str(model) if model else None, allow_weak_base=allow_weak_base, threads=threads))
    console.print(f"demo finished in {summary['total_seconds']:.0f}s; summary in {out / 'summary.json'}")


@app.command()
def report(
    runs: list[Path] = typer.Argument(..., metavar="RUN...", help="run directories"),
    out: Path = typer.Option(Path("report.html"), "-o", "--out", help="the HTML file to write"),
) -> None:
    """Write one self-contained HTML report (plots, tables, drill-down) of one or more runs."""
    from ckl.report import write_report

    path = _guard(lambda: write_report(runs, out))
    console.print(f"wrote {path}")


@app.command()
def compare(runs: list[Path] = typer.Argument(..., metavar="RUN...", help="run directories")) -> None:
    """Print the key table of several runs side by side."""
    from rich.markup import escape

    from ckl.report import compare_table

    table, front, warning = _guard(lambda: compare_table(runs))
    console.print(table)
    if front:
        console.print("Pareto front of retention and acquisition: " + escape(", ".join(front)))
    if warning:
        err_console.print(f"[bold yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)


def _update(**values) -> None:
    """Apply new, changed and deleted facts to a model, check the gates, write the model and a report."""
    _quiet_libraries()
    from ckl.core.progress import RunProgress
    from ckl.app.update import UpdateRequest, run_update

    request = UpdateRequest(**values)
    with RunProgress(console) as progress:
        result = _guard(lambda: run_update(request, say=console.print, progress=progress))
    if not result.passed:
        raise typer.Exit(1)


def _register_update() -> None:
    from ckl.app.update import UpdateRequest

    app.command("update")(_with_options(_update, UpdateRequest, []))


_register_update()


import_app = typer.Typer(cls=_Commands, no_args_is_help=True, help="Write a benchmark's files as a ckl stream directory: one subcommand per format.")
app.add_typer(import_app, name="import")


def _importer_command(name: str):
    """`ckl import <name>`, built from the importer's registration: its source argument,
    `--out`, and one option per field of its options dataclass (default and help from
    the field), so a new importer needs no code here."""
    import dataclasses
    import inspect
    import typing

    from ckl.data.formats.registry import importers

    importer = importers()[name]
    hints = typing.get_type_hints(importer.options)
    params = [
        inspect.Parameter("source", inspect.Parameter.KEYWORD_ONLY, annotation=Path,
                          default=typer.Argument(..., metavar=importer.source, help=importer.source_help)),
        inspect.Parameter("out", inspect.Parameter.KEYWORD_ONLY, annotation=Path,
                          default=typer.Option(..., "--out", help="stream directory to write (new or empty)")),
    ]
    for f in dataclasses.fields(importer.options):
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=hints[f.name],
                                        default=typer.Option(f.default, _flag(f.name), help=f.metadata["help"])))

    def command(**values) -> None:
        from ckl.data.formats.registry import import_to

        source, out = values.pop("source"), values.pop("out")
        stream = _guard(lambda: import_to(name, source, out, values))
        what = importer.describe(stream, importer.options(**values)) if importer.describe else f"{len(stream.base)} base facts, {stream.T} stage(s)"
        console.print(f"wrote {out}: {what}")

    command.__signature__ = inspect.Signature(params)
    command.__doc__ = importer.help
    command.__name__ = f"import_{name}"
    return command


def _register_import_commands() -> None:
    from ckl.data.formats.registry import importers

    for name in sorted(importers()):
        import_app.command(name)(_importer_command(name))
    # the names of earlier releases, kept working (not listed in --help)
    for name in ("knowundo", "pile"):
        app.command(f"import-{name}", hidden=True)(_importer_command(name))


_register_import_commands()


@app.command()
def locate(
    model: Path = typer.Option(..., "--model", help="a local Hugging Face causal LM"),
    stream_dir: Path = typer.Option(..., "--stream", "--world", help="stream directory whose base facts are traced"),
    facts: int = typer.Option(20, "--facts", help="base facts to trace"),
    samples: int = typer.Option(4, help="noise draws per fact"),
) -> None:
    """Causal tracing: per layer, how much restoring one hidden state recovers a fact."""
    _quiet_libraries()
    from ckl.methods.edit.locate import locate_table

    result, table = _guard(lambda: locate_table(model, stream_dir, facts=facts, samples=samples))
    console.print(table)
    console.print("Each cell: mean recovered probability of the true object when that state is restored in a run with the subject's embeddings corrupted by noise.")


@app.command("harness-tasks")
def harness_tasks(
    source: Path = typer.Argument(..., metavar="RUN_OR_STREAM", help="a run directory (its stream and eval settings) or a stream directory"),
    out: Path = typer.Option(..., "--out", help="new or empty directory for the task YAMLs and JSONL documents"),
    prefix: str = typer.Option("ckl", "--prefix", help="task name prefix (tasks are PREFIX_statement, PREFIX_paraphrase, ...)"),
) -> None:
    """Write the probes as lm-evaluation-harness multiple-choice tasks (acc = ckl's rank metric)."""
    from ckl.data.facts import parse_json, read_input_text
    from ckl.data.stream import Stream
    from ckl.evaluate.harness import export_tasks
    from ckl.run.config import EvalConfig, ExperimentConfig

    evaluation, stream_dir = EvalConfig(), source
    config_path = source / "config.json"
    if config_path.is_file() and not (source / "relations.jsonl").exists():  # a run directory: the config it stored
        config = _guard(lambda: ExperimentConfig.from_dict(parse_json(read_input_text(config_path), str(config_path), None), str(config_path)))
        evaluation, stream_dir = config.eval, Path(config.stream) if config.stream else source / "world"
    if not prefix.replace("_", "").isalnum():
        _fail(InputError("--prefix", None, None, f"must be letters, digits and underscores, got {prefix!r}"))
    stream = _guard(lambda: Stream.load(stream_dir))
    _new_output(out, "the tasks'")
    counts = export_tasks(stream.probes(kinds=evaluation.kinds, max_candidates=evaluation.max_candidates), out, prefix)
    console.print(f"wrote {len(counts)} task(s) to {out}: " + ", ".join(f"{k} ({n} docs)" for k, n in counts.items()), soft_wrap=True)
    console.print(f"run them with: lm_eval --model hf --model_args pretrained=MODEL --include_path {out} --tasks {prefix}", soft_wrap=True)


data_app = typer.Typer(cls=_Commands, no_args_is_help=True, help="The benchmark files ckl imports: where they come from, and getting them.")
app.add_typer(data_app, name="data")


@data_app.command("list")
def data_list() -> None:
    """Every data source: what it is, its licence, whether a sample ships with ckl."""
    from rich.markup import escape

    from ckl.data.sources import SOURCES

    for s in SOURCES.values():
        console.print(f"[bold]{s.name}[/]: {escape(s.what)}", soft_wrap=True)
        console.print(f"  licence: {escape(s.licence)}; sample shipped: {'yes' if s.sample else 'no'}", soft_wrap=True, highlight=False)
        console.print(f"  then: {escape(s.then)}", soft_wrap=True, highlight=False)


@data_app.command("get")
def data_get(
    name: str = typer.Argument(..., metavar="NAME", help="a data source (see `ckl data list`)"),
    out: Path = typer.Option(..., "--out", help="new or empty directory to write the files to"),
    mirror: Optional[Path] = typer.Option(None, "--from", help="a local directory holding the files under their names (no download)"),
    sample: bool = typer.Option(False, "--sample", help="copy the small sample shipped with ckl instead (no network)"),
    no_verify: bool = typer.Option(False, "--no-verify", help="accept files whose SHA-256 differs from the version ckl was measured on"),
) -> None:
    """Fetch a benchmark's files from their public origin (pinned to a commit, checksums checked), or its shipped sample."""
    from ckl.data.sources import SOURCES, get

    written = _guard(lambda: get(name, out, mirror=mirror, verify=not no_verify, sample=sample, say=console.print))
    console.print(f"wrote {len(written)} file(s) to {out}; next: {SOURCES[name].then.format(out=out, first=written[0])}", soft_wrap=True)


@app.command()
def check(
    stream_dir: Path = typer.Argument(..., metavar="STREAM", help="stream directory (from `ckl world`, `ckl import` or written by hand)"),
    metric: str = typer.Option("em", "--metric", help="the metric the runs will use: em or rank (a relation without candidates is an error for rank)"),
    strict: bool = typer.Option(False, "--strict", help="exit 2 on warnings too"),
) -> None:
    """Check a stream for what loads but makes results wrong (docs/formats.md: every rule); exit 2 on an error."""
    from rich.markup import escape

    from ckl.data.check import check_stream, errors

    if metric not in ("em", "rank"):
        _fail(InputError("--metric", None, None, f"must be em or rank, got {metric!r}"))
    findings = _guard(lambda: check_stream(stream_dir, rank_metric=metric == "rank"))
    for finding in findings:
        colour = "red" if finding.severity == "error" else "yellow"
        console.print(f"[{colour}]{escape(str(finding))}[/]", highlight=False, soft_wrap=True)
    n_err = len(errors(findings))
    n_warn = len(findings) - n_err
    console.print(f"{stream_dir}: {n_err} error(s), {n_warn} warning(s)" if findings else f"{stream_dir}: no problems found", soft_wrap=True)
    if n_err or (strict and n_warn):
        raise typer.Exit(2)


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
