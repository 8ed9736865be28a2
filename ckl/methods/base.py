"""Methods and the parts they are composed of.

A method turns (model, stage change) into a new model. Training methods are a list of
small parts around the one training loop (`ckl.train.loop.train`), so "lora+replay" is
configuration, not code. The fixed order, for parts p1..pn of a method:

    model = pn.prepare(...p1.prepare(model))    scope: freeze, add adapters / blocks
    facts = p.select_facts(change facts, ...)    pacing: which of them this epoch trains (a curriculum)
    facts = facts + p.extra_facts(...)           data: replay mixes earlier knowledge in
    docs = render(facts) + p.extra_documents(...)  ready-made text (e.g. self-generated)
    train(model, loss terms and gradient filters of p1..pn)
    model = p1.finish(...pn.finish(model))       post-steps, innermost scope first
    p.observe(model, change)                     update buffers / statistics (e.g. Fisher)

Parts register themselves by name at the bottom of their module
(`register_part("replay", ReplayConfig, Replay, ...)`); the CLI, `ckl methods`, the
experiment config and the tests read the registry. Methods that do not train (editors,
retrieval) register with `register_method` and implement `Method` directly.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ckl.core.errors import DivergenceError
from ckl.core.checks import ConfigError, did_you_mean
from ckl.data.facts import CORPUS, Fact, Probe, Relation
from ckl.model.lm import count_parameters
from ckl.data.stream import Change, render_documents
from ckl.train.loop import LossTerm, TrainConfig, rng_for, train

# What every training method applies by training on text: new and changed facts, and a
# stage's domain corpus (continual pre-training).
TEACHING_KINDS = frozenset({"learn", "update", "edit", CORPUS})


@dataclass
class StageContext:
    """What a method may know while it applies one stage."""

    relations: dict[str, Relation]
    base: Sequence[Fact]  # the knowledge the base model was trained on (K0)
    stage: int
    seed: int
    tokenizer: Any
    accelerator: Any
    change: Change | None = None  # the stage being applied
    progress: Callable[[int, int, float], None] | None = None
    model_dir: Any = None  # the base model's directory (editors cache key statistics next to it)
    general_text: tuple[str, ...] = ()  # the stream's general training text (what the base model read)
    background: tuple[str, ...] = ()  # the stream's background documents (read in pretraining too)
    qa_subjects: frozenset[str] | None = None  # subjects whose question-answer lines are trained (Stream.qa_subjects)
    # known(model, facts) -> the fraction of `facts` the model states correctly (greedy exact
    # match on statement probes). Set by the runner, which sits above evaluation; the
    # stopping rule `train.until` needs it.
    known: Callable[[Any, Sequence[Fact]], float] | None = None
    # curve(model, step, epoch, loss) -> None: scores and keeps one point of the in-stage
    # curve (`train.eval_every`). Set by the runner, which stores the points with the row.
    curve: Callable[[Any, int, int, float], None] | None = None
    epoch: int = 0  # the epoch whose documents are being rendered (set by TrainingMethod)
    epochs: int = 0  # the stage's epoch budget, train.epochs (set by TrainingMethod)


@dataclass
class ApplyStats:
    """Cost and coverage of applying one stage."""

    seconds: float = 0.0
    trainable_params: int = 0
    total_params: int = 0
    tokens_seen: int = 0
    steps: int = 0
    epochs: int = 0  # epochs trained (fewer than train.epochs when train.until stopped early)
    not_applied: dict[str, int] = field(default_factory=dict)  # change kind -> facts left unapplied


class Method:
    """Everything the runner (experiment, checkpoints, `ckl update`) calls on a method, with
    the plain case as the default; a method overrides what applies to it. Training methods
    are `TrainingMethod` (parts around the loop); editors subclass this directly."""

    name: str = ""
    kinds: frozenset[str] = frozenset()  # change kinds it applies; the rest are reported unapplied
    train_config: TrainConfig | None = None  # the training loop's settings, for methods that train
    parts: Sequence[Part] = ()  # the parts of a training method

    def apply(self, model, change: Change, ctx: StageContext) -> tuple[Any, ApplyStats]:
        raise NotImplementedError

    def state_dict(self) -> dict:
        """What the method must remember across stages (JSON-able data or tensors)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        return None

    def restore(self, model):
        """A model loaded from a checkpoint, after `load_state_dict`, with what the method
        keeps beside the weights (adapters, a hooked memory) re-attached."""
        return model

    def use_tokenizer(self, tokenizer) -> None:
        """The tokenizer of a model loaded from a checkpoint (after `restore`), for a method
        that reads probes with the model itself in `transform_probes` (l2p's query);
        `apply` gets it in its StageContext. Nothing by default."""
        return None

    def transform_probes(self, probes: Sequence[Probe]) -> Sequence[Probe]:
        """The probes as the method's model is asked them. In-context methods (IKE) put
        demonstrations in the prompt; ids stay. The default asks them as they are."""
        return probes

    def row_notes(self) -> dict:
        """Numbers about the last `transform_probes` to store with the row it scored (e.g.
        a retriever's recall@k); none by default."""
        return {}

    def kept_outside_weights(self) -> list[str]:
        """Names of the method (or its parts) that keep what they learned outside the
        model's weights (adapters beside them, a hooked memory, prompt demonstrations). A
        model they changed is complete only with their state, so its saved Hugging Face
        directory alone does not hold what was learned (`ckl update` refuses them)."""
        return []


