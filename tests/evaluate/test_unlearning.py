"""Unlearning metrics on hand-computed examples, the batched decoding they rely on, and
the per-method unlearning summary read from a hand-filled store."""

from __future__ import annotations

import math

import pytest
import torch

from ckl.evaluate import unlearning as U
from ckl.evaluate.metrics import kept_ratio, mean
from ckl.model.scoring import perplexity_from_nll


def test_forget_efficacy_is_the_share_of_the_gap_to_the_floor_removed():
    assert U.forget_efficacy(0.9, 0.5, 0.1) == pytest.approx(0.5)  # (0.9-0.5)/(0.9-0.1)
    assert U.forget_efficacy(0.9, 0.1, 0.1) == pytest.approx(1.0)
    assert U.forget_efficacy(0.9, 0.0, 0.1) == pytest.approx(0.9 / 0.8)  # below the floor: > 1
    assert U.forget_efficacy(0.1, 0.0, 0.1) is None  # never known above the floor
    assert U.forget_efficacy(None, 0.0, 0.1) is None


def test_retention_and_recovered_fraction():
    assert kept_ratio(0.8, 0.6) == pytest.approx(0.75)  # the one retention ratio (ckl.evaluate.metrics)
    assert kept_ratio(0.0, 0.6) is None and kept_ratio(0.8, None) is None
    # knew 0.8, unlearned to 0.2, attack brings it to 0.5: half of the forgotten came back
    assert U.recovered_fraction(0.8, 0.2, 0.5) == pytest.approx(0.5)
    assert U.recovered_fraction(0.2, 0.2, 0.5) is None


def test_memorization_accuracy_counts_only_masked_positions():
    predicted = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    target = torch.tensor([[1, 2, 0, 4], [0, 0, 7, 9]])
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 0]])
    ma = U.memorization_accuracy(predicted, target, mask)
    assert ma.tolist() == pytest.approx([2 / 3, 1 / 3])  # row 1: 2, 0-miss, 4 ; row 2: miss, miss, 7


def test_extraction_likelihood_by_hand():
    target = [1, 2, 3, 4, 5, 6]
    # from prefix length 2 the rest is 3 4 5 6: bigrams {34, 45, 56}; generated 3 4 9 6 -> {34, 49, 96}: 1/3
    # from prefix length 4 the rest is 5 6: {56}; generated 5 6 -> 1
    el = U.extraction_likelihood([[3, 4, 9, 6], [5, 6, 7, 7]], target, [2, 4], n=2)
    assert el == pytest.approx((1 / 3 + 1) / 2)
    assert U.extraction_likelihood([[7]], target, [5], n=2) is None  # rest shorter than n


def test_distinct_n_and_perplexity():
    assert U.distinct_n([1, 1, 1, 1], 2) == pytest.approx(1 / 3)
    assert U.distinct_n([1, 2, 3], 2) == 1.0
    assert U.distinct_n([1], 2) is None
    assert perplexity_from_nll(2 * math.log(4.0), 2) == pytest.approx(4.0)
    assert mean([None, 1.0, float("nan"), 3.0]) == 2.0  # the one mean (ckl.evaluate.metrics)


# --------------------------------------------------------------------- model-running inputs


@pytest.fixture(scope="module")
def random_lm():
    from ckl.model import lm

    tok = lm.make_tokenizer(["the cat sat on the mat .", "a dog ran in the park , and then slept ."])
    return lm.tiny_model(tok, lm.TinyModelConfig(2, 32, 2), seed=3), tok


def test_batched_greedy_continuations_match_generate(random_lm):
    from ckl.evaluate.extraction import greedy_continuations

    model, tok = random_lm
    prefixes = [tok(t, add_special_tokens=False)["input_ids"] for t in ("the cat", "a dog ran in the", "on", "then slept .")]
    got = greedy_continuations(model, prefixes, [5, 3, 4, 5], batch_size=3, pad=tok.pad_token_id)
    for p, g, n in zip(prefixes, got, [5, 3, 4, 5]):
        ref = model.generate(torch.tensor([p]), max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)[0, len(p):]
        assert g == ref.tolist()


def test_teacher_forced_argmax_matches_one_sequence_at_a_time(random_lm):
    from ckl.evaluate.extraction import teacher_forced_argmax

    model, tok = random_lm
    seqs = [tok(t, add_special_tokens=False)["input_ids"] for t in ("the cat sat on the mat .", "a dog")]
    got = teacher_forced_argmax(model, seqs, batch_size=2, pad=tok.pad_token_id)
    for s, g in zip(seqs, got):
        assert g == model(torch.tensor([s])).logits[0, :-1].argmax(-1).tolist()


