"""How an edit's key is averaged over its prompts."""

import torch

from ckl.methods.edit._keys import context_weighted_mean
from ckl.methods.edit._prompts import PromptBatch


def _batch(groups):
    group = torch.tensor(groups)
    n = len(groups)
    z = torch.zeros(n, 1, dtype=torch.long)
    return PromptBatch(z, z, torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long), z, z.bool(), group, int(group.max()) + 1)


def test_the_bare_prompt_weighs_half_and_the_contexts_share_the_other_half():
    # group 0: bare row 1.0, contexts 3.0 and 5.0; group 1: bare row 10.0 only
    keys = torch.tensor([[1.0], [3.0], [5.0], [10.0]])
    got = context_weighted_mean(keys, _batch([0, 0, 0, 1]))
    assert torch.allclose(got, torch.tensor([[(1.0 + 4.0) / 2], [10.0]]))  # a plain mean would give 3.0 for group 0
