"""Probe scoring: candidate ranking and greedy exact match, batched, from one forward pass.

Definitions
-----------
A probe's *continuation* for an answer ``a`` is the text ``" " + a`` after the prompt.
Prompt and continuation are tokenised separately (``add_special_tokens=False``) and their
ids concatenated, so every candidate of a probe sees exactly the same prompt tokens.

``logprob``
    The sum over the gold answer's tokens of ``log p(token | prompt, earlier answer tokens)``.
``rank_ok``
    Every candidate in ``probe.candidates`` is scored by the same sum (candidates may be
    several tokens long and of different lengths; no length normalisation). The
    prediction is the highest-scoring candidate; on a tie, the first of the tied in the
    probe's candidate order. ``rank_ok`` iff the prediction is the gold answer's first
    occurrence in the candidates, so a tie counts as right only when the gold comes first
    among the tied. A probe whose candidates lack the gold is never ``rank_ok``. A sum
    never prefers a candidate to its own token prefix ("Port Elmira Harbour" scores below
    "Port Elmira"), so candidate sets should not contain such pairs (the synthetic
    world's do not).
``predicted``
    That prediction ("" for a probe without candidates).
``em``
    Greedy decoding from the prompt produces exactly the answer's tokens and then stops
    the answer: the next greedy token is a *stop token*, i.e. EOS or a token whose text
    (decoded on its own, leading whitespace stripped) is empty or starts with a
    non-alphanumeric character ("." "," "?" a newline, "<pad>", ...). Greedy decoding is
    deterministic, so this is exactly: at every answer position the argmax of the
    teacher-forced logits is the gold token, and the argmax after the last answer token is
    a stop token. It therefore comes from the same teacher-forced pass as the ranking
    scores, with no generate() loop.

The fast path (`score_probes`)
------------------------------
For each probe the candidates' tokens are merged into a prefix tree (trie). Only the
tokens whose *outputs* are needed are fed to the model: the proper prefixes of every
candidate (the prompt's last position already gives every first-token distribution, so
single-token distractors cost nothing) and the whole gold answer (its last output is the
stop check). One row per probe holds the prompt followed by its trie nodes; a 4D
attention mask lets each node see the prompt and its own ancestors only, and explicit
``position_ids`` give node ``n`` the position it would have in ``prompt + candidate``.
So one forward pass per batch scores every candidate of every probe, sharing the
prompt's computation and each shared answer prefix ("Port ..."), with no KV-cache copy.
Only the needed rows go through the LM head (``logits_to_keep`` as a boolean mask) and
through ``log_softmax``. Probes are sorted by row length so batches carry little padding.

Attention implementations that ignore custom 4D masks (flash attention, flex) get the
same computation laid out as one row per root-to-leaf path of the trie, with an ordinary
2D padding mask (`_tree_masks_supported` decides).

The reference path (`reference_score`)
--------------------------------------
The obvious slow way, for one probe: ``model.generate`` greedily for
``len(answer tokens) + 1`` new tokens, cut the continuation at its first stop token,
decode, normalise (lowercase, collapse whitespace, strip surrounding punctuation and
space) and compare with the normalised answer; and one forward pass per candidate for the
ranking. The two paths agree on every probe whose answer contains no stop token (the
synthetic world's objects never do). Where they can differ, the fast path is the stricter:
it needs the gold *tokens*, so a greedy output that spells the answer with other tokens or
another letter case matches only in the reference; and an answer that itself contains a
stop token ("St. Ives") can only match in the fast path, since the reference cuts it.
"""

from __future__ import annotations

import inspect
import math
import re
import string
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ckl.facts import Probe

__all__ = [
    "Scores",
    "score_probes",
    "perplexity",
    "reference_score",
    "reference_exact_match",
    "stop_token_mask",
    "normalise_answer",
]