def test_a_memorised_answer_scores_full_ma_and_el_and_a_forgotten_one_does_not(tiny_model, tiny_stream):
    """On the tiny model pretrained on the world: known base facts have high MA; facts
    the model never saw (stage 2's new people, before stage 2) have lower MA."""
    from ckl.evaluate.extraction import ExtractionConfig, cohort_scores

    model, tok = tiny_model
    probes = [p for p in tiny_stream.probes(kinds=("statement",))]
    known = [p for p in probes if p.cohort == "invariant"]
    unseen = [p for p in probes if p.cohort == "stage2" and p.change == "learn"]
    config = ExtractionConfig(ngram=1)
    k, u = cohort_scores(model, tok, known, config, judge=model), cohort_scores(model, tok, unseen, config, judge=model)
    assert k["n"] == len(known) and k["ma"] > 0.9 and k["el"] > 0.9
    assert u["ma"] < k["ma"] - 0.3
    assert k["answer_ppl"] is not None and k["answer_ppl"] < u["answer_ppl"] * 10  # defined and finite
    assert 0 < k["ls"] < 1 and k["brunet"] > 0 and k["honore"] > 0


def test_relearn_lexical_measures_by_hand():
    tokens = U.words("The cat sat, the cat ran.")
    assert tokens == ["the", "cat", "sat", ",", "the", "cat", "ran", "."]
    N, V, once = 8, 6, 4  # sat , ran . occur once; the, cat twice
    assert U.brunet_index(tokens) == pytest.approx(N ** (V ** -0.165))
    assert U.honore_statistic(tokens) == pytest.approx(100 * math.log(N) / (1 - once / V + 0.1))
    assert U.brunet_index([]) is None and U.honore_statistic(["one"]) is None
    sig = lambda x: 1 / (1 + math.exp(-x))
    parts = (sig(-math.log(20.0)), sig(-math.log(3.0)), sig(math.log(400.0)))
    assert U.linguistic_score(20.0, 3.0, 400.0) == pytest.approx(3 / sum(1 / p for p in parts))
    assert U.linguistic_score(None, 3.0, 400.0) is None


def test_linguistic_score_prefers_fluent_varied_answers_to_degenerate_ones():
    varied = U.words("She studied chemistry at Halden College and later taught in Ostwick.")
    stuck = U.words("the the the the the the the the the the the the")
    score = lambda toks, ppl: U.linguistic_score(ppl, U.brunet_index(toks), U.honore_statistic(toks))
    assert score(varied, 30.0) > score(stuck, 30.0)  # the same perplexity: vocabulary decides
    assert score(varied, 30.0) > score(varied, 3000.0)  # the same words: perplexity decides


# --------------------------------------------------------------------- the summary


def test_unlearning_summary_from_a_hand_filled_store(tmp_path):
    from ckl.data.facts import Probe
    from ckl.results.store import Outcome, StageInfo, Store
    from ckl.results.unlearning import summarize_unlearning

    def probe(cohort, fid, change):
        return Probe(f"{cohort}/{fid}/statement", "p", "a", ("a",), "statement", cohort, fid, 1 if cohort != "invariant" else 0, change)

    probes = [probe("invariant", "k1", "base"), probe("invariant", "k2", "base"), probe("invariant", "b1", "base"),
              probe("forget1", "f1", "forget"), probe("forget1", "f2", "forget"), probe("unseen", "u1", "unseen"), probe("unseen", "u2", "unseen")]
    right = {  # row -> probes answered right
        0: {"k1", "k2", "b1", "f1", "f2", "u1"},
        1: {"k1", "f2"},
    }
    with Store(tmp_path / "r.sqlite") as store:
        store.add_probes(probes)
        store.set_meta("T", 1)
        store.set_meta("boundary", ["b1"])
        for row, ok in right.items():
            outcomes = [Outcome(p.id, p.fact_id in ok, True, -1.0, "a") for p in probes]
            store.record_row("ga", 0, row, outcomes, StageInfo(seconds=2.5 * row))
        store.record_attack("ga", 0, 1, {"probe_ids": ["forget1/f1/statement"], "accuracy_before": 0.0, "accuracy_after": 1.0,
                                         "config": {"data": "partial"}, "unseen_before": 0.5, "unseen_after": 0.5})
        s = summarize_unlearning(store)["ga"]
    assert s["forget_before"] == 1.0 and s["forget_after"] == 0.5
    assert s["kfr"] == 0.5 and s["krr"] == pytest.approx(1 / 3)  # ReLearn's rates, exact-match forms
    assert s["floor"] == 0.5  # unseen at row 0
    assert s["efficacy"] == pytest.approx(1.0)  # (1 - 0.5) / (1 - 0.5)
    assert s["kept_before"] == 1.0 and s["kept_after"] == pytest.approx(1 / 3) and s["retention"] == pytest.approx(1 / 3)
    assert s["boundary_before"] == 1.0 and s["boundary_after"] == 0.0
    assert s["attack_original"] == 1.0 and s["recovered"] == pytest.approx(1.0)
    assert s["seconds"] == 2.5
