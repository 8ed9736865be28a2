import pytest

from ckl.config import load_config
from ckl.errors import InputError

GOOD = """\
name: tiny
world: {people: 12}
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
        (GOOD.replace("fraction: 0.5", "fraction: 1.5"), 8, "methods[1].replay", "fraction"),
        (GOOD.replace("lora: {r: 4}", "lora: {rank: 4}"), 7, "methods[1].lora.rank", "unknown option"),
        (GOOD.replace("name: naive", "name: naiive"), 4, "methods[0].name", "unknown method"),
        (GOOD.replace("train: {epochs: 2}", "train: {epochs: 0}"), 5, "methods[0].train", "epochs"),
        (GOOD.replace("seeds: [0, 1]", "seeds: [a]"), 9, "seeds[0]", "integer"),
        (GOOD.replace("name: tiny", "name: tiny\nwrld: {}"), 2, "wrld", "Extra inputs"),
        (GOOD.replace("world: {people: 12}", "world: {people: 1}"), 2, "world.people", "greater than"),
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
        load_config(_write(tmp_path, GOOD.replace("world: {people: 12}\n", "")))


def test_invalid_yaml_and_unsafe_tags_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="invalid YAML"):
        load_config(_write(tmp_path, "methods: [\n"))
    with pytest.raises(InputError, match="invalid YAML"):
        load_config(_write(tmp_path, "name: !!python/object/apply:os.system ['echo hi']\n"))


def test_duplicate_labels_are_rejected(tmp_path):
    with pytest.raises(InputError, match="label"):
        load_config(_write(tmp_path, GOOD.replace("lora+replay", "naive").replace("    lora: {r: 4}\n    replay: {fraction: 0.5}\n", "")))


def test_shipped_examples_are_valid():
    from pathlib import Path

    examples = sorted(Path(__file__).resolve().parents[1].joinpath("examples").glob("*.yaml"))
    assert examples
    for path in examples:
        load_config(path)
