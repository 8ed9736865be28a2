"""Running a model for the unlearning metrics: teacher-forced argmax (MA), batched greedy
continuations from many prefixes at once (EL_n, answers to forgotten prompts), and the
log-likelihood of given continuations under a judge model (the answers' perplexity).

The metric formulas are the pure functions of `ckl.evaluate.unlearning`; this module
only produces their inputs, batched: all (probe, prefix length) pairs of EL_n are one
left-padded batch decoded together with a KV cache, not one generate() per prefix.

Probe text is tokenised as the scorer does (`ckl.model.scoring`): prompt and " " +
answer separately, without special tokens, ids concatenated.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ckl.evaluate.config import ExtractionConfig  # noqa: F401  (its home is ckl.evaluate.config, torch-free)
from ckl.evaluate import unlearning as U
from ckl.data.facts import Probe
from ckl.evaluate.metrics import mean
from ckl.model.scoring import bias_logits, perplexity_from_nll, supported_next


def encode_probes(tokenizer, probes: Sequence[Probe]) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, answer ids) per probe, tokenised as the scorer does."""
    if not probes:
        return []
    prompts = tokenizer([p.prompt for p in probes], add_special_tokens=False)["input_ids"]
    answers = tokenizer([" " + p.answer for p in probes], add_special_tokens=False)["input_ids"]
    return list(zip(prompts, answers))


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _right_padded(seqs: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)  # (B, L)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = torch.tensor(list(s), dtype=torch.long)
        mask[r, : len(s)] = 1
    return ids, mask


@torch.inference_mode()
def teacher_forced_argmax(model, seqs: Sequence[Sequence[int]], batch_size: int = 64, pad: int = 0) -> list[list[int]]:
    """For each sequence s, the argmax next token after s[:i+1] for i < len(s) - 1, i.e.
    the model's prediction of s[1:] (aligned to it)."""
    model.eval()
    out: list[list[int]] = [[] for _ in seqs]
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        ids, mask = _right_padded([seqs[i] for i in chunk], pad)
        logits = model(input_ids=ids.to(_device(model)), attention_mask=mask.to(_device(model))).logits  # (B, L, V)
        best = logits.argmax(-1).cpu()  # (B, L)
        for r, i in enumerate(chunk):
            out[i] = best[r, : len(seqs[i]) - 1].tolist()
    return out


def _cache_kwarg(model, result) -> dict:
    """The KV cache of `result`, under the keyword this model's forward takes (`cache` in
    recent transformers, `past_key_values` before)."""
    import inspect

    if "cache" in inspect.signature(model.forward).parameters:
        return {"cache": getattr(result, "cache", None) or result.past_key_values}
    return {"past_key_values": result.past_key_values}


Guide = tuple[Sequence[Sequence[int]], float, bool]  # (supported token sequences, weight, hard)


def _next_token(logits: torch.Tensor, steps: list[torch.Tensor], guides: Sequence[Guide | None] | None, stop: torch.Tensor | None) -> torch.Tensor:
    """The greedy token of each row (B, V) -> (B,), with the rows' guides applied given the
    tokens `steps` generated so far."""
    if not guides or not any(guides):
        return logits.argmax(-1)
    so_far = torch.stack(steps, dim=1).tolist() if steps else [[] for _ in guides]
    rows, toks, bias, stop_rows, stop_bias, hard_rows = [], [], [], [], [], []
    for r, guide in enumerate(guides):
        if guide is None:
            continue
        seqs, weight, hard = guide
        nxt, complete = supported_next(so_far[r], seqs)
        rows += [r] * len(nxt)
        toks += nxt
        bias += [weight] * len(nxt)
        if complete and stop is not None:
            stop_rows.append(r), stop_bias.append(weight)
        if hard and (nxt or complete):
            hard_rows.append(r)
    logits = logits.clone()  # biased in the model's dtype, as the scorer biases it
    bias_logits(logits, np.asarray(rows, dtype=np.int64), np.asarray(toks, dtype=np.int64), np.asarray(bias, dtype=np.float64),
                np.asarray(stop_rows, dtype=np.int64), np.asarray(stop_bias, dtype=np.float64), np.asarray(hard_rows, dtype=np.int64),
                stop if stop is not None else torch.zeros(logits.shape[1], dtype=torch.bool))
    return logits.argmax(-1)


