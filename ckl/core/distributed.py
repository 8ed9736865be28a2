"""How the processes of one data-parallel run agree, and which one writes.

Under `accelerate launch` several processes run `ckl run` side by side, one per device.
They train one model together (DDP averages the gradients in backward), but only the
main process (rank 0) writes: the world, the base model, checkpoints and the results
store. Every decision that depends on what is on disk is taken by the main process and
sent to the others (`on_main(..., share=True)`), so that all processes take the same
branch and no collective call waits forever for a process that went elsewhere; an error
on the main process is raised on every process.

With one process (no `accelerate launch`, or an accelerator of one process) every helper
is a plain call and nothing is communicated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import TypeVar

from ckl.core.errors import DivergenceError, InputError

_T = TypeVar("_T")


def processes(accelerator) -> int:
    """Number of data-parallel processes (1 without an accelerator)."""
    return 1 if accelerator is None else int(accelerator.num_processes)


def is_main(accelerator) -> bool:
    return accelerator is None or bool(accelerator.is_main_process)


def _broadcast(value):
    import torch.distributed as dist

    payload = [value]
    dist.broadcast_object_list(payload, src=0)
    return payload[0]


def _portable(err: Exception) -> tuple[str, object]:
    """An exception as something every process can rebuild (not all pickle cleanly)."""
    if isinstance(err, InputError):
        return "input", asdict(err)
    if isinstance(err, DivergenceError):
        return "divergence", str(err)
    if isinstance(err, FileNotFoundError):
        return "missing", (err.errno, err.strerror, err.filename)
    return "other", f"{type(err).__name__}: {err}"


def _rebuild(kind: str, data) -> Exception:
    if kind == "input":
        return InputError(**data)
    if kind == "divergence":
        return DivergenceError(data)
    if kind == "missing":
        return FileNotFoundError(*data)
    return RuntimeError(f"the main process failed: {data}")


def on_main(accelerator, fn: Callable[[], _T], share: bool = False) -> _T | None:
    """Run `fn` on the main process only.

    Returns:
        On the main process, fn's result; on the others, the same result when `share`
        (it must pickle) and None otherwise.

    Raises:
        Whatever `fn` raised, on every process (rebuilt from its message on the others).
    """
    if processes(accelerator) == 1:
        return fn()
    result, error = None, None
    if accelerator.is_main_process:
        try:
            result = fn()
        except Exception as err:  # sent to the other processes, then raised here too
            error = err
    sent = _broadcast((result if share else None, None if error is None else _portable(error)))
    if error is not None:
        raise error
    if sent[1] is not None:
        raise _rebuild(*sent[1])
    return result if accelerator.is_main_process else sent[0]


def shard(items: Sequence[_T], accelerator) -> list[_T]:
    """This process's contiguous share of `items` (shares differ in size by at most one,
    earlier ranks get the larger ones); concatenating the shares in rank order gives
    `items` back."""
    world = processes(accelerator)
    if world == 1:
        return list(items)
    rank = int(accelerator.process_index)
    size, extra = divmod(len(items), world)
    start = rank * size + min(rank, extra)
    return list(items[start : start + size + (rank < extra)])


def gather(items: list[_T], accelerator) -> list[_T]:
    """Every process's `items`, concatenated in rank order, on every process (the inverse
    of `shard`)."""
    if processes(accelerator) == 1:
        return list(items)
    import torch.distributed as dist

    parts: list = [None] * processes(accelerator)
    dist.all_gather_object(parts, list(items))
    return [x for part in parts for x in part]


def precision(name: str, accelerator=None):
    """The context a run's training and scoring run in: bf16 autocast (matmuls and
    activations in bfloat16, weights and optimizer state fp32) for `precision: bf16`,
    nothing for fp32. Autocast rather than Accelerate's `mixed_precision`, which is one
    setting per process and could not differ between runs in one process."""
    import contextlib

    import torch

    if name != "bf16":
        return contextlib.nullcontext()
    device = accelerator.device.type if accelerator is not None else "cpu"
    return torch.autocast(device_type=device, dtype=torch.bfloat16)
