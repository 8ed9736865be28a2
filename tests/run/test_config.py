import pytest

from ckl.run.config import load_config
from ckl.core.errors import InputError

GOOD = """\
name: tiny
world: {people: 12, learn_per_stage: 4, update_per_stage: 4, forget_per_stage: 0}
methods:
  - name: naive
    train: {epochs: 2}
  - name: lora+replay
    lora: {r: 4}
    replay: {fraction: 0.5}
seeds: [0, 1]
"""


def _write(tmp_path, text):
    p = tmp_path / "exp.yaml"
    p.write_text(text)
    return p


def test_valid_config_loads_with_defaults(tmp_path):
    config = load_config(_write(tmp_path, GOOD))
    assert [m.display for m in config.methods] == ["naive", "lora+replay"]
    assert config.methods[1].options == {"lora": {"r": 4}, "replay": {"fraction": 0.5}}
    assert config.eval.metric == "em" and config.seeds == [0, 1]


@pytest.mark.parametrize(
    "text,line,field,message",
    [
        (GOOD.replace("fraction: 0.5", "fraction: 1.5"), 8, "methods[1].replay.fraction", "fraction"),
        (GOOD.replace("lora: {r: 4}", "lora: {rank: 4}"), 7, "methods[1].lora.rank", "unknown option"),
        (GOOD.replace("name: naive", "name: naiive"), 4, "methods[0].name", "unknown method"),
        (GOOD.replace("train: {epochs: 2}", "train: {epochs: 0}"), 5, "methods[0].train.epochs", "epochs"),
        (GOOD.replace("seeds: [0, 1]", "seeds: [a]"), 9, "seeds[0]", "integer"),
        (GOOD.replace("name: tiny", "name: tiny\nwrld: {}"), 2, "wrld", "unknown key (did you mean 'world'?)"),
        (GOOD.replace("people: 12", "people: 0"), 2, "world.people", "people must be >= 1"),
        (GOOD.replace("people: 12", "people: 1"), 2, "world.qa_fraction", "half of 0 people"),
        (GOOD.replace("people: 12", "people: 12, qa_fraction: 0"), 2, "world.qa_fraction", "qa_fraction must be in (0, 1]"),
        (GOOD.replace("people: 12", "people: 12, min_probe_word_count: -1"), 2, "world.min_probe_word_count", "must be >= 0"),
        (GOOD.replace("people: 12", "people: 12, background_people: 0"), 2, "world.min_probe_word_count", "read fewer times"),
        (GOOD.replace("people: 12", "people: 12, qa_fraction: 0.01"), 2, "world.qa_fraction", "half of 0 people"),
    ],
)
def test_config_errors_name_the_line_and_key(tmp_path, text, line, field, message):
    with pytest.raises(InputError) as info:
        load_config(_write(tmp_path, text))
    err = info.value
    assert (err.line, err.field) == (line, field), str(err)
    assert message in err.message


def test_stream_and_world_are_mutually_exclusive(tmp_path):
    with pytest.raises(InputError, match="exactly one"):
        load_config(_write(tmp_path, GOOD.replace("world: {people: 12, learn_per_stage: 4, update_per_stage: 4, forget_per_stage: 0}\n", "")))


def test_invalid_yaml_and_unsafe_tags_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="invalid YAML"):
        load_config(_write(tmp_path, "methods: [\n"))
    with pytest.raises(InputError, match="invalid YAML"):
        load_config(_write(tmp_path, "name: !!python/object/apply:os.system ['echo hi']\n"))


def test_method_without_support_for_a_requested_kind_is_refused_unless_skipped(tmp_path):
    text = GOOD.replace("forget_per_stage: 0", "forget_per_stage: 2")
    with pytest.raises(InputError) as info:
        load_config(_write(tmp_path, text))
    err = info.value
    assert (err.line, err.field) == (4, "methods[0]")
    assert "'forget'" in err.message and "skip: [forget]" in err.message and "4 forget" in err.message
    text = text.replace("  - name: naive\n", "  - name: naive\n    skip: [forget]\n").replace(
        "  - name: lora+replay\n", "  - name: lora+replay\n    skip: [forget]\n")
    config = load_config(_write(tmp_path, text))
    assert config.methods[0].skip == ["forget"] and "skip" not in config.methods[0].options