class Part(LossTerm):
    """A composable piece of a training method. Every hook is optional (no-op here)."""

    name: str = ""
    kinds: frozenset[str] = frozenset()  # change kinds this part adds to a method
    keeps_modules: bool = False  # True: it attaches modules beside the weights (adapters), re-attached by `restore`
    incompatible: frozenset[str] = frozenset()  # parts it cannot be composed with (build_method refuses the composition)
    requires: frozenset[str] = frozenset()  # parts it needs in the same method (build_method refuses it without them)

    def check(self, train: TrainConfig) -> str | None:
        """Why this part cannot train under `train`, or None (build_method refuses it)."""
        return None

    def prepare(self, model, ctx: StageContext):
        return model

    def select_facts(self, facts: list[Fact], ctx: StageContext) -> list[Fact]:
        """The stage's teaching facts this epoch (`ctx.epoch` of `ctx.epochs`) trains on,
        in their order; all of them by default (a curriculum paces them in)."""
        return facts

    def extra_facts(self, facts: list[Fact], ctx: StageContext, rng: random.Random) -> list[Fact]:
        return []

    def extra_documents(self, ctx: StageContext, rng: random.Random) -> list[str]:
        """Ready-made training text for this epoch, beside the rendered facts (e.g. text
        the stage-start model generated itself)."""
        return []

    def finish(self, model, ctx: StageContext):
        return model

    def restore(self, model):
        """Re-attach what the part keeps beside the model's own weights (modules held in
        its state) to a model loaded from a checkpoint, after `load_state_dict`."""
        return model

    def observe(self, model, change: Change, ctx: StageContext) -> None:
        """After the stage, with the finished model (adapters merged)."""
        return None

    def row_notes(self) -> dict:
        """Numbers about the part's last stage to store with the row (e.g. the ranks an
        adaptive-rank scope chose); none by default."""
        return {}

    def state_dict(self) -> dict:
        """What the part must remember across stages; values may be JSON-able data or
        torch tensors (tensors are checkpointed as safetensors)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        return None


def apply_stage(method: Method, model, change: Change, ctx: StageContext) -> tuple[Any, ApplyStats]:
    """Apply one stage as every runner does (`ckl run`, `ckl update`): with the torch RNG
    seeded from (ctx.seed, change.stage) inside a fork, so a stage's randomness does not
    depend on what ran before it, and with the resulting weights checked.

    Raises:
        DivergenceError: the loss, the gradients (ckl.train.loop) or the final weights
            are not finite.
    """
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ctx.seed * 1000 + change.stage)
        model, stats = method.apply(model, change, ctx)
    for name, p in model.named_parameters():
        if not torch.isfinite(p).all():
            raise DivergenceError(f"weights of {name} are not finite")
    return model, stats


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Registered:
    name: str
    config: type
    factory: Callable[[Any], Any]
    help: str
    kinds: frozenset[str]
    family: str  # "part" or "method"


REGISTRY: dict[str, Registered] = {}


def register_part(name: str, config: type, factory: Callable[[Any], Part], help: str, kinds: Sequence[str] = ()) -> None:
    """Make a part available by name (called once at the bottom of its module).

    Raises:
        ValueError: another module already registered `name`."""
    _register(Registered(name, config, factory, help, frozenset(kinds), "part"))


def register_method(name: str, config: type, factory: Callable[[Any], Method], help: str, kinds: Sequence[str]) -> None:
    """Make a non-training method available by name.

    Raises:
        ValueError: another module already registered `name`."""
    _register(Registered(name, config, factory, help, frozenset(kinds), "method"))


def _origin(entry: Registered) -> str:
    return f"{entry.factory.__module__}.{entry.factory.__qualname__}"


def _register(entry: Registered) -> None:
    # The same factory registering again (its module imported twice) is harmless; another
    # one under a taken name would silently replace a method, so it is refused.
    old = REGISTRY.get(entry.name)
    if old is not None and _origin(old) != _origin(entry):
        raise ValueError(f"the method name {entry.name!r} is taken: {_origin(old)} registered it, {_origin(entry)} cannot")
    REGISTRY[entry.name] = entry


BROKEN: dict[str, str] = {}  # module -> why it could not be imported (load_builtin)


def load_builtin() -> dict[str, Registered]:
    """Import every module of the `ckl.methods` package (each registers itself at its
    bottom) and return the registry. Adding a method is adding a file: no central list.

    A module that fails to import (a syntax error in a method being written) is recorded
    in `BROKEN` with a warning instead of breaking every other method; asking for a name
    the registry lacks then names the broken modules (`build_method`, `ckl methods`)."""
    import importlib
    import pkgutil
    import warnings

    import ckl.methods

    for info in pkgutil.walk_packages(ckl.methods.__path__, prefix="ckl.methods."):
        if info.name in BROKEN:
            continue
        try:
            importlib.import_module(info.name)
        except Exception as err:  # noqa: BLE001  any import-time failure of one method file
            BROKEN[info.name] = f"{type(err).__name__}: {err}"
            warnings.warn(f"method module {info.name} could not be imported ({BROKEN[info.name]}); its methods are unavailable", RuntimeWarning, stacklevel=2)
    return REGISTRY


def _broken_hint() -> str:
    if not BROKEN:
        return ""
    return "; modules that failed to import: " + "; ".join(f"{m} ({why})" for m, why in sorted(BROKEN.items()))


def _refuse(field: str, message: str) -> ConfigError:
    """An option error naming its dotted place (`methods[2].ewc.gamma`), in the message and
    as `field`, so that a loader finds its line without reading the message."""
    return ConfigError(field, f"{field}: {message}")


def make_config(cls: type, values: dict[str, Any], where: str):
    """Build a config dataclass, with errors (ConfigError) naming `where.key`."""
    names = {f.name for f in dataclasses.fields(cls)}
    if not isinstance(values, dict):
        raise _refuse(where, f"must be a mapping of options (key: value), got {values!r}")
    for key in values:
        if key not in names:
            raise _refuse(f"{where}.{key}", f"unknown option{did_you_mean(key, names)} (known: {', '.join(sorted(names))})")
    try:
        return cls(**values)
    except ConfigError as err:
        raise ConfigError(f"{where}.{err.field}" if err.field in names else where, f"{where}: {err}") from None
    except (TypeError, ValueError) as err:
        raise _refuse(where, str(err)) from None


# ------------------------------------------------------------------- training method


class TrainingMethod(Method):
    """A composition of parts around the one training loop.

    Supports learn / update / edit through next-token training on the new facts, and a
    stage's domain corpus (its documents join each epoch's text as they are), plus
    whatever change kinds its parts add (e.g. an unlearning objective adds `forget`).
    """

    def __init__(self, name: str, parts: Sequence[Part], train_config: TrainConfig, questions: int | None = 2):
        self.name = name
        self.parts = list(parts)
        self.train_config = train_config
        self.questions = questions
        self.kinds = TEACHING_KINDS.union(*(p.kinds for p in self.parts))

    def apply(self, model, change: Change, ctx: StageContext) -> tuple[Any, ApplyStats]:
        start = time.perf_counter()
        stats = ApplyStats(not_applied={k: change.count(k) for k in change.kinds if k not in self.kinds})
        facts = [f for kind in ("learn", "update", "edit") if kind in self.kinds for f in _facts(change, kind)]
        for part in self.parts:
            model = part.prepare(model, ctx)
        stats.trainable_params, stats.total_params = count_parameters(model)

        ctx.epochs = self.train_config.epochs

        def documents(epoch: int) -> list[str]:
            ctx.epoch = epoch
            rng = rng_for(ctx.seed, "docs", ctx.stage, epoch)
            chosen = facts
            for part in self.parts:
                chosen = part.select_facts(chosen, ctx)
            extra = [f for part in self.parts for f in part.extra_facts(chosen, ctx, rng)]
            rendered = render_documents(chosen + extra, ctx.relations, rng, questions=self.questions, qa_subjects=ctx.qa_subjects)
            return rendered + list(change.corpus) + [d for part in self.parts for d in part.extra_documents(ctx, rng)]

        if facts or change.corpus or any(p.kinds for p in self.parts):
            result = train(
                model, ctx.tokenizer, documents, self.train_config, ctx.accelerator,
                seed=rng_for(ctx.seed, "batches", ctx.stage).randrange(2**31),
                terms=self.parts, progress=ctx.progress, on_epoch_end=self._stopping_rule(model, facts, ctx),
                on_eval=(lambda step, epoch, loss: ctx.curve(model, step, epoch, loss)) if ctx.curve is not None else None,
            )
            stats.tokens_seen, stats.steps, stats.epochs = result.tokens_seen, result.steps, result.epochs
        for part in reversed(self.parts):
            model = part.finish(model, ctx)
        for part in self.parts:
            part.observe(model, change, ctx)
        stats.total_params = count_parameters(model)[1]
        stats.seconds = time.perf_counter() - start
        return model, stats

    def _stopping_rule(self, model, facts: list[Fact], ctx: StageContext) -> Callable[[int], bool] | None:
        """`train.until`: every `check_every` epochs, stop once the stage's taught facts are
        known at that accuracy. The main process measures and every process follows it.
        The measure is of the trained weights before the parts' `finish` (merging, EMA)."""
        config = self.train_config
        if not config.until or not facts:
            return None
        if ctx.known is None:
            raise ValueError("train.until needs a runner that can score facts (StageContext.known)")
        from ckl.core.distributed import on_main

        def done(epoch: int) -> bool:
            if (epoch + 1) % config.check_every:
                return False
            stop = bool(on_main(ctx.accelerator, lambda: ctx.known(model, facts) >= config.until, share=True))
            model.train()
            return stop

        return done

    def restore(self, model):
        """A model loaded from a checkpoint, with what the parts keep beside it re-attached."""
        for part in self.parts:
            model = part.restore(model)
        return model

    def kept_outside_weights(self) -> list[str]:
        return [p.name for p in self.parts if p.keeps_modules]

    def row_notes(self) -> dict:
        return {k: v for p in self.parts for k, v in p.row_notes().items()}

    def state_dict(self) -> dict:
        return {p.name: p.state_dict() for p in self.parts}

    def load_state_dict(self, state: dict) -> None:
        for p in self.parts:
            p.load_state_dict(state.get(p.name, {}))