@dataclass
class Scores:
    """Per-probe results of `score_probes`, in the order of the probes given."""

    em: np.ndarray  # (N,) bool: greedy generation exact match
    rank_ok: np.ndarray  # (N,) bool: the gold answer ranks first among the candidates
    logprob: np.ndarray  # (N,) float64: sum log p(gold answer tokens | prompt)
    predicted: list[str]  # top-ranked candidate per probe

    def __len__(self) -> int:
        return len(self.predicted)


# ------------------------------------------------------------------------ small helpers


def _encode(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    if not texts:
        return []
    return tokenizer(list(texts), add_special_tokens=False)["input_ids"]


def _device_dtype(model) -> tuple[torch.device, torch.dtype]:
    param = next(model.parameters())
    return param.device, param.dtype


def _vocab_size(model) -> int:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and getattr(head, "weight", None) is not None:
        return int(head.weight.shape[0])
    return int(model.config.vocab_size)


def _is_stop_text(text: str) -> bool:
    text = text.lstrip()
    return not text or not text[0].isalnum()


_STOP_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def stop_token_mask(tokenizer, vocab_size: int) -> torch.Tensor:
    """(V,) bool: which token ids end an answer (see the module docstring), cached per tokenizer.

    Ids the tokenizer does not know (a model's vocabulary padded past the tokenizer's)
    decode to nothing, so they count as stops.
    """
    key = (vocab_size, len(tokenizer))
    cached = _STOP_CACHE.get(tokenizer)
    if cached is not None and cached[0] == key:
        return cached[1]
    known = min(vocab_size, len(tokenizer))
    texts = tokenizer.batch_decode(
        [[i] for i in range(known)], skip_special_tokens=False, clean_up_tokenization_spaces=False
    )
    stop = torch.ones(vocab_size, dtype=torch.bool)  # (V,)
    stop[:known] = torch.tensor([_is_stop_text(t) for t in texts], dtype=torch.bool)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id < vocab_size:
        stop[tokenizer.eos_token_id] = True
    _STOP_CACHE[tokenizer] = (key, stop)
    return stop


_PUNCT_AND_SPACE = string.punctuation + string.whitespace


def normalise_answer(text: str) -> str:
    """Lowercase, collapse whitespace, strip surrounding punctuation and space."""
    return re.sub(r"\s+", " ", text.lower()).strip(_PUNCT_AND_SPACE)


def _tree_masks_supported(model) -> bool:
    """Whether the model honours a custom 4D float attention mask (eager and sdpa do)."""
    impl = getattr(model.config, "_attn_implementation", None) or "eager"
    return impl in ("eager", "sdpa")


def _forward_rows(model, input_ids, position_ids, attention_mask, keep) -> torch.Tensor:
    """Logits at the `keep` positions only, (R, V) in row-major order of `keep` (B, T)."""
    params = inspect.signature(model.forward).parameters
    if "logits_to_keep" in params:
        try:
            logits = model(
                input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask,
                use_cache=False, logits_to_keep=keep,
            ).logits
            if logits.ndim == 2 and logits.shape[0] == int(keep.sum()):
                return logits  # (R, V)
        except (TypeError, IndexError, RuntimeError):
            pass  # an older model whose logits_to_keep takes no boolean mask
    logits = model(
        input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask, use_cache=False
    ).logits  # (B, T, V)
    return logits[keep]  # (R, V)


# ------------------------------------------------------------------------ planning


@dataclass
class _Plan:
    """One probe's trie and what to read from it.

    Node ``n`` stands for an answer prefix; it is fed token ``tokens[n]`` and its output
    predicts the token after that prefix. Reference ``-1`` means the prompt's last
    position (the empty prefix). Parents precede their children.
    """

    prompt: list[int]
    tokens: list[int]
    parents: list[int]
    depths: list[int]
    score_ref: list[int]  # for every scored token: the node whose output predicts it
    score_tok: list[int]
    score_slot: list[int]  # 0..K-1 candidates, K the gold
    n_slots: int
    gold_index: int  # first index of the gold in the candidates, -1 when absent
    stop_ref: int  # the node after the whole gold answer: its output is the stop check


def _plan(probe: Probe, prompt: list[int], ids: dict[str, list[int]]) -> _Plan:
    if not prompt:
        raise ValueError(f"probe {probe.id!r}: the prompt {probe.prompt!r} has no tokens")
    tokens: list[int] = []
    parents: list[int] = []
    depths: list[int] = []
    children: dict[tuple[int, int], int] = {}
    score_ref: list[int] = []
    score_tok: list[int] = []
    score_slot: list[int] = []

    def walk(seq: list[int], n_nodes: int) -> list[int]:
        refs = [-1]
        for tok in seq[:n_nodes]:
            key = (refs[-1], tok)
            node = children.get(key)
            if node is None:
                node = children[key] = len(tokens)
                tokens.append(tok)
                parents.append(refs[-1])
                depths.append(len(refs))
            refs.append(node)
        return refs

    texts = list(probe.candidates) + [probe.answer]  # slot K, the last, is the gold
    stop_ref = -1
    for slot, text in enumerate(texts):
        seq = ids[text]
        is_gold = slot == len(texts) - 1
        if not seq:
            raise ValueError(f"probe {probe.id!r}: the {'answer' if is_gold else 'candidate'} {text!r} has no tokens")
        # A distractor's last token needs no output; the gold's does (the stop check).
        refs = walk(seq, len(seq) if is_gold else len(seq) - 1)
        score_ref += refs[: len(seq)]
        score_tok += seq
        score_slot += [slot] * len(seq)
        stop_ref = refs[-1]
    gold_index = probe.candidates.index(probe.answer) if probe.answer in probe.candidates else -1
    return _Plan(prompt, tokens, parents, depths, score_ref, score_tok, score_slot, len(texts), gold_index, stop_ref)


@dataclass
class _Rows:
    """A batch laid out for one forward pass: rows of prompt + trie nodes."""

    input_ids: torch.Tensor  # (B, T)
    position_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, 1, T, T) float, or (B, T) long for path rows
    keep: torch.Tensor  # (B, T) bool: positions whose logits are read
    out_row: list[np.ndarray]  # per probe: output row of ref -1, 0, 1, ... (index ref + 1)


