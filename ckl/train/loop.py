"""The one training loop, on Hugging Face Accelerate.

Read it top to bottom: every method that trains goes through `train`, and its parts are
called at fixed points, in the order the method lists them:

    0. stop if any part.should_stop(...)                                e.g. forget set forgotten
    1. loss   = next-token loss on the batch + sum(part.loss(...))     objective terms
    2. backward
    3. part.filter_gradients(...)                                       e.g. A-GEM projection
    4. clip, optimizer step, then each term's `after_step`

Scope (which parameters train) and post-steps (merging) happen around this loop in
`ckl.methods.base.TrainingMethod`, not inside it.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ckl.core.errors import DivergenceError
from ckl.train.batching import IGNORE, pack, shard_batches
from ckl.train.config import TrainConfig  # noqa: F401  (its home is ckl.train.config, torch-free; imported here by callers)


def make_optimizer(params, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over `params`: torch's multi-tensor implementation, or its fused kernel
    (`optimizer: adamw_fused`) where torch has one for the parameters' device (CPU and
    CUDA in torch >= 2.4; elsewhere the multi-tensor one is used, and said)."""
    params = list(params)
    if config.optimizer == "adamw_fused":
        try:
            return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, fused=True)
        except (RuntimeError, ValueError) as err:  # no fused kernel for this device or dtype
            import warnings

            warnings.warn(f"optimizer adamw_fused: {err}; using the multi-tensor AdamW", stacklevel=2)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


@dataclass
class TrainResult:
    steps: int = 0
    tokens_seen: int = 0
    seconds: float = 0.0
    last_loss: float = float("nan")
    epochs: int = 0
    stopped_early: bool = False  # a term's `should_stop` ended training


class LossTerm:
    """What the loop needs of a part: an extra loss and a gradient filter (both optional)."""

    # True when `loss` is computed from the teaching batch (distillation on it, a router's
    # balance over its tokens). Under data parallelism a rank whose share of a short last
    # global batch is empty steps on a stand-in block of weight 0; such a term's loss on
    # the stand-in is multiplied by 0 too (kept in the graph, so every rank reduces the
    # gradients of the same parameters). Weight penalties read no batch and stay as they are.
    reads_batch: bool = False

    def loss(self, model, batch: dict, outputs, step: int) -> torch.Tensor | None:  # pragma: no cover - default
        return None

    def filter_gradients(self, model, step: int) -> None:  # pragma: no cover - default
        return None

    def own_tokens(self) -> int:
        """Tokens of its own data (not the teaching batch) the last `loss` call trained on,
        e.g. RFT's sampled answers; counted in the run's tokens_seen. 0 by default."""
        return 0

    def steps(self, epoch: int, epochs: int) -> int:
        """Optimiser steps this term needs in `epoch` (of `epochs`) for data of its own (an
        unlearning part's forget set). The loop runs max(teaching batches, this) steps; the
        steps past the teaching batches have no next-token batch: `loss` gets batch=None,
        outputs=None, and a step where no term returns a loss is skipped."""
        return 0

    def after_step(self, model, step: int) -> None:  # pragma: no cover - default
        """Called right after every optimiser step (before the next forward pass), to adjust
        the weights the step produced; no-op by default."""
        return None

    def should_stop(self, model, step: int) -> bool:
        """Checked before every optimiser step; True ends training (e.g. an unlearning
        part's forget set reached its threshold)."""
        return False


