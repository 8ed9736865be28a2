"""Studies: named experiments that reproduce a finding of the literature on any stream and
base model, fit what the paper fits, and give a one-line verdict.

A study is one module in this package, its config dataclass on top, registered at its
bottom (`register_study`). It makes the methods of an experiment (`methods`), may refuse a
stream that lacks what it needs (`check`), and reads the finished run's store
(`analyse`) into a JSON result that the store keeps under the meta key `study`:

    {"name", "paper", "question", "verdict": "holds" | "does not hold" | "undecided",
     "line": one sentence with the numbers, "numbers": {...}, "panels": [plot panels],
     "seeds": [...], "options": {...}}

`ckl show` prints the verdict line and `ckl report` draws the panels, reading only that
JSON, so neither depends on a study's code. A study directory is a run directory: the
experiment's rows, curves (`train.eval_every`) and checkpoints are all there, and running
the same command again resumes it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ckl.core.checks import ConfigError, did_you_mean
from ckl.core.errors import InputError

HOLDS, FAILS, UNDECIDED = "holds", "does not hold", "undecided"
META_KEY = "study"
SPEC_KEY = "study_spec"  # the study, its options and its input stream or world: one per directory
MEASURED = "study_measurements"  # raw measurements a study's `after_run` makes


class Study:
    """One finding to reproduce. Subclasses set the class attributes and `Config`."""

    name: str = ""
    runs_methods: bool = True  # False: the study trains in `after_run` only; the run prepares the stream and base model
    paper: str = ""  # the paper whose finding this is
    question: str = ""  # what the study asks, in one sentence
    Config: type = object

    def __init__(self, config) -> None:
        self.config = config

    def methods(self) -> list[dict[str, Any]]:
        """The experiment's methods (ExperimentConfig `methods` entries)."""
        raise NotImplementedError

    def experiment(self) -> dict[str, Any]:
        """Experiment keys the study sets unless the user's config does (e.g. `eval`)."""
        return {}

    def check(self, stream) -> str | None:
        """Why this stream cannot answer the study's question, or None when it can."""
        return None

    def derive(self, stream):
        """A stream of the study's own built from the configured one (e.g. edits of its
        base facts), or None to run on the configured stream as it is. A derived stream
        keeps the configured stream's base knowledge, so its base model serves it too; it
        is saved in the study's directory (`stream/`)."""
        return None

    def after_run(self, experiment, out: Path, store, say: Callable[[str], None]) -> None:
        """Measurements on the finished run's models (e.g. re-aligning a checkpoint),
        stored in the store (`store.set_meta(MEASURED, ...)`) before `analyse`; a resumed
        study skips what is stored. Most studies need none."""
        return None

    def analyse(self, store, seeds: Sequence[int]) -> dict[str, Any]:
        """The result (see the module docstring) from the finished run's store."""
        raise NotImplementedError

    def result(self, verdict: str, line: str, numbers: dict, panels: list, seeds: Sequence[int]) -> dict[str, Any]:
        return {"name": self.name, "paper": self.paper, "question": self.question, "verdict": verdict, "line": line,
                "numbers": numbers, "panels": panels, "seeds": list(seeds), "options": dataclasses.asdict(self.config)}


class Refused:
    """What `derive` returns when the configured stream cannot give the study its stream:
    `run_study` stops with `why` before anything is written."""

    def __init__(self, why: str) -> None:
        self.why = why


STUDIES: dict[str, type[Study]] = {}


def register_study(cls: type[Study]) -> type[Study]:
    """Make a study available by its `name` (called once at the bottom of its module).

    Raises:
        ValueError: another study already has the name."""
    old = STUDIES.get(cls.name)
    if old is not None and old.__qualname__ != cls.__qualname__:
        raise ValueError(f"the study name {cls.name!r} is taken by {old.__module__}.{old.__qualname__}")
    STUDIES[cls.name] = cls
    return cls


def load_studies() -> dict[str, type[Study]]:
    """Import every module of this package (each registers its study) and return them."""
    import importlib
    import pkgutil

    import ckl.study

    for info in pkgutil.iter_modules(ckl.study.__path__, prefix="ckl.study."):
        if info.name not in ("ckl.study.base", "ckl.study.fit") and not info.name.rsplit(".", 1)[1].startswith("_"):
            importlib.import_module(info.name)
    return STUDIES