def _layout(plans: Sequence[_Plan], pad_id: int, tree: bool, dtype: torch.dtype, device) -> _Rows:
    """Lay out a batch of plans as rows.

    tree=True: one row per probe, prompt then all its nodes, under a 4D mask in which a
    node sees the prompt and its ancestors. tree=False: one row per root-to-leaf path,
    a plain causal row under a 2D padding mask; a node on several paths is read once.
    """
    # Each row: (probe index in batch, prompt, node ids of the plan in row order).
    rows: list[tuple[int, list[int], list[int]]] = []
    for p, plan in enumerate(plans):
        if tree:
            rows.append((p, plan.prompt, list(range(len(plan.tokens)))))
            continue
        is_parent = set(plan.parents)
        for leaf in range(len(plan.tokens)):
            if leaf in is_parent:
                continue
            path = [leaf]
            while plan.parents[path[-1]] >= 0:
                path.append(plan.parents[path[-1]])
            rows.append((p, plan.prompt, path[::-1]))

    B = len(rows)
    P = np.array([len(r[1]) for r in rows])  # (B,)
    N = np.array([len(r[2]) for r in rows])  # (B,)
    T = int((P + N).max())
    ids = np.full((B, T), pad_id, dtype=np.int64)
    pos = np.zeros((B, T), dtype=np.int64)
    keep = np.zeros((B, T), dtype=bool)
    out_col: list[np.ndarray] = [np.full(len(pl.tokens) + 1, -1) for pl in plans]
    out_rowidx: list[np.ndarray] = [np.full(len(pl.tokens) + 1, -1) for pl in plans]
    parents = np.full((B, max(int(N.max()), 1)), -1, dtype=np.int64)  # (B, Nmax) row-local parents
    for r, (p, prompt, nodes) in enumerate(rows):
        plan, n_p = plans[p], len(prompt)
        ids[r, :n_p] = prompt
        pos[r, :n_p] = np.arange(n_p)
        if out_col[p][0] < 0:
            out_col[p][0], out_rowidx[p][0] = n_p - 1, r
            keep[r, n_p - 1] = True
        local = {node: i for i, node in enumerate(nodes)}
        for i, node in enumerate(nodes):
            ids[r, n_p + i] = plan.tokens[node]
            pos[r, n_p + i] = n_p - 1 + plan.depths[node]
            parents[r, i] = local.get(plan.parents[node], -1)
            if out_col[p][node + 1] < 0:
                out_col[p][node + 1], out_rowidx[p][node + 1] = n_p + i, r
                keep[r, n_p + i] = True
    flat = np.cumsum(keep.ravel()).reshape(B, T) - 1  # (B, T) output row of each kept position
    out_row = [flat[out_rowidx[p], out_col[p]] for p in range(len(plans))]

    cols = np.arange(T)
    if tree:
        in_prompt = cols[None, :] < P[:, None]  # (B, T)
        causal = cols[None, :, None] >= cols[None, None, :]  # (1, T, T) query >= key
        visible = causal & in_prompt[:, None, :]  # (B, T, T) every query sees earlier prompt keys
        # Ancestor closure of the row-local parents: at most max-depth hops.
        n_max = parents.shape[1]
        anc = np.broadcast_to(np.eye(n_max, dtype=bool), (B, n_max, n_max)).copy()  # (B, N, N)
        cur = np.broadcast_to(np.arange(n_max), (B, n_max)).copy()  # (B, N)
        b_idx, n_idx = np.indices((B, n_max))
        while True:
            cur = np.where(cur >= 0, np.take_along_axis(parents, np.maximum(cur, 0), axis=1), -1)
            if (cur < 0).all():
                break
            hit = cur >= 0
            anc[b_idx[hit], n_idx[hit], cur[hit]] = True
        real = np.arange(n_max)[None, :] < N[:, None]  # (B, N)
        b, q, k = np.nonzero(anc & real[:, :, None] & real[:, None, :])
        visible[b, P[b] + q, P[b] + k] = True
        visible[:, cols, cols] = True  # padding attends to itself: no all-masked softmax rows
        blocked = torch.finfo(dtype).min
        mask = torch.zeros((B, 1, T, T), dtype=dtype)
        mask.masked_fill_(~torch.from_numpy(visible)[:, None], blocked)  # (B, 1, T, T)
    else:
        mask = torch.from_numpy((cols[None, :] < (P + N)[:, None]).astype(np.int64))  # (B, T)

    return _Rows(
        input_ids=torch.from_numpy(ids).to(device),
        position_ids=torch.from_numpy(pos).to(device),
        attention_mask=mask.to(device),
        keep=torch.from_numpy(keep).to(device),
        out_row=out_row,
    )


