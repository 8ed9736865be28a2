from ckl import lm
from ckl.evaluate.scoring import score_probes


def test_pretraining_teaches_the_base_facts_and_saves_a_standard_model(tiny_stream, tiny_model_dir):
    model, tokenizer = lm.load(tiny_model_dir)
    assert (tiny_model_dir / "model.safetensors").exists()
    probes = [p for p in tiny_stream.probes(kinds=("statement",)) if p.cohort == "invariant"]
    accuracy = score_probes(model, tokenizer, probes).em.mean()
    assert accuracy >= 0.95
    # the stage-1 people are unknown before stage 1: knowledge comes from training, not the tokenizer
    new = [p for p in tiny_stream.probes(kinds=("statement",)) if p.cohort == "stage1" and p.change == "learn"]
    assert score_probes(model, tokenizer, new).em.mean() < 0.5


def test_tokenizer_knows_every_word_of_every_stage(tiny_stream, tiny_model_dir):
    _, tokenizer = lm.load(tiny_model_dir)
    for probe in tiny_stream.probes():
        ids = tokenizer(probe.prompt + " " + probe.answer, add_special_tokens=False).input_ids
        assert tokenizer.unk_token_id not in ids, probe
