"""The training loop's hooks for parts with data of their own: `steps` makes it train
when the stage has no text to teach, `should_stop` ends training early."""

import torch

from ckl.model import lm
from ckl.train.loop import LossTerm, TrainConfig, train


class OwnData(LossTerm):
    """Wants `n` steps an epoch; its loss is the next-token loss of a fixed sequence."""

    def __init__(self, n: int, stop_at: int | None = None):
        self.n, self.stop_at, self.seen = n, stop_at, []

    def steps(self, epoch, epochs):
        return self.n

    def should_stop(self, model, step):
        return self.stop_at is not None and step >= self.stop_at

    def loss(self, model, batch, outputs, step):
        self.seen.append(batch is None and outputs is None)
        ids = torch.tensor([[3, 4, 5, 6]])
        return model(input_ids=ids, labels=ids).loss


def _setup(accelerator):
    tokenizer = lm.make_tokenizer(["alpha beta gamma delta epsilon zeta eta theta"])
    return lm.tiny_model(tokenizer, lm.TinyModelConfig(n_layer=1, n_embd=16, n_head=2, n_positions=32)), tokenizer


def test_a_part_with_its_own_data_trains_without_any_text(accelerator):
    model, tokenizer = _setup(accelerator)
    before = [p.detach().clone() for p in model.parameters()]
    term = OwnData(3)
    result = train(model, tokenizer, lambda epoch: [], TrainConfig(epochs=2, batch_size=2), accelerator, seed=0, terms=[term])
    assert result.steps == 6 and result.tokens_seen == 0 and not result.stopped_early
    assert term.seen == [True] * 6  # no teaching batch in any step
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_teaching_batches_and_own_steps_share_the_epoch(accelerator):
    model, tokenizer = _setup(accelerator)
    term = OwnData(3)
    result = train(model, tokenizer, lambda epoch: ["alpha beta gamma", "delta epsilon"], TrainConfig(epochs=1, batch_size=2, block_size=4), accelerator, seed=0, terms=[term])
    # two documents pack into 2 blocks = 1 batch of teaching text; the term wants 3 steps
    assert result.steps == 3 and term.seen == [False, True, True] and result.tokens_seen > 0


def test_should_stop_ends_training_before_the_next_step(accelerator):
    model, tokenizer = _setup(accelerator)
    result = train(model, tokenizer, lambda epoch: [], TrainConfig(epochs=5), accelerator, seed=0, terms=[OwnData(2, stop_at=3)])
    assert result.steps == 3 and result.stopped_early and result.epochs == 2
