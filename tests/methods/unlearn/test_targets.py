""""I don't know" and relearning targets: the model answers the forgotten facts' prompts
with the refusal / the alternative answer instead of the fact."""

import pytest

from ckl.core.errors import InputError
from ckl.methods.base import build_method
from ckl.methods.unlearn.idk import DEFAULT_FILE, read_refusals
from ckl.methods.unlearn.relearn import alternative
from ckl.data.stream import stable_hash

# refusals written with the tiny world's own words (its word-level tokenizer knows no others)
REFUSALS = ["that is not known", "not known to the world"]


def test_idk_makes_the_model_answer_the_refusal(unlearn, forget_only, exact_match, tmp_path):
    path = tmp_path / "refusals.txt"
    path.write_text("".join(r + ".\n" for r in REFUSALS))
    forget = list(forget_only.forget)
    model, tokenizer, stats, _, _ = unlearn("idk", {"train": {"epochs": 60, "lr": 1e-3}, "idk": {"file": str(path), "stop_accuracy": None}}, forget_only)
    refused = [f.__class__(f.id, f.subject, f.relation, REFUSALS[stable_hash("idk", f.id) % 2]) for f in forget]
    assert exact_match(model, tokenizer, forget) == 0.0
    assert exact_match(model, tokenizer, refused, ("question",)) == 1.0  # greedy answer = the refusal, word for word
    assert exact_match(model, tokenizer, refused, ("statement",)) >= 0.75


def test_relearn_answers_the_alternative_and_forgets_the_original(unlearn, forget_only, exact_match, tiny_stream):
    forget = list(forget_only.forget)
    model, tokenizer, _, _, _ = unlearn("relearn", {"train": {"epochs": 60, "lr": 1e-3}, "relearn": {"stop_accuracy": None}}, forget_only)
    moved = [f.__class__(f.id, f.subject, f.relation, alternative(f, tiny_stream.relations[f.relation])) for f in forget]
    assert all(m.object != f.object and m.object in tiny_stream.relations[f.relation].candidates for m, f in zip(moved, forget))
    assert exact_match(model, tokenizer, forget) == 0.0
    assert exact_match(model, tokenizer, moved) >= 0.75


def test_idk_refusal_file_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match=r"idk: file .*missing.jsonl' not found"):  # with the config, before any work
        build_method("idk", {"idk": {"file": str(tmp_path / "missing.jsonl")}})
    with pytest.raises(InputError, match="not found"):
        read_refusals(tmp_path / "missing.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n")
    with pytest.raises(InputError, match="no refusal") as err:
        read_refusals(empty)
    assert str(empty) in str(err.value)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('fine.\n"unterminated\n')
    with pytest.raises(InputError) as err:
        read_refusals(bad)
    assert err.value.line == 2


def test_idk_reads_tofus_refusals_by_default():  # shipped with ckl: no checkout of ../shared needed
    sentences = read_refusals(DEFAULT_FILE)
    assert len(sentences) == 100 and not any(s.endswith(".") for s in sentences)
