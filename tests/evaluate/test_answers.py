"""What the answers were: the free greedy answer's "correct" is the scorer's exact match
probe by probe (unguided and under KCTS guidance), guidance towards a wrong object makes
every answer a hallucinated object and towards the former one a stale answer, and the
groups leave out the answers that are not true now."""

from dataclasses import replace

import numpy as np

from ckl.data.stream import make_probes
from ckl.evaluate.answers import LABELS, classify, former_objects, group_of, row_notes, world_entities
from ckl.model.scoring import SUPPORT, SUPPORT_HARD, SUPPORT_WEIGHT, score_probes
from tests.methods.edit.memory_helpers import load


def _probes(stream):
    stage = stream.stages[0]
    known = make_probes(list(stream.invariant())[:40], stream.relations, "invariant", 0, "base", ("statement", "question"), 10)
    new = make_probes(list(stage.learn) + [r.fact for r in stage.update], stream.relations, "stage1", 1, "learn", ("statement",), 10)
    return known + new


def test_correct_is_the_scorers_greedy_exact_match_unguided_and_guided(tiny_stream, tiny_model_dir):
    model, tokenizer = load(tiny_model_dir)
    probes = _probes(tiny_stream)
    entities, former = world_entities(tiny_stream), former_objects(tiny_stream)
    for guided in (False, True):
        asked = probes
        if guided:  # half of the probes guided to their answer, weight 3 (KCTS's soft guidance)
            asked = [replace(p, meta={SUPPORT: (p.answer,), SUPPORT_WEIGHT: 3.0, SUPPORT_HARD: False}) if i % 2 else p
                     for i, p in enumerate(probes)]
        labels = classify(model, tokenizer, asked, entities, former)
        em = score_probes(model, tokenizer, asked).em
        assert [label == "correct" for label in labels] == em.tolist()
        assert set(labels) <= set(LABELS)
        if not guided:
            plain_correct = np.mean([label == "correct" for label in labels])
    assert np.mean([label == "correct" for label in labels]) > plain_correct  # guidance helped the guided half


def test_hard_guidance_to_another_object_is_a_hallucination_and_to_the_former_one_stale(tiny_stream, tiny_model_dir):
    model, tokenizer = load(tiny_model_dir)
    stage = tiny_stream.stages[0]
    updated = make_probes([r.fact for r in stage.update], tiny_stream.relations, "stage1", 1, "update", ("statement",), 10)
    old = {r.fact.id: r.old_object for r in stage.update}
    entities, former = world_entities(tiny_stream), former_objects(tiny_stream)
    wrong = [replace(p, meta={SUPPORT: (next(c for c in p.candidates if c not in (p.answer, old[p.fact_id])),), SUPPORT_WEIGHT: 0.0,
                              SUPPORT_HARD: True}) for p in updated]
    assert classify(model, tokenizer, wrong, entities, former) == ["other_object"] * len(wrong)
    back = [replace(p, meta={SUPPORT: (old[p.fact_id],), SUPPORT_WEIGHT: 0.0, SUPPORT_HARD: True}) for p in updated]
    assert classify(model, tokenizer, back, entities, former) == ["stale"] * len(back)
    # unguided, the frozen model answers the updated facts the old way: stale, not hallucinated
    plain = classify(model, tokenizer, updated, entities, former)
    assert plain.count("stale") / len(plain) > 0.5


def test_row_notes_classify_the_true_now_and_forgotten_facts_only(tiny_stream, tiny_model_dir):
    model, tokenizer = load(tiny_model_dir)
    probes = tiny_stream.probes(("statement",))
    notes = row_notes(model, tokenizer, probes, tiny_stream)
    known = [p for p in probes if group_of(p) == "known"]
    forget = [p for p in probes if group_of(p) == "forget"]
    assert notes["known"]["n"] == len(known) and notes["forget"]["n"] == len(forget)
    assert not any(group_of(p) for p in probes if p.cohort.startswith("stale") or p.cohort == "unseen")
    for group in ("known", "forget"):
        assert abs(sum(notes[group][label] for label in LABELS) - 1.0) < 1e-9
        assert notes["by_kind"][group]["statement"] == notes[group]
    # before any stage the model answers the base facts (correct) and the new people wrongly
    assert notes["known"]["correct"] > 0.5 and notes["forget"]["correct"] > 0.5


def test_a_run_with_eval_answers_reports_hallucinated_objects(tmp_path, tiny_stream, tiny_model_dir):
    """`eval.answers` stores the shares at rows 0 and T, and the summary (every table)
    reports them; a run without it shows no such column."""
    from ckl.results import numbers
    from ckl.results.store import Store
    from ckl.results.summary import summarize
    from ckl.run.config import ExperimentConfig
    from ckl.run.experiment import run_experiment

    tiny_stream.save(tmp_path / "stream")
    config = ExperimentConfig.from_dict({"stream": str(tmp_path / "stream"), "model": str(tiny_model_dir),
                                         "methods": [{"name": "kcts", "kcts": {"hard": True}}],
                                         "eval": {"kinds": ["statement"], "answers": True}})
    run_experiment(config, tmp_path / "run", say=lambda m: None)
    with Store(tmp_path / "run") as store:
        infos = store.stage_infos("kcts", 0)
        assert [("answers" in i["notes"]) for i in infos] == [True, False, True]  # rows 0 and T only
        entry = summarize(store)["kcts"]
    final = infos[-1]["notes"]["answers"]["known"]
    assert entry["hallucinated"] == final["other_object"] and entry["no_object"] == final["no_object"]
    assert entry["hallucinated_before"] == infos[0]["notes"]["answers"]["known"]["other_object"]
    assert final["no_object"] == 0.0  # hard guidance always names a retrieved object
    labels = [n.label for n in numbers.shown(numbers.columns("learning"), [entry])]
    assert "halluc." in labels and "halluc." not in [n.label for n in numbers.shown(numbers.columns("learning"), [{}])]
