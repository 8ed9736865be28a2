"""The method registry: one broken method file must not take every other method down."""

from __future__ import annotations

import pytest

import ckl.methods
from ckl.methods import base


@pytest.fixture
def broken_module(tmp_path, monkeypatch):
    (tmp_path / "zz_broken_method.py").write_text("def oops(:\n")  # a syntax error, as while writing a method
    monkeypatch.setattr(ckl.methods, "__path__", [*ckl.methods.__path__, str(tmp_path)])
    monkeypatch.setattr(base, "BROKEN", {})
    return "ckl.methods.zz_broken_method"


def test_a_broken_method_file_leaves_the_others_usable_and_is_named(broken_module):
    with pytest.warns(RuntimeWarning, match="zz_broken_method"):
        registry = base.load_builtin()
    assert "replay" in registry and broken_module in base.BROKEN
    assert base.build_method("lora+replay").name == "lora+replay"
    with pytest.raises(ValueError, match=r"unknown method or part 'zz'.*zz_broken_method \(SyntaxError"):
        base.build_method("zz")


def test_ckl_methods_lists_what_could_not_be_loaded(broken_module):
    from typer.testing import CliRunner

    from ckl.app.cli import app

    with pytest.warns(RuntimeWarning):
        result = CliRunner().invoke(app, ["methods"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "replay" in result.output
    assert "not loaded" in result.output and "zz_broken_method" in result.output


def test_a_second_method_under_a_taken_name_is_refused_and_the_first_stays():
    from ckl.methods.naive import NaiveConfig

    registry = base.load_builtin()
    first = registry["naive"]

    class Impostor(base.Part):
        name = "naive"

    with pytest.raises(ValueError, match=r"'naive' is taken: ckl\.methods\.naive\..* registered it, .*Impostor cannot"):
        base.register_part("naive", NaiveConfig, Impostor, "not the real one")
    assert base.load_builtin()["naive"] is first
    base.register_part("naive", first.config, first.factory, first.help, first.kinds)  # its own module again: fine
    assert base.load_builtin()["naive"].factory is first.factory


@pytest.mark.parametrize("bad", [-1, "two", True, 1.5])
def test_a_methods_questions_option_is_checked(bad):
    with pytest.raises(ValueError, match=r"methods\[0\]\.questions: must be an integer >= 0 or null"):
        base.build_method("replay", {"questions": bad}, where="methods[0]")
    assert base.build_method("replay", {"questions": None}).questions is None
    assert base.build_method("replay", {"questions": 0}).questions == 0
