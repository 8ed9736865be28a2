import pytest
import torch

from ckl.model import lm
from ckl.core.errors import DivergenceError
from ckl.train.loop import LossTerm, TrainConfig, train

DOCS = ["Alda Venmore was born in Port Elmira .", "Brenwen Holt works for Corvane Labs .", "It was sunny ."]


def _model():
    tok = lm.make_tokenizer(DOCS)
    return lm.tiny_model(tok, lm.TinyModelConfig(n_layer=1, n_embd=32, n_head=2), seed=0), tok


def _loss(model, tok):
    batch = tok(DOCS, return_tensors="pt", padding=True)
    labels = batch.input_ids.masked_fill(batch.attention_mask == 0, -100)
    with torch.no_grad():
        return model(**batch, labels=labels).loss.item()


def test_training_lowers_the_loss_on_its_documents(accelerator):
    model, tok = _model()
    before = _loss(model, tok)
    result = train(model, tok, lambda e: DOCS, TrainConfig(epochs=30, lr=1e-2, batch_size=2), accelerator, seed=0)
    assert _loss(model, tok) < before / 3
    assert result.steps == 30 and result.tokens_seen > 0 and not model.training


def test_same_seed_gives_identical_weights(accelerator):
    weights = []
    for _ in range(2):
        model, tok = _model()
        train(model, tok, lambda e: DOCS, TrainConfig(epochs=3, lr=1e-2, batch_size=1), accelerator, seed=7)
        weights.append(model.lm_head.weight.clone())
    assert torch.equal(weights[0], weights[1])


class _Explode(LossTerm):
    def loss(self, model, batch, outputs, step):
        return torch.tensor(float("nan")) if step == 2 else None


def test_nan_loss_stops_training_with_a_clear_error(accelerator):
    model, tok = _model()
    with pytest.raises(DivergenceError, match="step 2"):
        train(model, tok, lambda e: DOCS, TrainConfig(epochs=5, lr=1e-2, batch_size=1), accelerator, seed=0, terms=[_Explode()])


def test_on_epoch_end_can_stop_training_early(accelerator):
    model, tok = _model()
    result = train(model, tok, lambda e: DOCS, TrainConfig(epochs=50, batch_size=3), accelerator, seed=0, on_epoch_end=lambda e: e == 3)
    assert result.epochs == 4


def test_train_config_names_the_bad_field():
    with pytest.raises(ValueError, match="lr"):
        TrainConfig(lr=-1)
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)


def test_shuffling_documents_lets_every_verbatim_text_be_recalled_on_its_own(accelerator):
    # 12 fixed texts, the same order every epoch, 4 to a 48-token block: without shuffling,
    # a text that never starts a block is learned only as the continuation of its fixed
    # neighbour; recalled on its own (from position 0) it stays unknown.
    import random

    rng = random.Random(0)
    words = [f"w{i}" for i in range(300)]
    texts = [" ".join(rng.choice(words) for _ in range(11)) for _ in range(12)]
    tok = lm.make_tokenizer(texts)

    def recalled(model) -> int:
        model.eval()
        hits = 0
        for text in texts:
            ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
            with torch.no_grad():
                pred = model(ids).logits[0, :-1].argmax(-1)
            hits += bool(torch.equal(pred[3:], ids[0, 4:]))  # given 4 words, every next word
        return hits

    counts = {}
    for shuffle in (False, True):
        model = lm.tiny_model(tok, lm.TinyModelConfig(n_layer=2, n_embd=64, n_head=2), seed=0)
        config = TrainConfig(epochs=250, lr=5e-3, batch_size=1, block_size=48, shuffle=shuffle)
        train(model, tok, lambda e: list(texts), config, accelerator, seed=0)
        counts[shuffle] = recalled(model)
    print(counts)
    assert counts[True] >= len(texts) - 1 and counts[False] <= 4  # 4 blocks of 3 texts: only their first texts


def test_shuffle_is_the_same_for_a_seed_and_validated(accelerator):
    with pytest.raises(ValueError, match="shuffle"):
        TrainConfig(shuffle="yes")
    weights = []
    for _ in range(2):
        model, tok = _model()
        train(model, tok, lambda e: DOCS, TrainConfig(epochs=3, lr=1e-2, batch_size=1, shuffle=True), accelerator, seed=7)
        weights.append(model.lm_head.weight.clone())
    assert torch.equal(weights[0], weights[1])


class _Rank1Of2:
    """This process as rank 1 of 2 data-parallel processes, the other rank's reductions
    doubling this one's (no real process group: enough to reach the stand-in step)."""

    device = torch.device("cpu")
    process_index, num_processes = 1, 2

    def prepare(self, *objects):
        return objects

    def backward(self, loss):
        loss.backward()

    def clip_grad_norm_(self, params, norm):
        return torch.nn.utils.clip_grad_norm_(params, norm)

    def reduce(self, tensor, reduction="sum"):
        return tensor * 2

    def unwrap_model(self, model):
        return model


