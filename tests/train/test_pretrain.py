import pytest

from ckl.model import lm
from ckl.model.scoring import score_probes


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


def test_refusals_give_the_tokenizer_the_words_of_the_idk_answers(tiny_stream, accelerator, tmp_path):
    from ckl.data.formats.refusals import DEFAULT_FILE, read_refusals
    from ckl.methods.unlearn.idk import expressible
    from ckl.train.pretrain import PretrainConfig, pretrain

    sentences = read_refusals(DEFAULT_FILE)
    usable = {}
    for refusals in (False, True):
        config = PretrainConfig(n_layer=1, n_embd=16, n_head=2, max_epochs=1, eval_every=1, refusals=refusals)
        _, tokenizer, _ = pretrain(tiny_stream, config, accelerator)
        usable[refusals] = len(expressible(sentences, tokenizer))
    assert usable[False] == 0 and usable[True] == len(sentences)


@pytest.mark.heavy  # started first (tests/conftest.py)
@pytest.mark.timeout(1200)  # a real pretraining run: 92 s at two threads on a quiet machine, far more beside other jobs
def test_the_default_recipe_teaches_knowledge_not_sentences(accelerator):
    """The issue's K0 targets, with the default pretraining recipe and model on a smaller
    world of the same construction (docs/knowledge.md has the default world: 0.978 / 0.894
    / 0.956 after 20 epochs). Statement >= 0.95; extraction (questions about the people
    whose question-answer lines were never trained) >= 0.80; held-out paraphrases >= 0.80.
    Measured with the default model (4 x 256, three biographies per epoch): reached at
    epoch 30 (statement 0.983, paraphrase 0.821, extraction 0.875), 90 s at two threads."""
    from ckl.train.pretrain import PretrainConfig, pretrain
    from ckl.data.world import WorldConfig, build_world

    stream = build_world(WorldConfig(
        seed=0, people=30, stages=1, learn_per_stage=5, update_per_stage=5, forget_per_stage=2,
        general_train=100, background_people=50, min_probe_word_count=10,
    ))
    _, _, result = pretrain(stream, PretrainConfig(max_epochs=150, eval_every=10), accelerator)
    k = result.knowledge
    assert result.reached_target, result.knowledge_history
    assert k["statement"] >= 0.95 and k["extraction"] >= 0.80 and k["paraphrase"] >= 0.80, k


def test_pretraining_defaults_are_the_default_model_shape():
    """PretrainConfig cannot import the model module (it builds CLI options at every start),
    so the default shape is written twice; this keeps the two the same."""
    from ckl.model.lm import TinyModelConfig
    from ckl.train.config import PretrainConfig

    shape, config = TinyModelConfig(), PretrainConfig()
    assert (config.n_layer, config.n_embd, config.n_head, config.n_inner) == (shape.n_layer, shape.n_embd, shape.n_head, shape.n_inner)
