"""The README's experiment YAML is a config that loads as written (it once failed: its
world had deletion requests and its methods no `skip: [forget]`), and the error it shows
for a mistake is the error ckl prints for that mistake."""

import re
from pathlib import Path

import pytest

from ckl.core.errors import InputError
from ckl.run.config import load_config

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def _yaml_block() -> str:
    return re.search(r"```yaml\n(.*?)```", README, re.S).group(1)


def test_the_readmes_experiment_loads_as_written(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(_yaml_block())
    config = load_config(path)
    assert [m.display for m in config.methods] == ["naive", "lora+replay"] and config.world.forget_per_stage == 5


def test_the_readmes_error_example_is_what_ckl_prints(tmp_path):
    shown = re.search(r"\$ ckl run exp\.yaml.*\n(error: .*)\n", README).group(1)
    path = tmp_path / "exp.yaml"
    path.write_text(_yaml_block().replace("fraction: 0.5", "fraction: 1.5"))
    with pytest.raises(InputError) as info:
        load_config(path)
    assert "error: " + str(info.value).replace(str(path), "exp.yaml") == shown