# ------------------------------------------------------------------------ fast path


@torch.inference_mode()
def score_probes(
    model,
    tokenizer,
    probes: Sequence[Probe],
    batch_size: int = 256,
    progress: Callable[[int], None] | None = None,
) -> Scores:
    """Score probes in batches: candidate ranking, gold log-probability and greedy exact match.

    Definitions and the batching scheme are in the module docstring. Works for any
    Hugging Face causal LM and its tokenizer, on the model's device and dtype; puts the
    model in eval mode and leaves it there.

    Args:
        model: a causal LM (``model(input_ids, ...).logits``).
        tokenizer: its tokenizer; ``pad_token_id`` or ``eos_token_id`` pads rows.
        probes: the probes to score.
        batch_size: probes per forward pass.
        progress: called after each batch with the number of probes it scored.

    Returns:
        `Scores`, in the order of ``probes``.

    Raises:
        ValueError: ``batch_size`` < 1, or a prompt, answer or candidate with no tokens.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    model.eval()
    n = len(probes)
    em = np.zeros(n, dtype=bool)
    rank_ok = np.zeros(n, dtype=bool)
    logprob = np.zeros(n, dtype=np.float64)
    predicted = [""] * n
    if n == 0:
        return Scores(em, rank_ok, logprob, predicted)

    device, dtype = _device_dtype(model)
    stop = stop_token_mask(tokenizer, _vocab_size(model)).to(device)  # (V,)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id or 0
    tree = _tree_masks_supported(model)

    answers = sorted({a for pr in probes for a in (*pr.candidates, pr.answer)})
    ids = dict(zip(answers, _encode(tokenizer, [" " + a for a in answers])))
    prompts = _encode(tokenizer, [pr.prompt for pr in probes])
    plans = [_plan(pr, prompt, ids) for pr, prompt in zip(probes, prompts)]
    order = sorted(range(n), key=lambda i: len(plans[i].prompt) + len(plans[i].tokens))

    for start in range(0, n, batch_size):
        batch = order[start : start + batch_size]
        bplans = [plans[i] for i in batch]
        rows = _layout(bplans, pad_id, tree, dtype, device)
        logits = _forward_rows(model, rows.input_ids, rows.position_ids, rows.attention_mask, rows.keep)  # (R, V)
        greedy = logits.argmax(-1)  # (R,)
        logp = logits.float().log_softmax(-1)  # (R, V)

        # Flatten every scored token of the batch: (output row, token, slot).
        slot_base = np.cumsum([0] + [pl.n_slots for pl in bplans])
        e_row = np.concatenate([rows.out_row[j][np.asarray(pl.score_ref) + 1] for j, pl in enumerate(bplans)])
        e_tok = np.concatenate([pl.score_tok for pl in bplans])
        e_slot = np.concatenate([np.asarray(pl.score_slot) + slot_base[j] for j, pl in enumerate(bplans)])
        row_t = torch.from_numpy(e_row).to(device)
        tok_t = torch.from_numpy(e_tok).to(device)
        token_logp = logp[row_t, tok_t].double().cpu().numpy()  # (E,)
        token_hit = (greedy[row_t] == tok_t).cpu().numpy()  # (E,)
        slot_score = np.bincount(e_slot, weights=token_logp, minlength=int(slot_base[-1]))  # (S,)
        slot_miss = np.bincount(e_slot, weights=~token_hit, minlength=int(slot_base[-1]))  # (S,)
        stop_rows = torch.from_numpy(np.array([rows.out_row[j][pl.stop_ref + 1] for j, pl in enumerate(bplans)])).to(device)
        stops = stop[greedy[stop_rows]].cpu().numpy()  # (b,)

        for j, (i, pl) in enumerate(zip(batch, bplans)):
            gold_slot = slot_base[j] + pl.n_slots - 1
            logprob[i] = slot_score[gold_slot]
            em[i] = slot_miss[gold_slot] == 0 and bool(stops[j])
            k = pl.n_slots - 1
            if k:
                best = int(np.argmax(slot_score[slot_base[j] : slot_base[j] + k]))  # first of the tied
                predicted[i] = probes[i].candidates[best]
                rank_ok[i] = best == pl.gold_index
        if progress is not None:
            progress(len(batch))
    return Scores(em, rank_ok, logprob, predicted)


# ------------------------------------------------------------------------ perplexity


@torch.inference_mode()
def perplexity(model, tokenizer, texts: Sequence[str], batch_size: int = 64) -> float:
    """Token-level perplexity: exp of the mean negative log-likelihood over all tokens.

    Each text is tokenised without special tokens; when the tokenizer has a BOS token it
    is prepended, so every token of the text is predicted (otherwise the first is only
    context). Texts are batched by length with right padding, padding masked out.

    Raises:
        ValueError: ``batch_size`` < 1, or no text has a token to predict.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    model.eval()
    device, _ = _device_dtype(model)
    bos = tokenizer.bos_token_id
    seqs = [([bos] if bos is not None else []) + s for s in _encode(tokenizer, list(texts))]
    seqs = sorted((s for s in seqs if len(s) >= 2), key=len)
    if not seqs:
        raise ValueError("perplexity needs at least one text with a token to predict")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id or 0
    total_nll, total_tokens = 0.0, 0
    for start in range(0, len(seqs), batch_size):
        chunk = seqs[start : start + batch_size]
        T = len(chunk[-1])
        ids = torch.full((len(chunk), T), pad_id, dtype=torch.long)  # (B, T)
        mask = torch.zeros((len(chunk), T), dtype=torch.long)  # (B, T)
        for r, s in enumerate(chunk):
            ids[r, : len(s)] = torch.tensor(s)
            mask[r, : len(s)] = 1
        pos = (mask.cumsum(1) - 1).clamp(min=0)  # (B, T)
        keep = mask.bool().clone()
        keep[torch.arange(len(chunk)), mask.sum(1) - 1] = False  # the last token predicts nothing
        targets = ids[:, 1:][keep[:, :-1]]  # (R,) row-major, as the kept logits
        logits = _forward_rows(model, ids.to(device), pos.to(device), mask.to(device), keep.to(device))  # (R, V)
        nll = F.cross_entropy(logits.float(), targets.to(device), reduction="sum")
        total_nll += float(nll)
        total_tokens += int(targets.numel())
    return math.exp(total_nll / total_tokens)