def train(
    model,
    tokenizer,
    documents: Callable[[int], Sequence[str]],
    config: TrainConfig,
    accelerator,
    seed: int,
    terms: Sequence[LossTerm] = (),
    on_epoch_end: Callable[[int], bool] | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    on_eval: Callable[[int, int, float], None] | None = None,
) -> TrainResult:
    """Train `model` in place on freshly rendered documents each epoch.

    Documents are packed into blocks in the order `documents(epoch)` gives them. A
    renderer that returns the same texts in the same order every epoch (verbatim text
    targets, e.g. the Pile extraction scenario) then yields the same blocks every epoch:
    a document that never starts a block is only ever seen after the same neighbour, and
    a small model learns it as a continuation of that neighbour, not of its own prompt
    (measured: 11 of 24 Pile targets, exactly the 11 at block starts, memorised and the
    rest not at all). `shuffle: true` (the default) draws a new order each epoch;
    `shuffle: false` keeps the renderer's order.

    Args:
        documents: epoch -> training documents (rendered anew each epoch so templates and
            fact order vary; see `ckl.data.stream.render_documents`).
        accelerator: an `accelerate.Accelerator`; DDP / FSDP come from it.
        seed: makes batch order reproducible.
        terms: parts contributing loss terms and gradient filters, in order.
        on_epoch_end: called with the epoch number; returning True stops training.
        progress: called as progress(epoch, step, loss) after each optimiser step.
        on_eval: called as on_eval(step, epoch, loss) where `config.evaluates_at(step)`
            (step 0 before the first step, with loss NaN) and once more after the last step
            if that was not a point; the model is in eval mode during the call and back in
            train mode after it. It must not train: the weights, the optimiser and the
            random streams the loop uses are the same with and without it.

    Raises:
        DivergenceError: the loss or the gradients became NaN or infinite.
    """
    start = time.perf_counter()
    result = TrainResult()
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters")
    optimizer = make_optimizer(params, config)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    generator = torch.Generator().manual_seed(seed)
    rank, world = accelerator.process_index, accelerator.num_processes
    scheduler = None
    evaluated = -1  # the last step with a curve point
    filters = sorted(terms, key=lambda term: bool(getattr(term, "filter_last", False)))

    def evaluate(epoch: int) -> None:
        nonlocal evaluated
        model.eval()
        on_eval(result.steps, epoch, result.last_loss)
        model.train()
        evaluated = result.steps

    try:
        if on_eval is not None and config.eval_every:
            evaluate(0)
        for epoch in range(config.epochs):
            docs = documents(epoch)
            if config.shuffle:  # the same order on every process: drawn from the seed
                docs = list(docs)
                random.Random(f"{seed}/{epoch}").shuffle(docs)
            input_ids, mask, labels = pack(tokenizer, docs, config.block_size)
            batches = shard_batches(len(input_ids), config.batch_size, rank, world, generator)
            wanted = max((term.steps(epoch, config.epochs) for term in terms), default=0)
            slots = list(batches) + [None] * (wanted - len(batches))  # None: a step without teaching text
            if scheduler is None and config.schedule == "cosine":
                # the step count is estimated from the first epoch (documents vary a little)
                total = max(1, len(slots) * config.epochs)
                scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.1 + 0.45 * (1 + math.cos(math.pi * min(step, total) / total)))
            for index in slots:
                if any(term.should_stop(model, result.steps) for term in terms):
                    result.stopped_early = True
                    break
                own = index is None  # only the terms' own losses (e.g. unlearning on a forget set)
                real = not own and index.numel() > 0
                if not real and not own:  # a short last global batch left this rank nothing: step on a stand-in of weight 0
                    index = torch.zeros(1, dtype=torch.long)
                batch = None if own else {
                    "input_ids": input_ids[index].to(accelerator.device),  # (B, L)
                    "attention_mask": mask[index].to(accelerator.device),
                    "labels": labels[index].to(accelerator.device),
                }
                outputs = None if own else model(**batch)
                loss = torch.zeros((), device=accelerator.device) if own else outputs.loss
                stand_in = not real and not own
                extras = [e * 0 if stand_in and getattr(term, "reads_batch", False) else e
                          for term in terms if (e := term.loss(model, batch, outputs, result.steps)) is not None]
                if own and not extras:
                    continue  # no term has anything to learn from in this step
                if world > 1:
                    loss, tokens = _global_token_mean(accelerator, loss, extras, batch, real, result.steps, epoch)
                else:
                    loss = sum(extras, loss)
                    tokens = 0 if own else int(batch["attention_mask"].sum())
                    if not torch.isfinite(loss):
                        raise DivergenceError(f"loss became {loss.item()} at step {result.steps} (epoch {epoch})")
                tokens += sum(term.own_tokens() for term in terms)
                accelerator.backward(loss)
                for term in filters:  # masks last: a projection (A-GEM) must not put gradient back into masked weights
                    term.filter_gradients(model, result.steps)
                if config.max_grad_norm > 0:
                    norm = accelerator.clip_grad_norm_(params, config.max_grad_norm)
                    if norm is not None and not math.isfinite(float(norm)):
                        raise DivergenceError(f"gradient norm became {float(norm)} at step {result.steps} (epoch {epoch})")
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                for term in terms:  # post-step adjustments of the weights (DAS's scaled updates)
                    term.after_step(model, result.steps)
                if scheduler is not None:
                    scheduler.step()
                result.steps += 1
                result.tokens_seen += tokens
                result.last_loss = float(loss.detach())
                if progress:
                    progress(epoch, result.steps, result.last_loss)
                if on_eval is not None and config.evaluates_at(result.steps):
                    evaluate(epoch)
            result.epochs = epoch + 1
            if result.stopped_early or (on_epoch_end is not None and on_epoch_end(epoch)):
                break
        if on_eval is not None and config.eval_every and evaluated != result.steps:
            evaluate(max(result.epochs - 1, 0))  # the curve ends where training ended
    finally:
        model = accelerator.unwrap_model(model)
        model.eval()
        _release(accelerator)
    result.seconds = time.perf_counter() - start
    return result