def get_study(name: str) -> type[Study]:
    """The study registered as `name`.

    Raises:
        InputError: no such study (naming the closest and every known one)."""
    studies = load_studies()
    if name not in studies:
        raise InputError("<study>", None, "name", f"unknown study {name!r}{did_you_mean(name, studies)} (known: {', '.join(sorted(studies))})")
    return studies[name]


# ------------------------------------------------------------------------------ config


DEFAULT_SEEDS = [0, 1, 2]


def load_study_config(study_cls: type[Study], path: str | Path | None):
    """The experiment and the study's options, from a YAML file with the keys of an
    experiment config except `methods` (the study makes them) and a `study:` mapping of
    the study's options; without a file, the default world and base model, seeds 0-2.

    Returns:
        (ExperimentConfig, the study's config).

    Raises:
        InputError: naming the file, line and key of a problem.
    """
    from ckl.methods.base import make_config
    from ckl.run.config import ExperimentConfig, _line_of, check_world, parse_yaml, read_input_text

    file, root, data = "<defaults>", None, {}
    if path is not None:
        path = Path(path)
        file = str(path)
        if not path.exists():
            raise InputError(file, None, None, "config file not found")
        data, root = parse_yaml(read_input_text(path), file)
        if not isinstance(data, dict):
            raise InputError(file, 1, None, "expected a mapping of keys (world/stream, pretrain/model, seeds, eval, study)")
        data = {k: v for k, v in data.items() if not (isinstance(k, str) and k.startswith("x-"))}
        if "methods" in data:
            raise InputError(file, _line_of(root, ("methods",)), "methods", f"a study makes its own methods; give the study's options under `study:` (see `ckl study {study_cls.name} --help`)")
    options = data.pop("study", None) or {}
    try:
        config = make_config(study_cls.Config, options, "study")
    except ConfigError as err:
        key = err.field.split(".")[1] if err.field.count(".") >= 1 else None
        raise InputError(file, _line_of(root, ("study", key) if key else ("study",)), err.field, str(err).removeprefix(f"{err.field}: ")) from None
    study = study_cls(config)
    rival = {"world": "stream", "pretrain": "model"}
    for key, value in study.experiment().items():  # the study's defaults yield to the user's keys
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**value, **data[key]}  # e.g. the user's eval.batch_size beside the study's eval.attack
        elif key not in data and rival.get(key) not in data:
            data[key] = value
    if "stream" not in data and "world" not in data:
        data["world"] = {}
    if "model" not in data and "pretrain" not in data:
        data["pretrain"] = {}
    data.setdefault("seeds", DEFAULT_SEEDS)
    data.setdefault("name", study_cls.name)
    experiment = ExperimentConfig.from_dict({**data, "methods": study.methods()}, file, root)
    check_world(experiment, file, root)
    from ckl.methods.base import build_method

    for spec in experiment.methods:  # options the study made from the user's: refused here, with the study's line
        try:
            build_method(spec.name, spec.options, where=spec.display)
        except (ConfigError, ValueError) as err:
            raise InputError(file, _line_of(root, ("study",)), "study", f"the study's method {spec.display!r} cannot be built from these options: {err}") from None
    if path is not None:
        base = Path(path).parent
        if experiment.stream is not None:
            experiment.stream = str((base / experiment.stream).resolve())
        if experiment.model is not None:
            experiment.model = str((base / experiment.model).resolve())
    return experiment, study


