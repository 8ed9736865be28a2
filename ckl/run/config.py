"""The experiment config: YAML, loaded safely and validated before any work starts.

Validation errors name the file, the line and the key (e.g. `methods[1].replay.fraction`)
and the CLI exits with code 2. Method options are checked against the registered parts'
config dataclasses here, so a typo fails in a second, not after an hour of pretraining.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator

from ckl.core.checks import ConfigError
from ckl.core.errors import InputError
from ckl.data.facts import PROBE_KINDS, read_input_text
from ckl.data.world import WorldConfig
from ckl.evaluate.extraction import ExtractionConfig
from ckl.run.attack import AttackConfig
from ckl.train.pretrain import PretrainConfig


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # every float: NaN and inf refused


def spec_of(cls: type, name: str) -> type[BaseModel]:
    """The YAML schema of a config dataclass: its fields, types and defaults, nothing else.
    The dataclass stays the one definition of its options and their rules: the loader
    builds it (`__post_init__` checks every value and raises `ConfigError` naming the
    field), so the schema and the dataclass can never disagree."""
    hints = typing.get_type_hints(cls)
    fields = {}
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        fields[f.name] = (hints[f.name], Field(default, description=f.metadata.get("help")))
    return create_model(name, __base__=Strict, **fields)


# `world:`, `pretrain:`, `eval.unlearning:` and `eval.attack:` are these dataclasses
WorldSpec = spec_of(WorldConfig, "WorldSpec")
PretrainSpec = spec_of(PretrainConfig, "PretrainSpec")
ExtractionSpec = spec_of(ExtractionConfig, "ExtractionSpec")
AttackSpec = spec_of(AttackConfig, "AttackSpec")


class EvalSpec(Strict):
    kinds: list[Literal["statement", "paraphrase", "question", "extraction"]] = list(PROBE_KINDS)
    batch_size: int = Field(256, ge=1)
    max_candidates: int = Field(10, ge=2)
    metric: Literal["em", "rank"] = "em"
    # Unlearning (docs/unlearning.md): text-target metrics on every row (options of
    # ckl.evaluate.extraction.ExtractionConfig, {} for the defaults) and a relearning
    # attack on each method's final model (ckl.run.attack.AttackConfig).
    unlearning: ExtractionSpec | None = None
    attack: AttackSpec | None = None


class MethodSpec(BaseModel):
    """`name` is a method or a composition of parts ("lora+replay"); every other key is
    an option block for a part (`replay: {fraction: 0.5}`) or `train: {...}`."""

    model_config = ConfigDict(extra="allow")
    name: str
    label: str | None = None
    # Change kinds the user accepts this method leaving unapplied (e.g. [forget] for a
    # method without an unlearning part). Without it the run refuses to start.
    skip: list[Literal["learn", "update", "edit", "forget"]] = []

    @property
    def display(self) -> str:
        return self.label or self.name

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ExperimentConfig(Strict):
    name: str = "experiment"
    stream: str | None = None
    world: WorldSpec | None = None
    model: str | None = None
    pretrain: PretrainSpec | None = None
    methods: list[MethodSpec] = Field(min_length=1)
    seeds: list[Annotated[int, Field(ge=0, le=2**32 - 1)]] = Field(default_factory=lambda: [0], min_length=1)
    eval: EvalSpec = EvalSpec()
    allow_pickle: bool = False
    trust_remote_code: bool = False
    allow_weak_base: bool = False  # run on a pretrained base model that missed its target (`ckl run --allow-weak-base`)

    @field_validator("methods")
    @classmethod
    def _unique_labels(cls, methods: list[MethodSpec]) -> list[MethodSpec]:
        seen: set[str] = set()
        for m in methods:
            if m.display in seen:
                raise ValueError(f"two methods are labelled {m.display!r}; give one a distinct `label`")
            seen.add(m.display)
        return methods


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
        from ckl.methods.base import did_you_mean

        model = _model_at(error["loc"][:-1])
        known = list(model.model_fields) if model is not None else []
        return f"unknown key{did_you_mean(error['loc'][-1], known)} (known: {', '.join(known)})" if known else error["msg"]
    return error["msg"]


def _model_at(path: tuple):
    """The pydantic model class that validates the mapping at `path` of the config."""
    model = ExperimentConfig
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
    from ckl.methods.base import build_method

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
    try:
        config = ExperimentConfig.model_validate(data)
    except ValidationError as err:
        problems = [InputError(file, _line_of(root, tuple(e["loc"])), _dotted(tuple(e["loc"])) or None, _message(e)) for e in err.errors()]
        # the world's and pretraining's own rules too, where their part of the schema passed
        for key, spec, cls in (("world", WorldSpec, WorldConfig), ("pretrain", PretrainSpec, PretrainConfig)):
            if isinstance(data.get(key), dict) and not any(p.field and p.field.split(".")[0] == key for p in problems):
                try:
                    cls(**spec.model_validate(data[key]).model_dump())
                except ConfigError as bad:
                    problems.append(InputError(file, _line_of(root, (key, bad.field)), f"{key}.{bad.field}", str(bad).removeprefix("WorldConfig.")))
        raise InputError.of(sorted(problems, key=lambda p: p.line or 0)) from None
    problems = []
    if (config.stream is None) == (config.world is None):
        problems.append(InputError(file, 1, "stream", "give exactly one of `stream` (a directory) or `world` (generate one)"))
    if config.model is not None and config.pretrain is not None:
        problems.append(InputError(file, _line_of(root, ("model",)), "model", "give `model` (a local directory) or `pretrain`, not both"))
    for check in (check_world, check_pretrain):
        try:
            check(config, file, root)
        except InputError as err:
            problems.append(err)
    base = path.parent
    if config.stream is not None:
        config.stream = str((base / config.stream).resolve())
    if config.model is not None:
        config.model = str((base / config.model).resolve())
    for i, spec in enumerate(config.methods):
        try:
            build_method(spec.name, spec.options, where=f"methods[{i}]")
        except ValueError as err:
            key = str(err).split(":", 1)[0]
            parts = tuple(int(p) if p.isdigit() else p for p in key.replace("[", ".").replace("]", "").split("."))
            problems.append(InputError(file, _line_of(root, parts), key, str(err).split(": ", 1)[-1]))
    if problems:
        raise InputError.of(problems)
    problems = [InputError(file, _line_of(root, ("methods", i)), f"methods[{i}]", message) for i, message in unsupported_methods(config)]
    if problems:
        raise InputError.of(problems)
    return config


def check_world(config: ExperimentConfig, file: str = "<config>", root: yaml.Node | None = None) -> None:
    """Build the configured world once, before any work: its sizes, the QA half and the
    probe-word check. A failure is an InputError naming `world.<option>` (and its line
    when `root`, the YAML node tree, is given)."""
    if config.world is None:
        return
    from ckl.data.world import build_world

    try:
        build_world(WorldConfig(**config.world.model_dump()))
    except ConfigError as err:
        key = ("world", err.field)
        raise InputError(file, _line_of(root, key), _dotted(key), str(err).removeprefix("WorldConfig.")) from None
    except ValueError as err:  # the built world's own checks (probe words): the world as a whole
        raise InputError(file, _line_of(root, ("world",)), "world", str(err)) from None


def check_pretrain(config: ExperimentConfig, file: str = "<config>", root: yaml.Node | None = None) -> None:
    """Build the configured PretrainConfig, and the unlearning metrics' and the attack's
    configs (every option's rule); a failure names `pretrain.<option>` (or
    `eval.attack.<option>`, ...) and its line."""
    for path, spec, cls in ((("pretrain",), config.pretrain, PretrainConfig),
                            (("eval", "unlearning"), config.eval.unlearning, ExtractionConfig),
                            (("eval", "attack"), config.eval.attack, AttackConfig)):
        if spec is None:
            continue
        try:
            cls(**spec.model_dump())
        except ConfigError as err:
            key = (*path, err.field)
            raise InputError(file, _line_of(root, key), _dotted(key), str(err)) from None


def stream_kinds(config: ExperimentConfig) -> dict[str, int]:
    """Change kinds the configured stream contains -> number of requests (over all stages)."""
    if config.world is not None:
        w = config.world
        counts = {"learn": w.learn_per_stage, "update": w.update_per_stage, "edit": w.edit_per_stage, "forget": w.forget_per_stage}
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
