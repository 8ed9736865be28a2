import torch

from ckl.model import lm
from ckl.train.batching import IGNORE, pack, shard_batches


def _tok():
    return lm.make_tokenizer(["a b c d e f g h i j k l m n o p"])


def test_packing_never_splits_a_short_document():
    tok = _tok()
    docs = ["a b c", "d e f g", "h i", "j k l m n"]
    ids, mask, labels = pack(tok, docs, block_size=8)
    rows = [tok.decode([t for t, m in zip(r, k) if m], skip_special_tokens=True).split() for r, k in zip(ids.tolist(), mask.tolist())]
    # each document appears whole inside one block
    flat = [" ".join(r) for r in rows]
    for d in docs:
        assert any(d in row for row in flat), (d, flat)
    assert (labels[mask == 0] == IGNORE).all()
    assert (labels[mask == 1] == ids[mask == 1]).all()


def test_overlong_document_is_split_into_full_blocks():
    tok = _tok()
    ids, mask, _ = pack(tok, ["a b c d e f g h i j k l"], block_size=5)
    assert mask.sum().item() == 13  # 12 words + EOS
    assert ids.shape[1] == 5


def test_every_rank_gets_the_same_number_of_batches():
    g = torch.Generator().manual_seed(0)
    shards = [shard_batches(11, 2, rank, 3, torch.Generator().manual_seed(0)) for rank in range(3)]
    assert len({len(s) for s in shards}) == 1
    covered = torch.cat([b for s in shards for b in s]).unique()
    assert covered.tolist() == list(range(11))
    assert len(shard_batches(11, 2, 0, 1, g)) == 6


def test_world_processes_at_half_batch_take_the_single_process_steps():
    """Step k of every rank together is step k of one process with batch_size * world."""
    single = shard_batches(23, 8, 0, 1, torch.Generator().manual_seed(5))
    ranks = [shard_batches(23, 4, rank, 2, torch.Generator().manual_seed(5)) for rank in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(single)
    for k, batch in enumerate(single):
        assert torch.cat([ranks[0][k], ranks[1][k]]).tolist() == batch.tolist()


def test_a_rank_left_without_items_in_the_last_step_gets_an_empty_batch():
    ranks = [shard_batches(9, 4, rank, 2, torch.Generator().manual_seed(0)) for rank in range(2)]
    assert [len(b) for b in ranks[0]] == [4, 1] and [len(b) for b in ranks[1]] == [4, 0]