# ------------------------------------------------------------------------ reference path


@torch.inference_mode()
def reference_exact_match(model, tokenizer, probe: Probe) -> bool:
    """Greedy exact match the slow way: generate, cut at the first stop token, compare text."""
    model.eval()
    device, _ = _device_dtype(model)
    prompt = _encode(tokenizer, [probe.prompt])[0]
    answer = _encode(tokenizer, [" " + probe.answer])[0]
    ids = torch.tensor([prompt], device=device)  # (1, P)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        num_beams=1,
        max_new_tokens=len(answer) + 1,
        pad_token_id=pad_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    continuation = out[0, len(prompt) :].tolist()
    stop = stop_token_mask(tokenizer, _vocab_size(model))
    cut = next((i for i, t in enumerate(continuation) if t >= len(stop) or stop[t]), len(continuation))
    text = tokenizer.decode(continuation[:cut], skip_special_tokens=True)
    return normalise_answer(text) == normalise_answer(probe.answer)


@torch.inference_mode()
def _reference_logprob(model, prompt: list[int], continuation: list[int]) -> float:
    device, _ = _device_dtype(model)
    ids = torch.tensor([prompt + continuation], device=device)  # (1, T)
    logits = model(ids).logits[0, len(prompt) - 1 : -1]  # (L, V)
    targets = torch.tensor(continuation, device=device)
    return float(logits.float().log_softmax(-1).gather(1, targets[:, None]).sum())


@torch.inference_mode()
def reference_score(model, tokenizer, probe: Probe) -> tuple[bool, bool, float, str]:
    """One probe, the slow obvious way: (em, rank_ok, logprob, predicted).

    ``model.generate`` for exact match, and one forward pass per candidate for ranking;
    see the module docstring for the definitions and where this path differs from the
    fast one. For tests and benchmarks.
    """
    model.eval()
    prompt = _encode(tokenizer, [probe.prompt])[0]
    if not prompt:
        raise ValueError(f"probe {probe.id!r}: the prompt {probe.prompt!r} has no tokens")
    em = reference_exact_match(model, tokenizer, probe)
    logprob = _reference_logprob(model, prompt, _encode(tokenizer, [" " + probe.answer])[0])
    scores = [_reference_logprob(model, prompt, _encode(tokenizer, [" " + c])[0]) for c in probe.candidates]
    if not scores:
        return em, False, logprob, ""
    best = int(np.argmax(scores))  # first of the tied
    gold_index = probe.candidates.index(probe.answer) if probe.answer in probe.candidates else -1
    return em, best == gold_index, logprob, probe.candidates[best]