@torch.inference_mode()
def greedy_continuations(model, prefixes: Sequence[Sequence[int]], max_new: int | Sequence[int], batch_size: int = 128, pad: int = 0,
                         guides: Sequence[Guide | None] | None = None, stop: torch.Tensor | None = None) -> list[list[int]]:
    """Greedy decoding of `max_new` tokens (one number, or one per prefix) after each
    prefix, many prefixes per batch.

    Prefixes are left-padded with explicit position ids, so each row decodes exactly as
    it would alone; one KV-cached step per new token for the whole batch. No stop token
    ends a row early (callers cut the continuation where they need).

    `guides` (one per prefix, None for an unguided one): knowledge-weighted decoding as the
    scorer applies it (ckl.model.scoring, "Knowledge-weighted decoding"): at each step a
    token that continues one of the guide's token sequences, given what the row generated
    so far, gains its weight (and every `stop` token where a sequence is complete); with
    its `hard` flag every other token of such a step is ruled out.
    """
    model.eval()
    device = _device(model)
    out: list[list[int]] = [[] for _ in prefixes]
    wanted = [max_new] * len(prefixes) if isinstance(max_new, int) else list(max_new)
    order = sorted(range(len(prefixes)), key=lambda i: (len(prefixes[i]), wanted[i]))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        steps_needed = max(wanted[i] for i in chunk)
        width = max(len(prefixes[i]) for i in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)  # (B, L) left-padded
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for r, i in enumerate(chunk):
            p = list(prefixes[i])
            ids[r, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[r, width - len(p):] = 1
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(1) - 1).clamp(min=0)  # (B, L)
        rows_guides = [guides[i] for i in chunk] if guides is not None else None
        result = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        nxt = _next_token(result.logits[:, -1], [], rows_guides, stop)  # (B,)
        steps = [nxt]
        last = positions[:, -1]
        for _ in range(steps_needed - 1):
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            last = last + 1
            result = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=last[:, None],
                           use_cache=True, **_cache_kwarg(model, result))
            nxt = _next_token(result.logits[:, -1], steps, rows_guides, stop)
            steps.append(nxt)
        generated = torch.stack(steps, dim=1).cpu()  # (B, steps_needed)
        for r, i in enumerate(chunk):
            out[i] = generated[r, : wanted[i]].tolist()
    return out


@torch.inference_mode()
def continuation_nll(model, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]], batch_size: int = 64, pad: int = 0) -> tuple[float, int]:
    """Summed negative log-likelihood of each continuation given its prompt, and the
    number of continuation tokens, over all pairs."""
    model.eval()
    seqs = [list(p) + list(c) for p, c in zip(prompts, continuations)]
    total, count = 0.0, 0
    for start in range(0, len(seqs), batch_size):
        part = range(start, min(start + batch_size, len(seqs)))
        ids, mask = _right_padded([seqs[i] for i in part], pad)
        targets = torch.full_like(ids, -100)
        for r, i in enumerate(part):
            lo, hi = len(prompts[i]), len(seqs[i])
            targets[r, lo:hi] = ids[r, lo:hi]
        logits = model(input_ids=ids.to(_device(model)), attention_mask=mask.to(_device(model))).logits[:, :-1]  # (B, L-1, V)
        labels = targets[:, 1:].to(logits.device)
        total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100, reduction="sum"))
        count += int((labels != -100).sum())
    return total, count