def test_run_experiment_refuses_unsupported_kinds_before_writing(tmp_path):
    from ckl.run.config import ExperimentConfig
    from ckl.run.experiment import run_experiment

    config = ExperimentConfig.from_dict({"world": {"people": 30}, "methods": [{"name": "naive"}]})
    with pytest.raises(InputError, match="does not support 'forget'"):
        run_experiment(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_duplicate_labels_are_rejected(tmp_path):
    with pytest.raises(InputError, match="label"):
        load_config(_write(tmp_path, GOOD.replace("lora+replay", "naive").replace("    lora: {r: 4}\n    replay: {fraction: 0.5}\n", "")))


def test_shipped_examples_are_valid():
    from pathlib import Path

    examples = sorted(Path(__file__).resolve().parents[2].joinpath("examples").glob("*.yaml"))
    assert examples
    for path in examples:
        try:
            load_config(path)
        except InputError as err:
            # examples on an imported stream (editing, unlearning) need the import command
            # in their header run first; without it the error must say exactly that
            assert "stream directory not found" in err.message and "ckl import" in path.read_text(), (path, err)


def test_x_keys_hold_yaml_anchors_for_shared_settings(tmp_path):
    text = "x-train: &t {epochs: 3, lr: 0.01}\n" + GOOD.replace("train: {epochs: 2}", "train: *t")
    config = load_config(_write(tmp_path, text))
    assert config.methods[0].options["train"] == {"epochs": 3, "lr": 0.01}


def test_floats_written_as_people_write_them_are_numbers(tmp_path):
    # YAML 1.1 (PyYAML) reads 1e-3 as the string "1e-3", which was refused as "not a number"
    from ckl.run.config import load_config

    path = tmp_path / "exp.yaml"
    path.write_text("name: e\nworld: {people: 20, min_probe_word_count: 0, background_people: 4}\n"
                    "methods:\n  - name: naive\n    skip: [forget]\n    train: {epochs: 1, lr: 1e-3}\n"
                    "  - name: replay\n    skip: [forget]\n    train: {epochs: 1, lr: 2E-4}\n    replay: {fraction: 5e-1}\n")
    config = load_config(path)
    assert [m.options["train"]["lr"] for m in config.methods] == [0.001, 0.0002]
    assert config.methods[1].options["replay"]["fraction"] == 0.5


def test_every_mistake_is_reported_at_once_with_its_line(tmp_path):
    from ckl.core.errors import InputError
    from ckl.run.config import load_config

    path = tmp_path / "exp.yaml"
    path.write_text(
        "name: x\n"
        "world: {people: 12, background_people: 4, min_probe_word_count: 0}\n"
        "methods:\n"
        "  - name: replay\n"
        "    replay: {fraction: 1.5}\n"
        "  - name: ewc\n"
        "    ewc: {strength: -1}\n"
    )
    with pytest.raises(InputError) as info:
        load_config(path)
    found = [(e.line, e.field) for e in [info.value, *info.value.more]]
    assert found == [(2, "world.update_per_stage"), (5, "methods[0].replay.fraction"), (7, "methods[1].ewc.strength")]
    text = str(info.value).splitlines()
    assert len(text) == 3 and text[1].startswith(f"{path}:5: field 'methods[0].replay.fraction': fraction must be in [0, 1)")

    path.write_text("name: x\nworld: {people: 0}\npretrain: {n_head: 3}\nmethods: [{name: naive}]\nseeds: [-1]\n")
    with pytest.raises(InputError) as info:  # the schema's errors and the world's and pretraining's rules, together
        load_config(path)
    assert [e.field for e in [info.value, *info.value.more]] == ["world.people", "pretrain.n_head", "seeds[0]"]
    assert "n_embd (256) must be divisible by n_head (3)" in str(info.value)


def test_a_mistyped_key_part_or_option_gets_a_suggestion(tmp_path):
    from ckl.core.errors import InputError
    from ckl.run.config import load_config

    path = tmp_path / "exp.yaml"
    path.write_text("name: x\nworld: {people: 12, peple: 3}\nmethds: []\nmethods: [{name: naive}]\n")
    with pytest.raises(InputError) as info:
        load_config(path)
    found = {e.field: e.message for e in [info.value, *info.value.more]}
    assert found["world.peple"].startswith("unknown key (did you mean 'people'?)")
    assert found["methds"].startswith("unknown key (did you mean 'methods'?)")

    path.write_text(
        "name: x\nworld: {people: 12, learn_per_stage: 4, update_per_stage: 4, forget_per_stage: 2, background_people: 4, min_probe_word_count: 0}\n"
        "methods:\n  - name: replya\n  - {name: naive, trian: {epochs: 2}, skip: [forget]}\n"
        "  - {name: replay, replay: {fracton: 0.2}, skip: [forget]}\n"
    )
    with pytest.raises(InputError) as info:
        load_config(path)
    found = {e.field: e.message for e in [info.value, *info.value.more]}
    assert "unknown method or part 'replya' (did you mean 'replay'?)" in found["methods[0].name"]
    assert found["methods[1].trian"].endswith("(did you mean 'train'?)")
    assert found["methods[2].replay.fracton"].startswith("unknown option (did you mean 'fraction'?)")


def test_a_loaded_config_round_trips_through_the_json_a_run_stores(tmp_path):
    import json

    from ckl.run.config import ExperimentConfig, plain

    config = load_config(_write(tmp_path, GOOD))
    stored = json.loads(json.dumps(plain(config)))
    assert stored["methods"][1] == {"name": "lora+replay", "label": None, "skip": [], "lora": {"r": 4}, "replay": {"fraction": 0.5}}
    again = ExperimentConfig.from_dict(stored)
    assert again == config and plain(again) == stored
    assert type(again.world).__name__ == "WorldConfig" and type(again.eval).__name__ == "EvalConfig"


def test_the_yaml_schema_is_derived_from_the_config_dataclasses():
    import dataclasses
    from typing import Annotated

    import pydantic

    from ckl.run.config import EvalConfig, spec_of

    @dataclasses.dataclass
    class Probe:
        size: Annotated[int, pydantic.Field(ge=1)] = dataclasses.field(default=3, metadata={"help": "how many"})
        inner: EvalConfig | None = None

    spec = spec_of(Probe)
    assert set(spec.model_fields) == {"size", "inner"} and spec.model_fields["size"].description == "how many"
    assert spec().size == 3
    for bad in ({"size": 0}, {"siez": 3}, {"inner": {"batch_size": 0}}, {"inner": {"metric": "f1"}}):
        with pytest.raises(pydantic.ValidationError):
            spec.model_validate(bad)


def test_an_experiment_without_methods_is_refused_naming_the_key():
    from ckl.run.config import ExperimentConfig

    with pytest.raises(InputError) as info:
        ExperimentConfig.from_dict({"world": {"people": 12}, "methods": []})
    assert info.value.field == "methods"
