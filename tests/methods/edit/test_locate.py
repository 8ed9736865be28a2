"""Causal tracing on the tiny model: the corrupted subject tokens are where restoring helps."""

from typer.testing import CliRunner

from ckl.app.cli import app
from ckl.methods.edit.locate import SITES, trace, trace_fact


def test_restoring_the_subject_recovers_the_fact_and_other_tokens_do_not(tiny_stream, tiny_model):
    model, tokenizer = tiny_model
    fact = tiny_stream.invariant()[0]
    one = trace_fact(model, tokenizer, fact, tiny_stream.relations[fact.relation], samples=4)
    assert one["p_clean"] > 0.5 > one["p_corrupt"]
    s0, s1 = one["subject_span"]
    inside = max(one["by_position"][p] for p in range(s0, s1))
    between = [one["by_position"][p] for p in range(s1, one["prompt_last"])]
    assert inside > 0.1 and all(abs(e) < 0.05 for e in between), one["by_position"]
    assert inside > max(between)
    gap = one["p_clean"] - one["p_corrupt"]
    assert one["effect"]["prompt_last"][-1] > 0.5 * gap, "the last layer's state at the last token carries the answer"


def test_trace_averages_over_known_facts(tiny_stream, tiny_model):
    model, tokenizer = tiny_model
    result = trace(model, tokenizer, tiny_stream.invariant()[:5], tiny_stream.relations, samples=2)
    assert result.facts == 5 and 0 < result.known <= 5 and result.p_clean > result.p_corrupt
    assert set(result.effect) == set(SITES) and all(len(v) == result.layers for v in result.effect.values())


def test_locate_command_prints_a_table_and_rejects_bad_input(tiny_stream, tiny_model_dir, tmp_path):
    tiny_stream.save(tmp_path / "world")
    runner = CliRunner()
    ok = runner.invoke(app, ["locate", "--model", str(tiny_model_dir), "--stream", str(tmp_path / "world"), "--facts", "3", "--samples", "2"])
    assert ok.exit_code == 0, ok.output
    assert "subject last token" in ok.output and "causal trace" in ok.output
    bad = runner.invoke(app, ["locate", "--model", str(tiny_model_dir), "--stream", str(tmp_path / "world"), "--facts", "0"])
    assert bad.exit_code == 2
    missing = runner.invoke(app, ["locate", "--model", str(tmp_path / "nope"), "--stream", str(tmp_path / "world")])
    assert missing.exit_code == 2