def cohort_scores(model, tokenizer, probes: Sequence[Probe], config: ExtractionConfig, judge=None) -> dict[str, float | int | None]:
    """MA, EL_n, and fluency of the greedy answer, over `probes` (one cohort).

    Returns:
        {"n": probes measured, "ma": mean MA over the answers, "el": mean EL_n over
        answers of >= n tokens (None if none), "distinct": mean distinct-n of the greedy
        answer (as many tokens as the gold answer), "answer_ppl": perplexity of those
        greedy answers under `judge` (the base model; None without one), "brunet" and
        "honore": mean Brunet's index and Honore's statistic of their words, and "ls":
        ReLearn's Linguistic Score of the three (None without a judge, or when no answer
        has two words), "refusal": the share of answers that begin like one of TOFU's
        refusal sentences (what `idk` trains by default)}.
    """
    probes = list(probes)[: config.max_facts]
    if not probes:
        return {"n": 0, "ma": None, "el": None, "distinct": None, "answer_ppl": None, "brunet": None, "honore": None, "ls": None, "refusal": None}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    pairs = encode_probes(tokenizer, probes)
    full = [p + a for p, a in pairs]
    predicted = teacher_forced_argmax(model, full, config.batch_size, pad)
    ma = []
    for (p, a), seq, pred in zip(pairs, full, predicted):
        target = torch.tensor(seq[1:])[None]
        counted = torch.zeros_like(target)
        counted[0, len(p) - 1:] = 1  # positions predicting answer tokens
        ma.append(float(U.memorization_accuracy(torch.tensor(pred)[None], target, counted)[0]))
    # one batch: the prompt itself (the answer) and every EL_n prefix
    jobs: list[tuple[int, int]] = []  # (probe index, prefix length)
    for k, ((p, a), seq) in enumerate(zip(pairs, full)):
        jobs.append((k, len(p)))
        jobs += [(k, t) for t in range(len(p) + config.stride, len(seq) - config.ngram + 1, config.stride)]
    gens = greedy_continuations(model, [full[k][:t] for k, t in jobs], [len(full[k]) - t for k, t in jobs], config.batch_size, pad)
    by_probe: dict[int, tuple[list, list]] = {}
    for (k, t), g in zip(jobs, gens):
        starts, outs = by_probe.setdefault(k, ([], []))
        starts.append(t)
        outs.append(g)
    el, distinct, answers = [], [], []
    for k, (p, a) in enumerate(pairs):
        starts, outs = by_probe[k]
        el.append(U.extraction_likelihood(outs, full[k], starts, config.ngram))
        answer = outs[0][: len(a)]  # the first job of each probe starts at the prompt
        answers.append(answer)
        distinct.append(U.distinct_n(answer, config.distinct))
    answer_ppl = None
    if judge is not None and judge.get_input_embeddings().num_embeddings == model.get_input_embeddings().num_embeddings:
        nll, count = continuation_nll(judge, [p for p, _ in pairs], answers, config.batch_size, pad)
        answer_ppl = perplexity_from_nll(nll, count)
    texts = [U.words(t) for t in tokenizer.batch_decode(answers, skip_special_tokens=True)]
    brunet, honore = mean(U.brunet_index(t) for t in texts), mean(U.honore_statistic(t) for t in texts)
    return {"n": len(probes), "ma": mean(ma), "el": mean(el), "distinct": mean(distinct), "answer_ppl": answer_ppl,
            "brunet": brunet, "honore": honore, "ls": U.linguistic_score(answer_ppl, brunet, honore),
            "refusal": U.refusal_share(texts, _refusal_words())}


_REFUSALS: list[list[str]] | None = None


def _refusal_words() -> list[list[str]]:
    """TOFU's refusal sentences (what `idk` trains by default), as word lists."""
    global _REFUSALS
    if _REFUSALS is None:
        from ckl.data.formats.refusals import DEFAULT_FILE, read_refusals

        _REFUSALS = [U.words(r) for r in read_refusals(DEFAULT_FILE)]
    return _REFUSALS
