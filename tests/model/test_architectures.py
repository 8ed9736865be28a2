"""The cross-architecture contract: ckl on the causal LMs users bring.

For each of Llama, Qwen2, Mistral, Gemma, Phi, GPT-NeoX (Pythia) and OPT: a tiny randomly
initialised model built from its transformers config class, saved with a byte-level BPE
tokenizer trained by `tokenizers` on the world's text, loaded the way `ckl run --model`
loads it and taught K0 briefly. Then every registered method and part applies one stage
without error, and the mechanisms that can be checked on any architecture hold: LoRA
finds its targets, ROME and MEMIT find the MLP output projection and change only it,
expansion inserts blocks that compute the identity, and the batched scorer agrees with
one-probe `generate`.
"""

from __future__ import annotations

import copy
import random

import pytest
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from ckl.data.stream import Change, render_documents
from ckl.methods.base import StageContext, build_method, load_builtin, smallest_expression
from tests.methods._quick import QUICK
from ckl.model import lm
from ckl.model.layers import blocks, mlp_output_projection, value_matrix

SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, max_position_embeddings=256)
ARCHITECTURES = {
    "llama": lambda v: transformers.LlamaConfig(vocab_size=v, num_key_value_heads=1, **SMALL),
    "qwen2": lambda v: transformers.Qwen2Config(vocab_size=v, num_key_value_heads=1, **SMALL),
    "mistral": lambda v: transformers.MistralConfig(vocab_size=v, num_key_value_heads=1, **SMALL),
    "gemma": lambda v: transformers.GemmaConfig(vocab_size=v, num_key_value_heads=1, head_dim=16, **SMALL),
    "phi": lambda v: transformers.PhiConfig(vocab_size=v, **SMALL),
    "gpt_neox": lambda v: transformers.GPTNeoXConfig(vocab_size=v, **SMALL),
    "opt": lambda v: transformers.OPTConfig(vocab_size=v, hidden_size=32, ffn_dim=64, num_hidden_layers=3, num_attention_heads=2,
                                            max_position_embeddings=256, word_embed_proj_dim=32),
}


def _texts(stream) -> list[str]:
    facts = [*stream.base, *(r.fact for r in stream.records())]
    texts = render_documents(facts, stream.relations, random.Random(0)) + list(stream.general_train) + list(stream.general_heldout)
    return texts + [p.prompt + " " + " ".join(p.candidates) for p in stream.probes()]


