"""The unlearning losses as pure functions, checked against hand-computed values."""

import math

import torch
import torch.nn.functional as F

from ckl.methods.unlearn.objectives import inverted_hinge_loss, npo_loss, sequence_logprobs, simnpo_loss, token_logprobs
from ckl.train.batching import IGNORE


def test_token_logprobs_match_the_models_next_token_loss():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[1, 2, 3, 4, IGNORE], [5, 6, IGNORE, IGNORE, IGNORE]])
    logp, mask = token_logprobs(logits, labels)
    assert mask.sum() == 4  # shifted: 3 + 1 labelled positions
    reference = F.cross_entropy(logits[:, :-1].reshape(-1, 7), labels[:, 1:].reshape(-1), ignore_index=IGNORE)
    assert torch.allclose(-logp.sum() / mask.sum(), reference)
    seq, lengths = sequence_logprobs(logits, labels)
    assert lengths.tolist() == [3, 1]
    assert torch.allclose(seq, logp.sum(-1))


def test_npo_loss_is_the_papers_formula_and_bounded_below():
    logp, ref = torch.tensor([-2.0, -10.0]), torch.tensor([-3.0, -3.0])
    beta = 0.5
    expected = (2 / beta) * sum(math.log(1 + math.exp(beta * (a - b))) for a, b in zip(logp.tolist(), ref.tolist())) / 2
    assert math.isclose(float(npo_loss(logp, ref, beta)), expected, rel_tol=1e-6)
    assert math.isclose(float(npo_loss(ref, ref, beta)), (2 / beta) * math.log(2), rel_tol=1e-6)  # at the reference
    # as the forget text becomes impossible the loss goes to 0 (never below), unlike -NLL
    assert 0 <= float(npo_loss(torch.tensor([-1e4]), torch.tensor([-3.0]), beta)) < 1e-6


def test_simnpo_loss_normalises_by_length_and_applies_the_margin():
    beta, gamma = 2.5, 0.0
    short = simnpo_loss(torch.tensor([-2.0]), torch.tensor([2]), beta, gamma)
    long = simnpo_loss(torch.tensor([-20.0]), torch.tensor([20]), beta, gamma)
    assert torch.allclose(short, long)  # same likelihood per token, same loss whatever the length
    expected = -(2 / beta) * math.log(1 / (1 + math.exp(-(-beta * (-1.0) - 1.0))))
    assert math.isclose(float(simnpo_loss(torch.tensor([-3.0]), torch.tensor([3]), beta, 1.0)), expected, rel_tol=1e-6)


def test_inverted_hinge_loss_by_hand_and_bounded():
    probs = torch.tensor([[[0.1, 0.6, 0.3], [0.2, 0.2, 0.6], [0.3, 0.3, 0.4]]])  # (1, 3, 3): position t predicts label[t + 1]
    logits = probs.log()
    labels = torch.tensor([[0, 1, IGNORE]])  # only position 0 counts: gold token 1 (p 0.6), best other 0.3
    assert math.isclose(float(inverted_hinge_loss(logits, labels)), 1 + 0.6 - 0.3, rel_tol=1e-5)
    torch.manual_seed(0)
    random_logits = torch.randn(4, 9, 11) * 5
    loss = inverted_hinge_loss(random_logits, torch.randint(0, 11, (4, 9)))
    assert 0 <= float(loss) <= 2
