"""ckl.core.distributed in two real gloo processes: shares add back up, the main process's
decisions and errors reach every process (so none waits forever in a collective)."""

from __future__ import annotations

import multiprocessing
import socket
from dataclasses import dataclass

from ckl.core.distributed import gather, on_main, shard
from ckl.core.errors import InputError


@dataclass
class _Processes:
    """The three attributes of an accelerate.Accelerator that ckl.core.distributed reads."""

    process_index: int
    num_processes: int

    @property
    def is_main_process(self) -> bool:
        return self.process_index == 0


def _bad_seed():
    raise InputError("exp.yaml", 3, "seeds", "bad seed")


def _worker(rank: int, port: int, results) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        acc = _Processes(rank, 2)
        items = list(range(7))
        mine = shard(items, acc)
        together = gather(mine, acc)
        decided = on_main(acc, lambda: f"decided by {rank}", share=True)
        written = on_main(acc, lambda: f"written by {rank}")  # not shared: None elsewhere
        try:
            on_main(acc, _bad_seed)
            error = None
        except InputError as err:
            error = str(err)
        try:
            on_main(acc, lambda: 1 / 0)
            other = None
        except (ZeroDivisionError, RuntimeError) as err:
            other = type(err).__name__
        results.put((rank, mine, together, decided, written, error, other))
    finally:
        dist.destroy_process_group()


def test_main_process_decisions_and_errors_reach_every_process():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    workers = [ctx.Process(target=_worker, args=(rank, port, results)) for rank in range(2)]
    for w in workers:
        w.start()
    out = dict((r[0], r[1:]) for r in (results.get(timeout=120) for _ in workers))
    for w in workers:
        w.join(timeout=60)
    assert [w.exitcode for w in workers] == [0, 0]

    assert out[0][0] == [0, 1, 2, 3] and out[1][0] == [4, 5, 6]  # contiguous shares, larger first
    assert out[0][1] == out[1][1] == list(range(7))  # gathered back in order on both
    assert out[0][2] == out[1][2] == "decided by 0"
    assert out[0][3] == "written by 0" and out[1][3] is None
    assert out[0][4] == out[1][4] == "exp.yaml:3: field 'seeds': bad seed"  # the same user error everywhere
    assert out[0][5] == "ZeroDivisionError" and out[1][5] == "RuntimeError"


def test_one_process_is_a_plain_call():
    assert shard([1, 2, 3], None) == [1, 2, 3] and gather([1, 2], None) == [1, 2]
    assert on_main(None, lambda: 5) == 5