@pytest.fixture(scope="module")
def bpe(tiny_stream):
    """A byte-level BPE tokenizer (GPT-2 / Llama-3 / Qwen2 style) trained on the world's text."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(_texts(tiny_stream), trainer=trainer)
    end = "<|endoftext|>"
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=end, pad_token=end, bos_token=end)


@pytest.fixture(scope="module", params=sorted(ARCHITECTURES))
def arch(request, bpe, tiny_stream, accelerator, tmp_path_factory):
    """(name, model directory, taught model, tokenizer as loaded)."""
    name = request.param
    config = ARCHITECTURES[name](len(bpe))
    config.pad_token_id = config.eos_token_id = config.bos_token_id = bpe.eos_token_id
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config)
    directory = tmp_path_factory.mktemp(name) / "model"
    model.save_pretrained(directory)
    bpe.save_pretrained(directory)
    model, tokenizer = lm.load(directory)  # as `ckl run --model` loads it (safetensors, no remote code)
    teach = Change(1, learn=tuple(tiny_stream.base))
    ctx = StageContext(tiny_stream.relations, tiny_stream.base, 1, 0, tokenizer, accelerator, change=teach)
    model, _ = build_method("naive", {"train": {"epochs": 60, "lr": 1e-2}}).apply(model, teach, ctx)
    return name, directory, model.eval(), tokenizer


def _stage_context(stream, tokenizer, accelerator, directory):
    change = stream.stages[0]
    return change, StageContext(stream.relations, stream.base, 1, 0, tokenizer, accelerator, change=change,
                                general_text=stream.general_train, background=stream.background,
                                qa_subjects=stream.qa_subjects, model_dir=str(directory))


# Mistral's, Qwen2's and Gemma's decoders have Llama's module layout (q/k/v/o projections,
# gated MLP with gate/up/down; Qwen2 adds q/k/v biases, Gemma scales its norms, Mistral's
# sliding window is never reached by these texts): every method on Llama covers their
# layout, and the suite's 10-minute budget is tight (each full run costs ~9 s). Their own
# checks below (LoRA's targets, ROME/MEMIT's layer, batched scoring) still run.
SAME_MODULES_AS = {"mistral": "llama", "qwen2": "llama", "gemma": "llama"}


@pytest.mark.heavy  # started first (tests/conftest.py)
def test_every_method_and_part_applies_a_stage(arch, tiny_stream, accelerator):
    name, directory, model, tokenizer = arch
    if name in SAME_MODULES_AS:
        pytest.skip(f"{name} has {SAME_MODULES_AS[name]}'s modules; every method runs there")
    change, ctx = _stage_context(tiny_stream, tokenizer, accelerator, directory)
    failed = {}
    for method, entry in sorted(load_builtin().items()):
        options = {} if entry.family == "method" else {"train": {"epochs": 2 if method == "mix_cpt" else 1}}  # mix_cpt: one epoch of each phase
        options = QUICK.get(method, options)
        expression = smallest_expression(method)  # gs_lora, reglora: with the lora they need
        try:
            built = build_method(expression, options)
            out, stats = built.apply(copy.deepcopy(model), change, ctx)
            assert all(torch.isfinite(p).all() for p in out.parameters()), "non-finite weights"
            assert set(stats.not_applied) == {k for k in change.kinds if k not in built.kinds}
        except Exception as err:  # collected: one report of every method that fails on this architecture
            failed[method] = f"{type(err).__name__}: {err}"
    assert failed == {}, f"{name}: {failed}"


def test_lora_finds_its_targets_and_trains_only_them(arch, tiny_stream, accelerator):
    name, directory, model, tokenizer = arch
    change, ctx = _stage_context(tiny_stream, tokenizer, accelerator, directory)
    method = build_method("lora", {"train": {"epochs": 1}})
    wrapped = method.parts[0].prepare(copy.deepcopy(model), ctx)
    trainable = [n for n, p in wrapped.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    adapted = {n.split(".lora_")[0] for n in trainable}
    assert len(adapted) >= 4 * len(blocks(model))  # attention and MLP linears of every block


def test_rome_and_memit_find_the_mlp_output_projection_and_change_only_it(arch, tiny_stream, accelerator):
    name, directory, model, tokenizer = arch
    change, ctx = _stage_context(tiny_stream, tokenizer, accelerator, directory)
    projection = mlp_output_projection(model, 0)
    assert value_matrix(projection).shape == (32, 64)  # (hidden, feed-forward width): maps keys to values
    for editor, options in (("rome", {"rome": {"layer": 0}}), ("memit", {"memit": {"layers": [0, 1]}})):
        edited, _ = build_method(editor, options).apply(copy.deepcopy(model), change, ctx)
        before, after = dict(model.named_parameters()), dict(edited.named_parameters())
        changed = sorted(n for n in before if not torch.equal(before[n], after[n]))
        allowed = {n + ".weight" for n, m in model.named_modules()
                   if any(m is mlp_output_projection(model, layer) for layer in (0, 1))}
        assert changed and set(changed) <= allowed, (editor, changed)


def test_expansion_inserts_blocks_that_compute_the_identity(arch, tiny_stream, accelerator):
    name, directory, model, tokenizer = arch
    change, ctx = _stage_context(tiny_stream, tokenizer, accelerator, directory)
    ids = tokenizer([p.prompt for p in tiny_stream.probes()[:8]], return_tensors="pt", padding=True)
    with torch.no_grad():
        reference = model(**ids).logits
        grown = build_method("expansion", {"expansion": {"blocks": 2}}).parts[0].prepare(copy.deepcopy(model), ctx).eval()
        assert len(blocks(grown)) == len(blocks(model)) + 2
        torch.testing.assert_close(grown(**ids).logits, reference, atol=1e-5, rtol=1e-5)


def _with_own_answers(model, tokenizer, probes):
    """Each probe, plus a copy whose answer is what the model itself generates greedily up
    to a stop token (so that exact match is exercised on hits as well as misses, whatever
    a briefly taught tiny model knows)."""
    from dataclasses import replace

    from ckl.model.scoring import stop_token_mask

    stop = stop_token_mask(tokenizer, model.get_output_embeddings().weight.shape[0])
    out = list(probes)
    for p in probes:
        ids = tokenizer(p.prompt, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            gen = model.generate(**ids, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)[0, ids.input_ids.shape[1]:]
        ends = [i for i, t in enumerate(gen.tolist()) if stop[t]]
        answer = tokenizer.decode(gen[: ends[0]]).strip() if ends else ""
        if ends and ends[0] > 0 and answer[:1].isalnum() and tokenizer(" " + answer, add_special_tokens=False)["input_ids"] == gen[: ends[0]].tolist():
            out.append(replace(p, id=p.id + "/own", answer=answer, candidates=tuple(sorted({answer, *p.candidates}))))
    return out


def test_batched_scoring_equals_one_probe_generate(arch, tiny_stream):
    from ckl.model.scoring import reference_score, score_probes

    name, directory, model, tokenizer = arch
    probes = _with_own_answers(model, tokenizer, [p for p in tiny_stream.probes() if p.cohort == "invariant"][:40])
    fast = score_probes(model, tokenizer, probes)
    slow = [reference_score(model, tokenizer, p) for p in probes]
    assert [bool(x) for x in fast.em] == [s[0] for s in slow]
    assert [bool(x) for x in fast.rank_ok] == [s[1] for s in slow]
    assert fast.predicted == [s[3] for s in slow]
    torch.testing.assert_close(torch.tensor(fast.logprob, dtype=torch.float64), torch.tensor([s[2] for s in slow], dtype=torch.float64), atol=1e-3, rtol=1e-4)
    assert sum(s[0] for s in slow) >= 1, "exact match must be exercised on hits too"
    # eval.answers reads the same greedy answers by free generation: "correct" is exact match
    from ckl.evaluate.answers import classify, former_objects, world_entities

    labels = classify(model, tokenizer, probes, world_entities(tiny_stream) | {p.answer for p in probes}, former_objects(tiny_stream))
    assert [label == "correct" for label in labels] == [s[0] for s in slow]


def test_a_tokenizer_that_cannot_encode_the_stream_stops_the_run_before_anything_is_written(tiny_stream, tmp_path):
    from ckl.core.errors import InputError
    from ckl.run.config import ExperimentConfig
    from ckl.run.experiment import run_experiment

    stream_dir, model_dir = tmp_path / "s", tmp_path / "m"
    tiny_stream.save(stream_dir)
    other = lm.make_tokenizer(["words of another world entirely"])  # a word-level vocabulary without this world's names
    lm.save(lm.tiny_model(other, lm.TinyModelConfig(n_layer=1, n_embd=16, n_head=2)), other, model_dir)
    config = ExperimentConfig.from_dict({"stream": str(stream_dir), "model": str(model_dir), "methods": [{"name": "naive", "skip": ["forget"]}]})
    with pytest.raises(InputError) as err:
        run_experiment(config, tmp_path / "run")
    assert err.value.field == "tokenizer" and "PreTrainedTokenizerFast" in err.value.message or "TokenizersBackend" in err.value.message
    assert "unknown token" in err.value.message and not (tmp_path / "run").exists()