def _facts(change: Change, kind: str) -> list[Fact]:
    if kind == "learn":
        return list(change.learn)
    return [r.fact for r in getattr(change, kind)]


def smallest_expression(name: str) -> str:
    """The smallest method expression in which the registered `name` runs: a part that
    requires others (`Part.requires`, e.g. gs_lora needs lora) after them; anything else
    alone. What the contract suites build for every registered name."""
    entry = load_builtin()[name]
    return "+".join([*sorted(getattr(entry.factory, "requires", ())), name])


def build_method(expression: str, options: dict[str, Any] | None = None, where: str = "method") -> Method:
    """Build a method from an expression such as "naive", "replay" or "lora+replay".

    Args:
        expression: part names joined by "+"; "naive" alone is plain full fine-tuning,
            or the name of a registered non-training method.
        options: {"train": {...TrainConfig}, "<part>": {...its config}}.
        where: prefix for error messages (e.g. "methods[2]").

    Raises:
        ValueError: unknown part or option, or an invalid value; the message names it.
    """
    registry = load_builtin()
    options = dict(options or {})
    names = [n.strip() for n in expression.split("+") if n.strip()]
    if not names:
        raise _refuse(f"{where}.name", "empty method name")
    if len(names) == 1 and names[0] in registry and registry[names[0]].family == "method":
        entry = registry[names[0]]
        config = make_config(entry.config, options.pop(names[0], {}), f"{where}.{names[0]}")
        _no_leftovers(options, where)
        return entry.factory(config)
    twice = next((n for n in names if names.count(n) > 1), None)
    if twice is not None:
        raise _refuse(f"{where}.name", f"part {twice!r} is listed twice in {expression!r}; each part composes once (give its options once, under `{twice}:`)")
    for n in names:
        if n not in registry:
            raise _refuse(f"{where}.name", f"unknown method or part {n!r}{did_you_mean(n, registry)} (known: {', '.join(sorted(registry))}){_broken_hint()}")
        if registry[n].family != "part":
            raise _refuse(f"{where}.name", f"{n!r} is a method of its own and cannot be combined with parts")
    train_config = make_config(TrainConfig, options.pop("train", {}), f"{where}.train")
    questions = options.pop("questions", 2)  # question-answer lines per QA-trained subject per epoch (null = one per fact)
    if questions is not None and (isinstance(questions, bool) or not isinstance(questions, int) or questions < 0):
        raise _refuse(f"{where}.questions", f"must be an integer >= 0 or null (one per fact), got {questions!r}")
    parts = []
    for n in names:
        entry = registry[n]
        parts.append(entry.factory(make_config(entry.config, options.pop(n, {}), f"{where}.{n}")))
    _no_leftovers(options, where, names)
    parts = [p for p in parts if p is not None]
    for part in parts:
        clash = sorted(part.incompatible & set(names))
        if clash:
            raise _refuse(f"{where}.name", f"{part.name!r} cannot be combined with {', '.join(map(repr, clash))} (its docstring says why)")
        missing = sorted(part.requires - set(names))
        if missing:
            raise _refuse(f"{where}.name", f"{part.name!r} needs {', '.join(map(repr, missing))} in the same method (e.g. {'+'.join([*missing, part.name])})")
        why = part.check(train_config)
        if why:
            raise _refuse(f"{where}.train", f"{part.name}: {why}")
    return TrainingMethod("+".join(names), parts, train_config, questions=questions)


def _no_leftovers(options: dict, where: str, parts=()) -> None:
    if options:
        key = sorted(options)[0]
        raise _refuse(f"{where}.{key}", f"option for a part that is not in this method{did_you_mean(key, ['train', *parts])}")