class _BatchTerm(LossTerm):
    """A term computed from the teaching batch (as LwF's distillation is); records the
    gradient each step leaves on the output layer."""

    reads_batch = True

    def __init__(self):
        self.grads = []

    def loss(self, model, batch, outputs, step):
        return None if batch is None else outputs.logits.float().pow(2).mean()

    def filter_gradients(self, model, step):
        self.grads.append(float(model.lm_head.weight.grad.abs().sum()))


def test_a_stand_in_step_adds_nothing_from_terms_that_read_the_batch():
    # 3 blocks, batch 1 per rank: global batches [0, 1] and [2]; rank 1 gets block 1, then
    # nothing: its second step is a stand-in of weight 0, and a batch-reading term must
    # not train on the stand-in block either
    model, tok = _model()
    term = _BatchTerm()
    train(model, tok, lambda e: DOCS, TrainConfig(epochs=1, lr=1e-2, batch_size=1, block_size=10), _Rank1Of2(), seed=0, terms=[term])
    assert len(term.grads) == 2
    assert term.grads[0] > 0 and term.grads[1] == 0.0


def test_the_fused_optimizer_does_the_same_maths(accelerator):
    trained = {}
    for name in ("adamw", "adamw_fused"):
        model, tok = _model()
        train(model, tok, lambda e: DOCS, TrainConfig(epochs=5, lr=1e-2, batch_size=1, optimizer=name), accelerator, seed=3)
        trained[name] = {n: p.detach().clone() for n, p in model.named_parameters()}
    untrained = dict(_model()[0].named_parameters())
    for n, p in trained["adamw"].items():
        assert not torch.equal(p, untrained[n].detach()) or n.endswith("wpe.weight")  # training moved them
        torch.testing.assert_close(trained["adamw_fused"][n], p, atol=5e-4, rtol=1e-3)  # other rounding, same steps (each moves up to 0.01)
    with pytest.raises(ValueError, match="optimizer must be one of adamw, adamw_fused") as err:
        TrainConfig(optimizer="sgd")
    assert err.value.field == "optimizer"


def test_curve_points_are_linear_or_log_spaced():
    assert [s for s in range(40) if TrainConfig(eval_every=7).evaluates_at(s)] == [0, 7, 14, 21, 28, 35]
    log = [s for s in range(200) if TrainConfig(eval_every=10, eval_spacing="log").evaluates_at(s)]
    assert log == [0, 1, 2, 3, 4, 5, 6, 8, 10, 13, 16, 20, 25, 32, 40, 50, 63, 79, 100, 126, 158]
    assert not any(TrainConfig().evaluates_at(s) for s in range(50)), "off by default"


def test_scoring_during_training_changes_nothing_the_loop_computes(accelerator):
    """A curve point runs the model in eval mode between steps; the trained weights, the
    optimiser and the losses must be exactly those of a run without it."""
    config = TrainConfig(epochs=20, lr=1e-2, batch_size=1, eval_every=6)  # one block, one step per epoch
    plain, tok = _model()
    train(plain, tok, lambda e: DOCS, config, accelerator, seed=3)
    model, tok = _model()
    seen = []

    def on_eval(step, epoch, loss):
        assert not model.training, "scored in eval mode"
        with torch.no_grad():
            model(**tok(DOCS[:1], return_tensors="pt"))
        seen.append((step, epoch))

    result = train(model, tok, lambda e: DOCS, config, accelerator, seed=3, on_eval=on_eval)
    assert result.steps == 20
    assert seen == [(0, 0), (6, 5), (12, 11), (18, 17), (20, 19)], "step 0, every 6th step, and the last step"
    for a, b in zip(plain.parameters(), model.parameters()):
        assert torch.equal(a, b)


def test_curve_options_name_the_bad_field():
    for field, bad in (("eval_every", -1), ("eval_every", 1.5), ("eval_spacing", "cubic"), ("eval_sample", -3),
                       ("eval_cohorts", []), ("eval_cohorts", ["invarient"])):
        with pytest.raises(ValueError, match=field):
            TrainConfig(**{field: bad})
    with pytest.raises(ValueError, match="did you mean 'invariant'"):
        TrainConfig(eval_cohorts=["invarient"])
    assert TrainConfig(eval_cohorts="stage").eval_cohorts == ("stage",)
    assert TrainConfig(eval_cohorts=["stage2", "stale", "forget1", "local", "unseen"]).eval_cohorts[0] == "stage2"