def _global_token_mean(accelerator, loss: torch.Tensor, extras: list, batch: dict, real: bool, step: int, epoch: int) -> tuple[torch.Tensor, int]:
    """The loss to back-propagate on this rank so that DDP's mean over ranks is the loss of
    the whole global batch, as one process would compute it.

    The model's loss is a mean over this rank's label tokens; DDP averages gradients over
    ranks. Weighting it by world * (this rank's tokens / all ranks' tokens) turns the
    average of per-rank means into the token mean over the global batch (ranks' blocks
    hold different numbers of tokens). Extra terms (penalties) are added unweighted: they
    are the same on every rank, so their average is themselves. One all-reduce also
    tells every rank whether any rank's loss is not finite, so that all stop together.

    Returns:
        (loss to back-propagate, tokens of the whole global batch).
    """
    labelled = (batch["labels"][:, 1:] != IGNORE).sum() if real else torch.zeros((), dtype=torch.long, device=loss.device)
    seen = batch["attention_mask"].sum() if real else torch.zeros_like(labelled)
    total = sum(extras, loss)
    bad = ~torch.isfinite(total.detach())
    counts = torch.stack([labelled.float(), seen.float(), bad.float()]).to(accelerator.device)
    counts = accelerator.reduce(counts, reduction="sum")  # (3,): label tokens, tokens, ranks with a bad loss
    if counts[2] > 0:
        raise DivergenceError(f"loss became {float(total.detach())} at step {step} (epoch {epoch}) on {int(counts[2])} process(es)")
    weight = labelled.float() * accelerator.num_processes / counts[0].clamp(min=1)
    return sum(extras, loss * weight), int(counts[1])


def _release(accelerator) -> None:
    """Drop the accelerator's references to this stage's model and optimizer.

    `free_memory()` also runs a full `gc.collect()`, which costs ~170 ms per call on a
    CPU run (bench/train_speed.py) and is only worth it to return GPU memory; on CPU,
    clearing the lists is enough for the old stage's objects to be freed.
    """
    if accelerator.device.type != "cpu":
        accelerator.free_memory()
        return
    for name in ("_models", "_optimizers", "_schedulers", "_dataloaders"):
        getattr(accelerator, name, []).clear()


def rng_for(seed: int, *parts: object) -> random.Random:
    """A `random.Random` derived from a seed and names, the same in every process."""
    from ckl.data.stream import stable_hash

    return random.Random(stable_hash(str(seed), *map(str, parts)))
