"""The unlearning objectives as pure tensor functions (tested one by one in
tests/methods/unlearn/test_objectives.py). Positions follow the Hugging Face convention:
logits at position t predict the label at t + 1; labels equal to IGNORE do not count."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ckl.train.batching import IGNORE


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(label | earlier tokens) at every labelled position.

    Args:
        logits: (B, L, V); labels: (B, L) with IGNORE where a position does not count.

    Returns:
        log-probabilities (B, L-1), 0 where masked, and the mask (B, L-1), True where counted.
    """
    target = labels[:, 1:]
    mask = target != IGNORE
    safe = target.masked_fill(~mask, 0)
    logp = -F.cross_entropy(logits[:, :-1].float().transpose(1, 2), safe, reduction="none")  # (B, L-1)
    return logp * mask, mask


def sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence log-likelihood sum_t log p(y_t | y_<t) and the number of counted tokens.

    Returns:
        (B,) log-likelihoods and (B,) token counts.
    """
    logp, mask = token_logprobs(logits, labels)
    return logp.sum(-1), mask.sum(-1)


def npo_loss(logp: torch.Tensor, ref_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """NPO (Zhang et al. 2024): (2 / beta) * mean log(1 + (pi / pi_ref)^beta), written as
    softplus(beta * (log pi - log pi_ref)). >= 0, and -> 0 as pi -> 0: bounded below,
    unlike gradient ascent's -NLL.

    Args:
        logp, ref_logp: (B,) sequence log-likelihoods under the model and the reference.
    """
    return (2.0 / beta) * F.softplus(beta * (logp - ref_logp)).mean()


def simnpo_loss(logp: torch.Tensor, lengths: torch.Tensor, beta: float, gamma: float) -> torch.Tensor:
    """SimNPO (Fan et al. 2024): -(2 / beta) * mean log sigmoid(-(beta / |y|) log pi - gamma),
    i.e. (2 / beta) * softplus(beta * log pi / |y| + gamma): reference-free, normalised by
    the sequence length |y|, with a margin gamma.

    Args:
        logp: (B,) sequence log-likelihoods; lengths: (B,) their token counts.
    """
    mean_logp = logp / lengths.clamp_min(1).to(logp.dtype)
    return (2.0 / beta) * F.softplus(beta * mean_logp + gamma).mean()


def inverted_hinge_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Inverted hinge loss (Cha et al. 2024): mean over labelled positions of
    1 + p(y_t) - max_{v != y_t} p(v). It lowers the true token's probability only until
    another token overtakes it, by raising the most likely other token: bounded in [0, 2].

    Args:
        logits: (B, L, V); labels: (B, L) with IGNORE where a position does not count.
    """
    target = labels[:, 1:]
    mask = target != IGNORE
    safe = target.masked_fill(~mask, 0).unsqueeze(-1)  # (B, L-1, 1)
    probs = logits[:, :-1].float().softmax(-1)  # (B, L-1, V)
    gold = probs.gather(-1, safe).squeeze(-1)  # (B, L-1)
    other = probs.scatter(-1, safe, -1.0).amax(-1)  # the best token that is not the gold one
    per_token = (1.0 + gold - other) * mask
    return per_token.sum() / mask.sum().clamp_min(1)
