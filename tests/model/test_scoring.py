"""Batched probe scoring agrees with the slow one-probe path (generate + one pass per candidate)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from ckl.model import scoring
from ckl.model.scoring import perplexity, reference_score, score_probes, stop_token_mask
from ckl.data.facts import Probe
from ckl.model.lm import EOS, PAD, TinyModelConfig, make_tokenizer, tiny_model

CITIES = ("Oakridge", "Port Elmira", "Port Elmira Harbour", "New Harrow Bay", "Lowmere", "Saltford", "Port Quill")
EMPLOYERS = ("Brightwave Systems", "Kestrel", "Ironleaf Mining Company", "Dunmore", "Brightwave Labs")

# (subject, relation prompt, object); the first block is trained, the second is not.
TRAINED = [
    ("Alda Venn", "was born in", "Port Elmira"),
    ("Brin Castell", "was born in", "Oakridge"),
    ("Cora Lind", "was born in", "New Harrow Bay"),
    ("Dane Voss", "was born in", "Port Elmira Harbour"),
    ("Edda Quill", "was born in", "Saltford"),
    ("Finn Marlow", "was born in", "Lowmere"),
    ("Gale Hart", "was born in", "Port Quill"),
    ("Hale Brook", "was born in", "New Harrow Bay"),
    ("Ivo Stern", "was born in", "Oakridge"),
    ("Jora Pike", "was born in", "Port Elmira"),
    ("Alda Venn", "works at", "Brightwave Systems"),
    ("Brin Castell", "works at", "Kestrel"),
    ("Cora Lind", "works at", "Ironleaf Mining Company"),
    ("Dane Voss", "works at", "Dunmore"),
    ("Edda Quill", "works at", "Brightwave Labs"),
    ("Finn Marlow", "works at", "Kestrel"),
    ("Gale Hart", "works at", "Ironleaf Mining Company"),
    ("Hale Brook", "works at", "Brightwave Systems"),
    ("Ivo Stern", "works at", "Dunmore"),
    ("Jora Pike", "works at", "Brightwave Labs"),
]
UNTRAINED = [
    ("Kira Dell", "was born in", "Saltford"),
    ("Lorn Ash", "was born in", "Port Elmira Harbour"),
    ("Mira Fenn", "works at", "Ironleaf Mining Company"),
    ("Nils Crane", "works at", "Brightwave Systems"),
]


def _probe(i: int, subject: str, relation: str, answer: str, candidates=None) -> Probe:
    if candidates is None:
        candidates = CITIES if relation == "was born in" else EMPLOYERS
    return Probe(f"p{i}", f"{subject} {relation}", answer, tuple(candidates), "statement", "invariant", f"f{i}")


def _probes() -> list[Probe]:
    facts = TRAINED + UNTRAINED
    probes = [_probe(i, *f) for i, f in enumerate(facts)]
    # The model says "Port Elmira Harbour" here: the gold's tokens are a prefix of the
    # greedy output, but the answer does not stop there, so this is not an exact match.
    probes.append(_probe(100, "Dane Voss", "was born in", "Port Elmira"))
    # A question form the model never saw: well-defined, whatever it answers.
    probes.append(Probe("q", "Where was Alda Venn born ?", "Port Elmira", CITIES, "question", "invariant", "q"))
    return probes


def _sentences() -> list[str]:
    return [f"{s} {r} {o} ." for s, r, o in TRAINED]


def _train(model, tokenizer, texts, steps: int = 300) -> None:
    torch.manual_seed(0)
    eos = tokenizer.eos_token_id
    seqs = [ids + [eos] for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), tokenizer.pad_token_id)  # (B, T)
    labels = torch.full((len(seqs), width), -100)  # (B, T)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = labels[r, : len(s)] = torch.tensor(s)
        mask[r, : len(s)] = 1
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


SMALL = TinyModelConfig(n_layer=2, n_embd=64, n_head=2)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # A model this small gains nothing from intra-op threads, and on a busy 2-core
    # machine OpenMP threads that wait for a descheduled sibling make it 100x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def word_model():
    probes = _probes()
    tokenizer = make_tokenizer(_sentences() + [p.prompt for p in probes] + list(CITIES) + list(EMPLOYERS))
    model = tiny_model(tokenizer, SMALL, seed=0)
    _train(model, tokenizer, _sentences())
    return model, tokenizer, probes


def _byte_level_bpe(texts: list[str]) -> PreTrainedTokenizerFast:
    """A GPT-2-style byte-level BPE tokenizer, trained locally (no download).

    The vocabulary is small enough that most objects are several subword tokens
    ("ĠOa kridge", "ĠHar b o u r") and large enough that no object holds a bare-space
    token "Ġ", which is a stop token and would end the answer in the reference path.
    """
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=[EOS, PAD], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOS, pad_token=PAD, bos_token=EOS)


@pytest.fixture(scope="module")
def bpe_model():
    probes = _probes()
    tokenizer = _byte_level_bpe(_sentences() + [p.prompt for p in probes])
    model = tiny_model(tokenizer, SMALL, seed=0)
    _train(model, tokenizer, _sentences(), steps=400)
    return model, tokenizer, probes


def _assert_matches_reference(model, tokenizer, probes, scores) -> list[tuple]:
    reference = [reference_score(model, tokenizer, p) for p in probes]
    for i, (p, (em, rank_ok, logprob, predicted)) in enumerate(zip(probes, reference)):
        assert scores.em[i] == em, p
        assert scores.rank_ok[i] == rank_ok, p
        assert scores.predicted[i] == predicted, p
        assert scores.logprob[i] == pytest.approx(logprob, abs=1e-4), p
    return reference


def test_batched_scoring_matches_one_probe_generation(word_model):
    model, tokenizer, probes = word_model
    scores = score_probes(model, tokenizer, probes, batch_size=256)
    _assert_matches_reference(model, tokenizer, probes, scores)
    # The data must exercise both outcomes of both checks, and multi-token answers.
    assert scores.em.any() and not scores.em.all()
    assert scores.rank_ok.any() and not scores.rank_ok.all()
    right = [p for p, ok in zip(probes, scores.em) if ok]
    assert any(len(tokenizer(" " + p.answer, add_special_tokens=False)["input_ids"]) == 3 for p in right)


def test_byte_level_bpe_tokenizer_matches_one_probe_generation(bpe_model):
    model, tokenizer, probes = bpe_model
    assert tokenizer.convert_ids_to_tokens(tokenizer(" Port", add_special_tokens=False)["input_ids"])[0].startswith("Ġ")
    scores = score_probes(model, tokenizer, probes, batch_size=7)
    _assert_matches_reference(model, tokenizer, probes, scores)
    assert scores.em.any() and not scores.em.all()


@pytest.mark.parametrize("batch_size", [1, 3, 256])
def test_batch_size_does_not_change_scores(word_model, batch_size):
    model, tokenizer, probes = word_model
    base = score_probes(model, tokenizer, probes, batch_size=256)
    scores = score_probes(model, tokenizer, probes, batch_size=batch_size)
    np.testing.assert_array_equal(scores.em, base.em)
    np.testing.assert_array_equal(scores.rank_ok, base.rank_ok)
    assert scores.predicted == base.predicted
    np.testing.assert_allclose(scores.logprob, base.logprob, atol=1e-5)


@pytest.mark.parametrize("row_tokens", [1, 16, 10_000])
def test_row_packing_does_not_change_scores(word_model, monkeypatch, row_tokens):
    model, tokenizer, probes = word_model
    base = score_probes(model, tokenizer, probes)
    monkeypatch.setattr(scoring, "ROW_TOKENS", row_tokens)
    scores = score_probes(model, tokenizer, probes)
    np.testing.assert_array_equal(scores.em, base.em)
    assert scores.predicted == base.predicted
    np.testing.assert_allclose(scores.logprob, base.logprob, atol=1e-5)


def test_probes_in_one_row_share_prompt_and_answer_prefixes(word_model):
    _, tokenizer, _ = word_model
    probes = [_probe(0, "Alda Venn", "was born in", "Port Elmira"), _probe(1, "Alda Venn", "works at", "Kestrel")]
    ids = {a: tokenizer(" " + a, add_special_tokens=False)["input_ids"] for a in CITIES + EMPLOYERS}
    plans = [scoring._plan(p, tokenizer(p.prompt, add_special_tokens=False)["input_ids"], ids) for p in probes]
    rows, _ = scoring._tree_rows(plans)
    # "Alda Venn" once; "Port" once for three "Port ..." cities; "Port Elmira" fed for the stop check.
    assert len(rows) == 1
    assert len(rows[0].tokens) == sum(len(p.prompt) + len(p.tokens) for p in plans) - 2
    assert [len(p.tokens) for p in plans] == [4, 4]  # Port, Port Elmira, New, New Harrow | Brightwave, Ironleaf, Ironleaf Mining, Kestrel


def test_path_rows_give_the_same_scores_as_tree_rows(word_model, monkeypatch):
    """The layout for attention kernels without custom 4D masks (flash attention)."""
    model, tokenizer, probes = word_model
    tree = score_probes(model, tokenizer, probes, batch_size=5)
    monkeypatch.setattr(scoring, "_tree_masks_supported", lambda model: False)
    paths = score_probes(model, tokenizer, probes, batch_size=5)
    np.testing.assert_array_equal(paths.em, tree.em)
    np.testing.assert_array_equal(paths.rank_ok, tree.rank_ok)
    assert paths.predicted == tree.predicted
    np.testing.assert_allclose(paths.logprob, tree.logprob, atol=1e-5)


class _IgnoresPositionIds(torch.nn.Module):
    """A causal LM that derives positions itself, as ALiBi models do from their mask."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.config = inner.config

    def get_output_embeddings(self):
        return self.inner.get_output_embeddings()

    def forward(self, input_ids=None, position_ids=None, attention_mask=None, **kwargs):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, **kwargs)


