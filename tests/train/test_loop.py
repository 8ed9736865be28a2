import pytest
import torch

from ckl import lm
from ckl.errors import DivergenceError
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