def run_study(study: Study, experiment, out: str | Path, say: Callable[[str], None] = print, progress=None) -> dict[str, Any]:
    """Check the stream, run (or resume) the study's experiment in `out`, analyse it, and
    store the result in the run's store (meta `study`).

    Raises:
        InputError: the stream cannot answer the study's question (nothing written), or
            what `run_experiment` raises.
    """
    from ckl.data.stream import Stream
    from ckl.results.store import Store
    from ckl.run.experiment import run_experiment

    out = Path(out)
    spec = {"study": study.name, "options": dataclasses.asdict(study.config),
            "source": experiment.stream if experiment.stream is not None else dataclasses.asdict(experiment.world)}
    _check_study_spec(out, spec)  # before anything is written
    if experiment.stream is not None:
        stream = Stream.load(experiment.stream)
    else:
        from ckl.data.world import build_world

        stream = build_world(experiment.world)
    derived = study.derive(stream)
    why = derived.why if isinstance(derived, Refused) else study.check(derived if derived is not None else stream)
    if why is not None:
        raise InputError(experiment.stream or "<world>", None, None, f"study {study.name}: {why}")
    if derived is not None:
        experiment.world, experiment.stream = None, str((out / "stream").resolve())
    _claim(experiment, out, spec)
    if derived is not None:
        _place_stream(derived, out)
    if study.runs_methods:
        run_experiment(experiment, out, say=say, progress=progress)
    else:
        _prepare(experiment, out, say, progress)
    from ckl.core.distributed import precision
    from ckl.run.experiment import make_accelerator

    with Store(out / "results.sqlite") as store:
        with precision(experiment.precision, make_accelerator()):
            study.after_run(experiment, out, store, say)
        result = study.analyse(store, experiment.seeds)
        store.set_meta(META_KEY, result)
    return result


def _check_study_spec(out: Path, spec: dict) -> None:
    """Refuse a directory that holds another study, this study with other options or
    inputs, or a plain run: its rows and measurements would be mixed into this one's."""
    from ckl.results.store import FILENAME, Store

    if not (out / FILENAME).exists():
        return
    with Store(out / FILENAME) as store:
        found = store.get_meta(SPEC_KEY)
    if found != spec:
        what = "a run that is not a study" if found is None else f"study {found['study']} with other options or inputs"
        raise InputError(str(out), None, None, f"holds {what}; its results would be mixed with this study's: choose another --out")


def _prepare(experiment, out: Path, say, progress) -> None:
    """For a study that trains on its own (`runs_methods` False): claim the directory with
    the checks a run makes (the same experiment as before, a base model that reached its
    target), then build the world and pretrain the base model as a run would."""
    from ckl.run.config import plain
    from ckl.run.experiment import _check_base, _open_store, experiment_identity, make_accelerator, prepare_model_dir, prepare_stream
    from ckl.run.rundir import check_run_dir, experiment_hash

    resolved = plain(experiment)
    identity = experiment_hash(experiment_identity(resolved))
    check_run_dir(out, identity)
    store = _open_store(out, resolved, identity)
    try:
        accelerator = make_accelerator()
        stream = prepare_stream(experiment, out, accelerator)
        prepare_model_dir(experiment, stream, out, accelerator, say, progress)
        _check_base(experiment, out, store, accelerator, say)
        store.set_meta("T", stream.T)  # what `ckl show` and the report read of any run
        store.set_meta("metric", experiment.eval.metric)
    finally:
        store.close()


def _claim(experiment, out: Path, spec: dict) -> None:
    """Claim `out` for this study (a directory ckl does not own is refused before anything
    is written) and record the study's spec first, so that an interrupted study resumes and
    another study or other options are refused (`_check_study_spec`)."""
    from ckl.results.store import FILENAME, Store
    from ckl.run.config import plain
    from ckl.run.experiment import experiment_identity
    from ckl.run.rundir import check_run_dir, claim_run_dir, experiment_hash

    identity = experiment_hash(experiment_identity(plain(experiment)))
    check_run_dir(out, identity)
    claim_run_dir(out, identity)
    with Store(out / FILENAME) as store:
        store.set_meta(SPEC_KEY, spec)


def _place_stream(stream, out: Path) -> None:
    """Save a derived stream as `out/stream` (the stream is deterministic, so a resumed
    study finds the same one; written aside and renamed, so a crash never leaves half)."""
    import shutil

    if not (out / "stream").exists():
        tmp = out / ".stream.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        stream.save(tmp)
        tmp.rename(out / "stream")


def verdict_text(result: dict[str, Any]) -> str:
    """"<name>: <verdict> - <line>", the one line `ckl show` and `ckl study` print."""
    return f"{result['name']}: {result['verdict']} - {result['line']}"