def test_model_that_ignores_position_ids_falls_back_to_plain_rows(word_model):
    model, tokenizer, probes = word_model
    expected = score_probes(model, tokenizer, probes)
    with pytest.warns(RuntimeWarning, match="plain rows"):
        scores = score_probes(_IgnoresPositionIds(model), tokenizer, probes)
    np.testing.assert_array_equal(scores.em, expected.em)
    assert scores.predicted == expected.predicted
    np.testing.assert_allclose(scores.logprob, expected.logprob, atol=1e-4)


def test_eager_attention_gives_the_same_scores_as_sdpa(word_model):
    model, tokenizer, probes = word_model
    sdpa = score_probes(model, tokenizer, probes)
    model.set_attn_implementation("eager")
    try:
        eager = score_probes(model, tokenizer, probes)
    finally:
        model.set_attn_implementation("sdpa")
    np.testing.assert_array_equal(eager.em, sdpa.em)
    assert eager.predicted == sdpa.predicted
    np.testing.assert_allclose(eager.logprob, sdpa.logprob, atol=1e-4)


def test_exact_match_needs_the_answer_to_stop(word_model):
    model, tokenizer, _ = word_model
    continues = _probe(0, "Dane Voss", "was born in", "Port Elmira")
    full = _probe(1, "Dane Voss", "was born in", "Port Elmira Harbour")
    scores = score_probes(model, tokenizer, [continues, full])
    assert scores.em.tolist() == [False, True]
    # Ranking by summed log-probability can never prefer a candidate over its own
    # token prefix: log p("Port Elmira Harbour") = log p("Port Elmira") + log p("Harbour" | ...).
    assert scores.predicted == ["Port Elmira", "Port Elmira"]
    assert scores.logprob[1] < scores.logprob[0]


