"""The experiment config: YAML, loaded safely and validated before any work starts.

Validation errors name the file, the line and the key (e.g. `methods[1].replay.fraction`)
and the CLI exits with code 2. Method options are checked against the registered parts'
config dataclasses here, so a typo fails in a second, not after an hour of pretraining.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from ckl.core.checks import ConfigError
from ckl.core.errors import InputError
from ckl.data.facts import PROBE_KINDS, read_input_text
from ckl.data.world import WorldConfig
from ckl.evaluate.config import ExtractionConfig
from ckl.train.config import PretrainConfig, TrainConfig


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # every float: NaN and inf refused


class _Open(Strict):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)  # a method's option blocks: its own keys


_SPECS: dict[type, type[BaseModel]] = {}
_ORIGIN: dict[type[BaseModel], type] = {}


def spec_of(cls: type, name: str | None = None) -> type[BaseModel]:
    """The YAML schema of a config dataclass: its fields, types (with any `Annotated`
    constraints) and defaults, nested config dataclasses by their own schemas, nothing
    else. The dataclass stays the one definition of its options and their rules: the
    loader builds it from what the schema accepted (`__post_init__` checks every value
    and raises `ConfigError` naming the field), so the schema and the dataclass can never
    disagree. A field marked `metadata={"extra": True}` collects the mapping's other keys
    (a method's option blocks)."""
    if cls in _SPECS:
        return _SPECS[cls]
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {}
    extra = False
    for f in dataclasses.fields(cls):
        if f.metadata.get("extra"):
            extra = True
            continue
        if f.default is not dataclasses.MISSING:
            info = Field(f.default, description=f.metadata.get("help"))
        elif f.default_factory is not dataclasses.MISSING:
            info = Field(default_factory=f.default_factory, description=f.metadata.get("help"))
        else:
            info = Field(description=f.metadata.get("help"))
        fields[f.name] = (_schema_type(hints[f.name]), info)
    model = create_model(name or f"{cls.__name__.removesuffix('Config')}Spec", __base__=_Open if extra else Strict, **fields)
    _SPECS[cls], _ORIGIN[model] = model, cls
    return model


def _schema_type(tp):
    """`tp` with every config dataclass in it replaced by its schema."""
    if dataclasses.is_dataclass(tp):
        return spec_of(tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Annotated:
        return Annotated[(_schema_type(args[0]), *tp.__metadata__)]
    if origin in (typing.Union, types.UnionType):
        return typing.Union[tuple(_schema_type(a) for a in args)]
    if origin is list:
        return list[_schema_type(args[0])]
    return tp


def _build(value, path: tuple, errors: list[tuple[tuple, str]]):
    """The config dataclasses (recursively) of what a schema validated; a dataclass's own
    rule that fails is recorded in `errors` as (path of its field, message)."""
    if isinstance(value, BaseModel):
        cls, before = _ORIGIN[type(value)], len(errors)
        kwargs = {f.name: (dict(value.model_extra or {}) if f.metadata.get("extra") else _build(getattr(value, f.name), (*path, f.name), errors))
                  for f in dataclasses.fields(cls)}
        if len(errors) > before:
            return None
        try:
            return cls(**kwargs)
        except ConfigError as err:
            errors.append(((*path, err.field), str(err).removeprefix(f"{cls.__name__}.")))
            return None
    if isinstance(value, list):
        return [_build(v, (*path, i), errors) for i, v in enumerate(value)]
    return value


def plain(value):
    """A config as the JSON a run stores (config.json): dataclasses as mappings, a
    method's option blocks beside its name, tuples as lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(value):
            v = plain(getattr(value, f.name))
            out.update(v) if f.metadata.get("extra") else out.__setitem__(f.name, v)
        return out
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


ATTACK_DATA = ("partial", "unrelated")


@dataclass
class AttackConfig:
    """A relearning attack (`eval.attack` in an experiment)."""

    data: str = field(default="partial", metadata={"help": "partial: relearn a fraction of the forgotten facts, probe the rest; unrelated: fine-tune on untouched known facts, probe every forgotten fact"})
    fraction: float = field(default=0.5, metadata={"help": "partial: share of the forgotten facts shown to the attack"})
    facts: int = field(default=32, metadata={"help": "unrelated: number of untouched known facts to fine-tune on"})
    epochs: int = field(default=5, metadata={"help": "passes over the attack data"})
    lr: float = field(default=1e-3, metadata={"help": "AdamW learning rate of the attack"})
    batch_size: int = field(default=8, metadata={"help": "blocks per step"})
    seed: int = field(default=0, metadata={"help": "which facts the attack sees, and its batch order"})
    curve: int = field(default=0, metadata={"help": "also score the re-probed facts during the attack, this many points per tenfold of steps (log spacing; 0 = before and after only)"})

    def __post_init__(self) -> None:
        if self.data not in ATTACK_DATA:
            raise ConfigError("data", f"data must be one of {', '.join(ATTACK_DATA)}, got {self.data!r}")
        if isinstance(self.fraction, bool) or not isinstance(self.fraction, (int, float)) or not 0 < self.fraction < 1:
            raise ConfigError("fraction", f"fraction must be in (0, 1), got {self.fraction!r}")
        TrainConfig(epochs=self.epochs, lr=self.lr, batch_size=self.batch_size, eval_every=self.curve)  # validates them
        if isinstance(self.facts, bool) or not isinstance(self.facts, int) or self.facts < 1:
            raise ConfigError("facts", f"facts must be a positive integer, got {self.facts!r}")


@dataclass
class EvalConfig:
    kinds: list[Literal["statement", "paraphrase", "question", "extraction", "two_hop", "as_of"]] = field(
        default_factory=lambda: list(PROBE_KINDS), metadata={"help": "probe kinds scored after every stage (two_hop: on a world with two_hop chains; as_of: on a dated world)"})
    batch_size: Annotated[int, Field(ge=1)] = field(default=256, metadata={"help": "probes scored per batch"})
    max_candidates: Annotated[int, Field(ge=2)] = field(default=10, metadata={"help": "candidates ranked per probe (the `rank` metric)"})
    metric: Literal["em", "rank"] = field(default="em", metadata={"help": "em (greedy exact match) or rank (the answer ranked first among the candidates)"})
    # Unlearning (docs/unlearning.md): text-target metrics on every row (options of
    # ckl.evaluate.extraction.ExtractionConfig, {} for the defaults) and a relearning
    # attack on each method's final model (ckl.run.attack.AttackConfig).
    unlearning: ExtractionConfig | None = field(default=None, metadata={"help": "text-target unlearning metrics ({} for the defaults)"})
    attack: AttackConfig | None = field(default=None, metadata={"help": "a relearning attack on each method's final model"})
    # What the wrong answers were (ckl.evaluate.answers): each probe's free greedy answer at
    # rows 0 and T classified as correct, stale, another object of the world (hallucinated)
    # or no object, in the row's notes.
    answers: bool = field(default=False, metadata={"help": "classify every greedy answer at rows 0 and T: correct, stale, another object (hallucinated), no object"})


@dataclass
class MethodSpec:
    """`name` is a method or a composition of parts ("lora+replay"); every other key is
    an option block for a part (`replay: {fraction: 0.5}`) or `train: {...}`."""

    name: str = field(metadata={"help": "a method or a composition of parts, e.g. lora+replay"})
    label: str | None = field(default=None, metadata={"help": "the name shown in tables (default: `name`)"})
    # Change kinds the user accepts this method leaving unapplied (e.g. [forget] for a
    # method without an unlearning part). Without it the run refuses to start.
    skip: list[Literal["learn", "update", "edit", "forget", "corpus"]] = field(default_factory=list, metadata={"help": "change kinds this method may leave unapplied"})
    options: dict[str, Any] = field(default_factory=dict, metadata={"extra": True, "help": "option blocks per part, e.g. replay: {fraction: 0.5}"})

    @property
    def display(self) -> str:
        return self.label or self.name


@dataclass
class ExperimentConfig:
    """An experiment: a stream (or a world to generate), a base model (or pretraining),
    methods and seeds. The YAML schema is derived from these fields (`spec_of`);
    `from_dict` and `load_config` validate, `plain(config)` is the JSON a run stores."""

    name: str = field(default="experiment", metadata={"help": "the run's name (default run directory runs/<name>)"})
    stream: str | None = field(default=None, metadata={"help": "a stream directory (relative to the YAML file)"})
    world: WorldConfig | None = field(default=None, metadata={"help": "generate a world instead of reading a stream"})
    model: str | None = field(default=None, metadata={"help": "a local Hugging Face model directory (relative to the YAML file)"})
    pretrain: PretrainConfig | None = field(default=None, metadata={"help": "pretrain a tiny base model on the stream's K0"})
    methods: Annotated[list[MethodSpec], Field(min_length=1)] = field(default_factory=list, metadata={"help": "the methods to compare"})
    seeds: Annotated[list[Annotated[int, Field(ge=0, le=2**32 - 1)]], Field(min_length=1)] = field(
        default_factory=lambda: [0], metadata={"help": "one run of every method per seed"})
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"help": "what is scored after every stage"})
    precision: Literal["fp32", "bf16"] = field(default="fp32", metadata={"help": "fp32, or bf16 mixed precision for training and scoring (autocast; weights stay fp32)"})
    allow_pickle: bool = field(default=False, metadata={"help": "load pickled (.bin) weights"})
    trust_remote_code: bool = field(default=False, metadata={"help": "run a model directory's own Python code"})
    allow_weak_base: bool = field(default=False, metadata={"help": "run on a pretrained base model that missed its target (`ckl run --allow-weak-base`)"})

    def __post_init__(self) -> None:
        if not self.methods:
            raise ConfigError("methods", "give at least one method")
        seen: set[str] = set()
        for i, m in enumerate(self.methods):
            if m.display in seen:
                raise ConfigError(f"methods[{i}]", f"two methods are labelled {m.display!r}; give one a distinct `label`")
            seen.add(m.display)

    @classmethod
    def from_dict(cls, data: dict, file: str = "<config>", root: yaml.Node | None = None) -> ExperimentConfig:
        """Validate a config mapping (as read from YAML) and build it.

        Raises:
            InputError: every problem the schema and the configs' own rules find.
        """
        config, problems = _rules(_schema(data, file, root), file, root)
        if problems:
            raise InputError.of(problems)
        return config


def _schema(data: dict, file: str, root: yaml.Node | None) -> BaseModel:
    """`data` checked against the experiment's schema; every schema problem at once (and
    the world's and pretraining's own rules where their part passed) as an InputError."""
    try:
        return ExperimentSpec.model_validate(data)
    except ValidationError as err:
        problems = [InputError(file, _line_of(root, tuple(e["loc"])), _dotted(tuple(e["loc"])) or None, _message(e)) for e in err.errors()]
        errors: list[tuple[tuple, str]] = []
        for key in ("world", "pretrain"):
            if isinstance(data.get(key), dict) and not any(p.field and p.field.split(".")[0] == key for p in problems):
                _build(_SPECS[_nested(key)].model_validate(data[key]), (key,), errors)
        problems += [InputError(file, _line_of(root, path), _dotted(path), message) for path, message in errors]
        raise InputError.of(sorted(problems, key=lambda p: p.line or 0)) from None


def _rules(spec: BaseModel, file: str, root: yaml.Node | None) -> tuple[ExperimentConfig | None, list[InputError]]:
    """The config dataclasses built from a schema-valid `spec`, or None with the problems
    their own rules found (each naming its field and line)."""
    errors: list[tuple[tuple, str]] = []
    config = _build(spec, (), errors)
    return config, [InputError(file, _line_of(root, _path(path)), _dotted(_path(path)), message) for path, message in errors]


def _nested(key: str) -> type:
    return typing.get_args(typing.get_type_hints(ExperimentConfig)[key])[0]


def _path(path: tuple) -> tuple:
    """A path whose last key may be a dotted/indexed field name ("methods[1]")."""
    *head, last = path
    parts = tuple(int(p) if p.isdigit() else p for p in str(last).replace("[", ".").replace("]", "").split(".") if p)
    return (*head, *parts)


ExperimentSpec = spec_of(ExperimentConfig)
# `world:`, `pretrain:`, `eval.unlearning:` and `eval.attack:` are these dataclasses' schemas
WorldSpec, PretrainSpec, ExtractionSpec, AttackSpec = (_SPECS[c] for c in (WorldConfig, PretrainConfig, ExtractionConfig, AttackConfig))


def _line_of(root: yaml.Node | None, path: tuple) -> int | None:
    """The 1-based line of the YAML node at `path` (keys and list indices), or of its
    deepest existing ancestor."""
    node, line = root, (root.start_mark.line + 1 if root is not None else None)
    for key in path:
        child = None
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == str(key):
                    child = v
                    line = k.start_mark.line + 1
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            child = node.value[key]
            line = child.start_mark.line + 1
        if child is None:
            break
        node = child
    return line


def _message(error: dict) -> str:
    """pydantic's message, with a suggestion for a mistyped key ("trian" -> "train")."""
    if error["type"] == "extra_forbidden" and error["loc"]:
        from ckl.core.checks import did_you_mean

        model = _model_at(error["loc"][:-1])
        known = list(model.model_fields) if model is not None else []
        return f"unknown key{did_you_mean(error['loc'][-1], known)} (known: {', '.join(known)})" if known else error["msg"]
    return error["msg"]


def _model_at(path: tuple):
    """The pydantic model class that validates the mapping at `path` of the config."""
    model = ExperimentSpec
    for key in path:
        if isinstance(key, int):
            continue
        field = model.model_fields.get(key)
        if field is None:
            return None
        annotation = field.annotation
        inner = [a for a in getattr(annotation, "__args__", (annotation,)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not inner:
            return None
        model = inner[0]
    return model


def _dotted(path: tuple) -> str:
    out = ""
    for key in path:
        out += f"[{key}]" if isinstance(key, int) else (f".{key}" if out else str(key))
    return out


class _Loader(yaml.SafeLoader):
    """yaml.SafeLoader that also reads floats the way people write them: YAML 1.1 (which
    PyYAML implements) takes `1e-3` and `3E5` for strings, YAML 1.2 and every user for
    numbers."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text: str, file: str) -> tuple[Any, yaml.Node | None]:
    """(data, node tree) of a user's YAML text (yaml.safe_load: no object tags). Invalid
    YAML, a key given twice in one mapping (YAML would keep the last silently), a string
    with an unpaired surrogate escape and an integer beyond Python's 4,300-digit limit are
    InputErrors naming the file and line."""
    try:
        root = yaml.compose(text, Loader=_Loader)
        _refuse_duplicate_keys(root, file, text)
        data = yaml.load(text, Loader=_Loader)  # a SafeLoader: no object tags
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        # lines counted by "\n", as everywhere in ckl (YAML also breaks lines at a lone "\r")
        line = text[: mark.index].count("\n") + 1 if mark else None
        raise InputError(file, line, None, f"invalid YAML: {getattr(err, 'problem', err)}") from None
    except RecursionError:
        raise InputError(file, None, None, "invalid YAML: nested too deeply") from None
    except ValueError:  # int() refused a literal of more than 4,300 digits
        raise InputError(file, None, None, "invalid YAML: a number with more than 4300 digits") from None
    return data, root


def _refuse_duplicate_keys(root: yaml.Node | None, file: str, text: str) -> None:
    stack = [root] if root is not None else []
    seen_nodes: set[int] = set()
    while stack:
        node = stack.pop()
        if id(node) in seen_nodes:  # an alias shares its anchor's node
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys: set[str] = set()
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value != "<<":
                    if key.value in keys:
                        line = text[: key.start_mark.index].count("\n") + 1
                        raise InputError(file, line, key.value, "this key appears twice in one mapping; give it once")
                    keys.add(key.value)
                stack += [key, value]
        elif isinstance(node, yaml.SequenceNode):
            stack += node.value
        elif isinstance(node, yaml.ScalarNode) and not _encodable(node.value):  # "\ud800": no path or file can hold it
            line = text[: node.start_mark.index].count("\n") + 1
            raise InputError(file, line, None, "a string holds an unpaired surrogate escape (\\ud800-\\udfff)")


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def load_config(path: str | Path) -> ExperimentConfig:
    """Read and validate an experiment YAML file (yaml.safe_load: no object tags).

    Raises:
        InputError: naming the file, line and key of every problem found (the schema's
            all at once; then, for a config the schema accepts, every method's options
            and every method that cannot apply the stream's change kinds).
    """
    path = Path(path)
    file = str(path)
    if not path.exists() and not path.is_symlink():
        raise InputError(file, None, None, "config file not found")
    text = read_input_text(path)  # newlines kept: lines are counted by "\n"; FIFOs and devices refused
    data, root = parse_yaml(text, file)
    if not isinstance(data, dict):
        raise InputError(file, 1, None, "expected a mapping of keys (name, stream/world, model/pretrain, methods, ...)")
    # Top-level keys starting with "x-" are free for YAML anchors (shared method settings),
    # as in docker compose; they are not part of the experiment.
    data = {k: v for k, v in data.items() if not (isinstance(k, str) and k.startswith("x-"))}
    spec = _schema(data, file, root)
    config, problems = _rules(spec, file, root)
    methods = config.methods if config is not None else [_build(m, (), []) for m in spec.methods]
    problems += _option_problems(methods, file, root)
    if config is None:
        raise InputError.of(sorted(problems, key=lambda p: p.line or 0))
    if (config.stream is None) == (config.world is None):
        problems.append(InputError(file, 1, "stream", "give exactly one of `stream` (a directory) or `world` (generate one)"))
    if config.model is not None and config.pretrain is not None:
        problems.append(InputError(file, _line_of(root, ("model",)), "model", "give `model` (a local directory) or `pretrain`, not both"))
    try:
        check_world(config, file, root)
    except InputError as err:
        problems.append(err)
    base = path.parent
    if config.stream is not None:
        config.stream = str((base / config.stream).resolve())
    if config.model is not None:
        config.model = str((base / config.model).resolve())
    if problems:
        raise InputError.of(sorted(problems, key=lambda p: p.line or 0))
    problems = [InputError(file, _line_of(root, ("methods", i)), f"methods[{i}]", message) for i, message in unsupported_methods(config)]
    if problems:
        raise InputError.of(problems)
    return config


def _option_problems(methods: list[MethodSpec], file: str, root: yaml.Node | None) -> list[InputError]:
    """Every method's options checked by building it (the parts' config dataclasses)."""
    from ckl.methods.base import build_method

    problems = []
    for i, spec in enumerate(methods):
        try:
            build_method(spec.name, spec.options, where=f"methods[{i}]")
        except ValueError as err:  # a ConfigError's field is the option's dotted place: methods[i].part.option
            key = err.field if isinstance(err, ConfigError) else f"methods[{i}]"
            problems.append(InputError(file, _line_of(root, _path((key,))), key, str(err).split(": ", 1)[-1]))
    return problems


def check_world(config: ExperimentConfig, file: str = "<config>", root: yaml.Node | None = None):
    """Build the configured world once, before any work: its sizes, the QA half and the
    probe-word check; returns it (None without `world:`). A failure is an InputError
    naming `world.<option>` (and its line when `root`, the YAML node tree, is given)."""
    if config.world is None:
        return None
    from ckl.data.world import build_world

    try:
        return build_world(config.world)
    except ConfigError as err:
        key = ("world", err.field)
        raise InputError(file, _line_of(root, key), _dotted(key), str(err).removeprefix("WorldConfig.")) from None
    except ValueError as err:  # the built world's own checks (probe words): the world as a whole
        raise InputError(file, _line_of(root, ("world",)), "world", str(err)) from None


def stream_kinds(config: ExperimentConfig) -> dict[str, int]:
    """Change kinds the configured stream contains -> number of requests (over all stages)."""
    if config.world is not None:
        w = config.world
        counts = {"learn": w.learn_per_stage, "update": w.update_per_stage, "edit": w.edit_per_stage, "forget": w.forget_per_stage, "corpus": w.corpus_per_stage}
        return {k: n * w.stages for k, n in counts.items() if n}
    from ckl.data.stream import Stream

    stream = Stream.load(config.stream)
    counts: dict[str, int] = {}
    for change in stream.stages:
        for kind in change.kinds:
            counts[kind] = counts.get(kind, 0) + change.count(kind)
    return counts


def unsupported_methods(config: ExperimentConfig) -> list[tuple[int, str]]:
    """(index, message) for each method that cannot apply a change kind the stream contains
    and whose spec does not accept leaving it unapplied (`skip: [kind]`). The runner refuses
    such a run rather than silently skipping requests."""
    from ckl.methods.base import REGISTRY, build_method

    present = stream_kinds(config)
    problems = []
    for i, spec in enumerate(config.methods):
        method = build_method(spec.name, spec.options, where=f"methods[{i}]")
        missing = [k for k in present if k not in method.kinds and k not in spec.skip]
        if not missing:
            continue
        supporters = sorted(n for n, r in REGISTRY.items() if set(missing) & r.kinds)
        hint = f"compose a part that supports it ({', '.join(supporters)}) or " if supporters else ""
        counts = ", ".join(f"{present[k]} {k}" for k in missing)
        problems.append((i, (
            f"method {spec.display!r} does not support {', '.join(repr(k) for k in missing)} but the stream has "
            f"{counts} request(s); {hint}add `skip: [{', '.join(missing)}]` to this method to run it with "
            f"those requests reported as not applied"
        )))
    return problems
