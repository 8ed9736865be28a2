"""Mix-CPT: the knowledge epochs train the stage's facts as usual, the alignment epochs
train only question-answer lines of facts the model already knows (QA half, kept true),
and no epoch asks a question about a stage fact whose questions are held out."""

import pytest

from ckl.data.stream import QUESTION_FORMAT
from ckl.methods.base import StageContext, build_method
from ckl.model import lm
from tests.methods.data._documents import record_documents

QUESTION = QUESTION_FORMAT.split("{")[0]  # "Question: "


def test_alignment_epochs_train_only_known_question_answer_lines(monkeypatch, tiny_stream, tiny_model_dir, accelerator):
    assert tiny_stream.qa_subjects, "the tiny world has a QA half"
    seen = record_documents(monkeypatch)
    change = tiny_stream.stages[0]
    model, tokenizer = lm.load(tiny_model_dir)
    method = build_method("mix_cpt", {"train": {"epochs": 5, "lr": 1e-3}, "mix_cpt": {"align_epochs": 2, "align_facts": 8}})
    method.apply(model, change, StageContext(tiny_stream.relations, tiny_stream.base, 1, 0, tokenizer, accelerator, change=change, qa_subjects=tiny_stream.qa_subjects))

    taught = [*change.learn, *(r.fact for r in change.update)]
    held_out = {f.subject for f in taught if f.subject not in tiny_stream.qa_subjects}
    assert held_out, "some of the stage's people have their questions held out"
    touched = change.touched()
    for epoch in (0, 1, 2):  # knowledge: the stage's facts as text
        assert any(f.object in doc for f in change.learn for doc in seen[epoch])
    for epoch in (3, 4):  # alignment: question-answer lines only, of known facts of the QA half
        assert seen[epoch] and all(doc.startswith(QUESTION) for doc in seen[epoch])
        asked = [f for f in tiny_stream.base if any(doc.startswith(QUESTION) and f.subject in doc and doc.endswith(f" {f.object}.") for doc in seen[epoch])]
        assert asked and all(f.subject in tiny_stream.qa_subjects and f.id not in touched for f in asked)
        assert not any(f.object in doc and f.subject in doc for f in change.learn for doc in seen[epoch])
    for docs in seen.values():  # extraction stays held out
        assert not any(doc.startswith(QUESTION) and s in doc for s in held_out for doc in docs)


def test_the_knowledge_stage_needs_an_epoch():
    with pytest.raises(ValueError, match="align_epochs"):
        build_method("mix_cpt", {"train": {"epochs": 2}, "mix_cpt": {"align_epochs": 2}})