def test_ties_go_to_the_first_candidate_in_order(word_model):
    model, tokenizer, _ = word_model
    # Two words the tokenizer never saw: both are <unk>, so their scores tie exactly.
    first = _probe(0, "Alda Venn", "was born in", "Qwertyville", ("Qwertyville", "Zzyzx"))
    second = _probe(1, "Alda Venn", "was born in", "Qwertyville", ("Zzyzx", "Qwertyville"))
    scores = score_probes(model, tokenizer, [first, second])
    assert scores.rank_ok.tolist() == [True, False]
    assert scores.predicted == ["Qwertyville", "Zzyzx"]
    for i, p in enumerate([first, second]):
        assert reference_score(model, tokenizer, p)[1:] == (scores.rank_ok[i], pytest.approx(scores.logprob[i], abs=1e-4), scores.predicted[i])


def test_gold_missing_from_candidates_is_never_ranked_right(word_model):
    model, tokenizer, _ = word_model
    missing = _probe(0, "Alda Venn", "was born in", "Port Elmira", ("Oakridge", "Lowmere"))
    none = _probe(1, "Alda Venn", "was born in", "Port Elmira", ())
    scores = score_probes(model, tokenizer, [missing, none])
    assert scores.rank_ok.tolist() == [False, False]
    assert scores.predicted[1] == ""
    assert scores.em.tolist() == [True, True]  # exact match does not need the candidates
    for i, p in enumerate([missing, none]):
        em, rank_ok, logprob, predicted = reference_score(model, tokenizer, p)
        assert (em, rank_ok, predicted) == (scores.em[i], scores.rank_ok[i], scores.predicted[i])
        assert logprob == pytest.approx(scores.logprob[i], abs=1e-4)


