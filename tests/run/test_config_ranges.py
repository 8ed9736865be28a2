"""Contract: every float option of every configuration refuses NaN and infinity (issue 18).

The classes come from the registry (every method and part, however added) and from a walk
over the `ckl` package (every `*Config` dataclass: training, pretraining, the world, the
unlearning evaluation, the importers) and the experiment config's pydantic models, never
from a hand-written list, so a new option is covered the day it is added. Each float
field is set to NaN, +inf and -inf in turn, the other fields left at their defaults, and
must be refused with a ValueError naming it.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import pkgutil
import typing

import pydantic
import pytest
import yaml

import ckl
from ckl.core.checks import check_number
from ckl.run.config import ExperimentSpec, load_config
from ckl.core.errors import InputError
from ckl.methods.base import load_builtin, make_config

BAD = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _is_float(annotation) -> bool:
    return annotation is float or float in typing.get_args(annotation)


def _config_dataclasses() -> list[type]:
    classes = {entry.config for entry in load_builtin().values()}
    for info in pkgutil.walk_packages(ckl.__path__, prefix="ckl."):
        if info.name.endswith("__main__"):
            continue
        for value in vars(importlib.import_module(info.name)).values():
            if isinstance(value, type) and dataclasses.is_dataclass(value) and value.__name__.endswith("Config") and value.__module__.startswith("ckl."):
                classes.add(value)
    return sorted(classes, key=lambda c: (c.__module__, c.__name__))


def _pydantic_models(model: type[pydantic.BaseModel] = ExperimentSpec, seen=None) -> list[type]:
    seen = seen if seen is not None else []
    if model not in seen:
        seen.append(model)
        for info in model.model_fields.values():
            for arg in (info.annotation, *typing.get_args(info.annotation)):
                if isinstance(arg, type) and issubclass(arg, pydantic.BaseModel):
                    _pydantic_models(arg, seen)
    return seen


FLOAT_FIELDS = [(cls, f.name) for cls in _config_dataclasses()
                for f in dataclasses.fields(cls) if _is_float(typing.get_type_hints(cls)[f.name])]
SPEC_FIELDS = [(model, name) for model in _pydantic_models() for name, info in model.model_fields.items() if _is_float(info.annotation)]


def test_the_contract_sees_every_registered_config_and_its_float_options():
    registered = {entry.config for entry in load_builtin().values()}
    assert registered <= {cls for cls in _config_dataclasses()}
    names = {(cls.__name__, name) for cls, name in FLOAT_FIELDS}
    for known in [("TrainConfig", "lr"), ("RomeConfig", "lr"), ("LoraConfig", "alpha"), ("ReplayConfig", "fraction"),
                  ("EwcConfig", "strength"), ("WorldConfig", "qa_fraction"), ("PretrainConfig", "copy_fraction"), ("AttackConfig", "lr")]:
        assert known in names, known
    assert len(FLOAT_FIELDS) >= 60 and len({cls for cls, _ in FLOAT_FIELDS}) >= 30
    assert {name for _, name in SPEC_FIELDS} >= {"qa_fraction", "lr", "target", "copy_fraction"}


@pytest.mark.parametrize("bad", sorted(BAD))
@pytest.mark.parametrize("cls,name", FLOAT_FIELDS, ids=[f"{c.__name__}.{n}" for c, n in FLOAT_FIELDS])
def test_every_float_option_of_every_config_refuses_nan_and_infinity(cls, name, bad):
    with pytest.raises(ValueError, match=name):
        make_config(cls, {name: BAD[bad]}, cls.__name__)


@pytest.mark.parametrize("bad", sorted(BAD))
@pytest.mark.parametrize("model,name", SPEC_FIELDS, ids=[f"{m.__name__}.{n}" for m, n in SPEC_FIELDS])
def test_every_float_field_of_the_experiment_config_refuses_nan_and_infinity(model, name, bad):
    with pytest.raises(pydantic.ValidationError):
        model(**{name: BAD[bad]})


@pytest.mark.parametrize("where,value", [
    ("methods[0].train", {"lr": ".inf"}), ("methods[0].replay", {"fraction": ".nan"}), ("methods[0].train", {"max_grad_norm": ".inf"}),
    ("pretrain", {"lr": ".inf"}), ("pretrain", {"copy_fraction": ".nan"}), ("world", {"qa_fraction": ".nan"}),
])
def test_nan_and_infinity_in_a_yaml_config_are_input_errors(tmp_path, where, value):
    config = {"name": "x", "world": {"people": 12, "stages": 1}, "pretrain": {"max_epochs": 2},
              "methods": [{"name": "replay", "skip": ["forget"], "train": {"epochs": 1}, "replay": {"fraction": 0.5}}]}
    key, option = where.split(".")[-1] if "." in where else where, next(iter(value))
    target = config["methods"][0] if where.startswith("methods") else config
    target.setdefault(key, {})[option] = "PLACEHOLDER"
    text = yaml.safe_dump(config).replace("PLACEHOLDER", value[option])
    path = tmp_path / "x.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as err:
        load_config(path)
    assert err.value.file == str(path) and option in str(err.value)


def test_check_number_is_the_one_finite_range_helper():
    check_number(0.5, "x", low=0, high=1)
    for value in (math.nan, math.inf, -math.inf, True, "1", None):
        with pytest.raises(ValueError, match="x must be a finite number"):
            check_number(value, "x")
    with pytest.raises(ValueError, match=r"x must be a finite number > 0, got 0"):
        check_number(0, "x", low=0, low_open=True)
    with pytest.raises(ValueError, match=r"x must be a finite number >= 0 and <= 1, got 2"):
        check_number(2, "x", low=0, high=1)
