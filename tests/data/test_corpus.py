"""corpus.jsonl: the domain corpora of continual pre-training stages (docs/formats.md)."""

import json

import pytest

from ckl.core.errors import InputError
from ckl.data.check import check_stream
from ckl.data.stream import Stream
from ckl.data.world import WorldConfig, build_world

SMALL = dict(people=12, stages=2, learn_per_stage=0, update_per_stage=0, forget_per_stage=0, general_train=40,
             general_heldout=20, background_people=6, min_probe_word_count=0, corpus_per_stage=20, corpus_heldout=5)


@pytest.fixture(scope="module")
def cpt_world():
    return build_world(WorldConfig(**SMALL))


def test_a_pure_continual_pretraining_world_has_a_corpus_and_held_out_text_per_stage(cpt_world):
    assert [ch.kinds for ch in cpt_world.stages] == [("corpus",), ("corpus",)]
    for ch in cpt_world.stages:
        assert len(ch.corpus) == 20 and len(cpt_world.domain_heldout[ch.stage]) == 5
        assert not set(ch.corpus) & set(cpt_world.domain_heldout[ch.stage])  # held out means never trained
    assert not set(cpt_world.stages[0].corpus) & set(cpt_world.stages[1].corpus)
    # the base knowledge is the same world's: corpora are added, nothing else moves
    assert cpt_world.base == build_world(WorldConfig(**{**SMALL, "corpus_per_stage": 0, "forget_per_stage": 1})).base


def test_a_world_with_facts_and_a_corpus_has_both_kinds_in_each_stage():
    w = build_world(WorldConfig(**{**SMALL, "learn_per_stage": 2, "forget_per_stage": 1, "corpus_per_stage": 3}))
    assert [ch.kinds for ch in w.stages] == [("learn", "forget", "corpus")] * 2


def test_a_corpus_without_held_out_text_is_refused():
    with pytest.raises(ValueError, match="corpus_heldout"):
        WorldConfig(**{**SMALL, "corpus_heldout": 0})


def test_a_stream_with_corpora_round_trips_and_checks_clean(tmp_path, cpt_world):
    cpt_world.save(tmp_path)
    again = Stream.load(tmp_path)
    assert again.stages == cpt_world.stages and again.domain_heldout == cpt_world.domain_heldout
    assert not [f for f in check_stream(tmp_path) if f.severity == "error" or "change nothing" in f.message]
    # a stream saved again without corpora leaves no corpus.jsonl of the earlier one behind
    build_world(WorldConfig(**{**SMALL, "corpus_per_stage": 0, "learn_per_stage": 1})).save(tmp_path)
    assert not (tmp_path / "corpus.jsonl").exists() and not Stream.load(tmp_path).domain_heldout


@pytest.mark.parametrize("row, field, words", [
    ({"stage": 0, "text": "x"}, "stage", "integer >= 1"),
    ({"stage": "1", "text": "x"}, "stage", "integer >= 1"),
    ({"text": "x"}, "stage", "missing"),
    ({"stage": 1}, "text", "missing"),
    ({"stage": 1, "text": "  "}, "text", "non-empty string"),
    ({"stage": 1, "text": "x", "heldout": "yes"}, "heldout", "true or false"),
    ({"stage": 1, "text": "x", "held_out": True}, "held_out", "unknown field"),
    ({"stage": 3, "text": "x"}, "stage", "beyond the stream's 2 stage"),
])
def test_a_bad_corpus_line_names_the_file_line_and_field(tmp_path, cpt_world, row, field, words):
    cpt_world.save(tmp_path)
    path = tmp_path / "corpus.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    lines.insert(3, json.dumps(row))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match=words) as info:
        Stream.load(tmp_path)
    assert info.value.file == str(path) and info.value.line == 4 and info.value.field == field