def test_stop_tokens_are_punctuation_space_and_eos():
    tokenizer = make_tokenizer(["Alda was born in Port Elmira , near Oakridge ."])
    stop = stop_token_mask(tokenizer, len(tokenizer) + 2)
    assert stop_token_mask(tokenizer, len(tokenizer) + 2) is stop  # cached per tokenizer
    vocab = tokenizer.get_vocab()
    for token in (".", ",", EOS, PAD):
        assert stop[vocab[token]], token
    for token in ("Alda", "Port", "near"):
        assert not stop[vocab[token]], token
    assert stop[-2:].all()  # ids the tokenizer does not know decode to nothing

    bpe = _byte_level_bpe(["Alda was born in Port Elmira.\nNear Oakridge, yes."] * 3)
    stop = stop_token_mask(bpe, len(bpe))
    ids = {t: bpe(t, add_special_tokens=False)["input_ids"][-1] for t in (" Port", "Port", ".", " ,", "\n")}
    assert not stop[ids[" Port"]] and not stop[ids["Port"]]
    assert stop[ids["."]] and stop[ids[" ,"]] and stop[ids["\n"]]


def test_perplexity_equals_exp_mean_nll_one_text_at_a_time(word_model):
    model, tokenizer, _ = word_model
    texts = _sentences()[:7] + ["Kira Dell works at Kestrel .", "Oakridge"]
    total_nll, total_tokens = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = [tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]
            loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss
            total_nll += float(loss) * (len(ids) - 1)
            total_tokens += len(ids) - 1
    expected = math.exp(total_nll / total_tokens)
    assert perplexity(model, tokenizer, texts, batch_size=4) == pytest.approx(expected, rel=1e-5)
    assert perplexity(model, tokenizer, texts, batch_size=64) == pytest.approx(expected, rel=1e-5)


def test_scoring_leaves_the_model_in_eval_mode_and_reports_progress(word_model):
    model, tokenizer, probes = word_model
    model.train()
    seen: list[int] = []
    scores = score_probes(model, tokenizer, probes, batch_size=10, progress=seen.append)
    assert not model.training
    assert sum(seen) == len(probes) == len(scores) and max(seen) <= 10
    empty = score_probes(model, tokenizer, [])
    assert len(empty) == 0 and empty.em.shape == (0,)


def test_probe_without_prompt_tokens_is_rejected(word_model):
    model, tokenizer, _ = word_model
    with pytest.raises(ValueError, match="prompt"):
        score_probes(model, tokenizer, [Probe("x", " ", "Oakridge", CITIES, "statement", "invariant", "f")])


def test_an_answer_opened_by_a_bare_space_token_is_read_whole():
    """A byte-level BPE that has not merged " journalist" generates "Ġ" "jour" "nalist"
    ".": the bare space, itself a stop token, opens the answer instead of ending it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from ckl.model.scoring import answer_text, stop_token_mask

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(["journal journalist jour nalist"] * 20, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    pieces = ["Ġ", *tokenizer.convert_ids_to_tokens(tokenizer("journalist", add_special_tokens=False)["input_ids"]), "."]
    ids = tokenizer.convert_tokens_to_ids(pieces)
    stop = stop_token_mask(tokenizer, len(tokenizer))
    assert bool(stop[ids[0]]) and bool(stop[ids[-1]])  # both the bare space and the full stop are stop tokens
    assert answer_text(tokenizer, ids, stop) == "journalist"
    assert answer_text(tokenizer, [tokenizer.eos_token_id, *ids], stop) == ""  # end of text ends it
