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
Every token sequence whose next-token distribution is needed is a node of a prefix
tree: each prompt, each proper prefix of each candidate after it (the prompt's last
position already predicts every first token, so single-token distractors cost nothing)
and the whole gold answer (its last output is the stop check). Nodes are packed into
rows of about `ROW_TOKENS` columns, several probes to a row, and each node is fed once
per row: probes in a row share common prompt prefixes (the same subject, "Question:")
and a probe's candidates share the prompt and common answer prefixes ("Port ...").
A 4D attention mask lets a column see only its ancestors and itself, and
``position_ids`` give it its depth, so its output is exactly the output at that position
of the plain sequence ``prompt + continuation``. One forward pass per batch scores every
candidate of every probe, with no KV-cache copies and little padding (probes are sorted
by prompt, so neighbours share prefixes). Only the needed columns go through the LM head
(``logits_to_keep`` as a boolean mask), and log-probabilities are gathered as
``logit - logsumexp`` without a full log-softmax.

Attention kernels that ignore custom 4D masks (flash attention, flex attention) get the
same computation laid out as one plain causal row per root-to-leaf path of each probe's
tree, with a 2D padding mask. So does any model for which a one-time check on a few
probes finds the two layouts disagree (e.g. one that derives positions from a 2D mask).

The reference path (`reference_score`)
--------------------------------------
The obvious slow way, for one probe: ``model.generate`` greedily for
``len(answer tokens) + 1`` new tokens, cut the continuation at its first stop token,
decode, normalise (lowercase, collapse whitespace, strip surrounding punctuation and
space) and compare with the normalised answer; and one forward pass per candidate for the
ranking. The two can differ in two ways only, neither of which the synthetic world
(objects without punctuation, a word-level tokenizer) can produce: the fast path needs
the gold *tokens*, so a greedy output that spells the answer with other tokens or in
another letter case matches only in the reference; and an answer that itself contains a
stop token ("St. Ives") can match only in the fast path, since the reference cuts it there.
A whitespace-only token that opens the continuation (a byte-level BPE's bare "Ġ" before an
unmerged word) is part of the answer in both (tests/model/test_architectures.py checks
the two paths agree on seven architectures with such a tokenizer).

Knowledge-weighted decoding
---------------------------
A probe whose ``meta`` names answers a knowledge source supports (``meta["support"]``, a
function of the prompt alone; set by KCTS-style methods, ckl.methods.retrieve.kcts) is
scored as if decoding were guided by them: at every node of its trie, each token that
continues a supported answer (and, where a supported answer is complete, each stop token)
gains ``meta["support_weight"]`` in the logits; with ``meta["support_hard"]`` every other
token of such a node is ruled out. EM, ranking and log-probabilities are all read from the
guided logits, in the same single pass. The reference path does not implement it.
"""

from __future__ import annotations

import inspect
import math
import re
import string
import warnings
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ckl.data.facts import Probe
from ckl.data.stream import make_probes

__all__ = [
    "Scores",
    "score_probes",
    "ProbeScorer",
    "perplexity",
    "reference_score",
    "reference_exact_match",
    "stop_token_mask",
    "normalise_answer",
    "answer_text",
    "bias_logits",
    "supported_next",
    "SUPPORT",
    "SUPPORT_WEIGHT",
    "SUPPORT_HARD",
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


def vocab_size(model) -> int:
    """The number of logits the model gives per position."""
    return _vocab_size(model)


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
            if logits.shape[:2] == keep.shape:  # logits_to_keep ignored
                return logits[keep]  # (R, V)
        except (TypeError, IndexError, RuntimeError):
            pass  # an older model whose logits_to_keep takes no boolean mask
    logits = model(
        input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask, use_cache=False
    ).logits  # (B, T, V)
    return logits[keep]  # (R, V)


# ------------------------------------------------------------------------ planning

# Columns per packed row. Rows hold several probes' tries side by side; longer rows share
# more prompt prefixes and pad less, but attention cost grows with the row length. On
# the default model (CPU) throughput is best, and nearly flat, from ~64 to ~128.
ROW_TOKENS = 96


@dataclass
class _Plan:
    """One probe's answer trie and what to read from it.

    Node ``n`` stands for an answer prefix; it is fed token ``tokens[n]`` and its output
    predicts the token after that prefix. Reference ``-1`` is the prompt's last token
    (the empty prefix). Parents precede their children.
    """

    prompt: list[int]
    tokens: list[int]
    parents: list[int]
    score_ref: list[int]  # for every scored token: the node whose output predicts it
    score_tok: list[int]
    score_slot: list[int]  # 0..K-1 the candidates, K the gold
    n_slots: int
    gold_index: int  # first index of the gold in the candidates, -1 when absent
    stop_ref: int  # the node after the whole gold answer: its output is the stop check
    # Knowledge-weighted decoding (`Probe.meta["support"]`): at node `bias_ref[i]` token
    # `bias_tok[i]` continues a supported answer; at the nodes `bias_stop` a supported
    # answer is complete (its stop tokens are supported). `bias` is added to supported
    # logits; `hard` also rules every other token out at the nodes that have one.
    bias_ref: list[int] = field(default_factory=list)
    bias_tok: list[int] = field(default_factory=list)
    bias_stop: list[int] = field(default_factory=list)
    bias: float = 0.0
    hard: bool = False


SUPPORT = "support"  # Probe.meta key: answers a knowledge source supports (KCTS-style decoding)
SUPPORT_WEIGHT = "support_weight"  # Probe.meta key: logit bonus of their tokens
SUPPORT_HARD = "support_hard"  # Probe.meta key: true = only supported tokens where any is


def _support(plan: _Plan, supported: Sequence[list[int]]) -> tuple[list[int], list[int], list[int]]:
    """(bias_ref, bias_tok, bias_stop) of `supported` token sequences on `plan`'s trie: a
    node whose answer prefix begins a supported sequence supports its next token, and
    one that spells a whole supported sequence supports stopping."""
    prefix_of: dict[tuple[int, ...], int] = {(): -1}
    prefixes: list[tuple[int, ...]] = []
    for tok, parent in zip(plan.tokens, plan.parents):
        prefixes.append((prefixes[parent] if parent >= 0 else ()) + (tok,))
        prefix_of[prefixes[-1]] = len(prefixes) - 1
    refs, toks, stops = [], [], []
    for seq in supported:
        for k in range(len(seq) + 1):
            node = prefix_of.get(tuple(seq[:k]))
            if node is None:
                break  # the trie does not follow this answer further
            if k < len(seq):
                refs.append(node)
                toks.append(seq[k])
            else:
                stops.append(node)
    return refs, toks, stops


def _plan(probe: Probe, prompt: list[int], ids: dict[str, list[int]]) -> _Plan:
    if not prompt:
        raise ValueError(f"probe {probe.id!r}: the prompt {probe.prompt!r} has no tokens")
    tokens: list[int] = []
    parents: list[int] = []
    children: dict[tuple[int, int], int] = {}
    score_ref: list[int] = []
    score_tok: list[int] = []
    score_slot: list[int] = []

    def walk(seq: list[int], n_nodes: int) -> list[int]:
        refs = [-1]
        for tok in seq[:n_nodes]:
            node = children.get((refs[-1], tok))
            if node is None:
                node = children[(refs[-1], tok)] = len(tokens)
                tokens.append(tok)
                parents.append(refs[-1])
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
    plan = _Plan(prompt, tokens, parents, score_ref, score_tok, score_slot, len(texts), gold_index, stop_ref)
    supported = probe.meta.get(SUPPORT) if probe.meta else None
    if supported is not None:
        plan.bias_ref, plan.bias_tok, plan.bias_stop = _support(plan, [ids[s] for s in supported if ids.get(s)])
        plan.bias, plan.hard = float(probe.meta.get(SUPPORT_WEIGHT, 0.0)), bool(probe.meta.get(SUPPORT_HARD, False))
    return plan


# ------------------------------------------------------------------------ row layout


@dataclass
class _Row:
    """One row of a forward pass: a forest of token prefixes, each fed once.

    A column stands for a token sequence (its ancestors' tokens, then its own); two probes
    that need the same sequence (a shared prompt prefix, a shared answer prefix) share
    the column, whose output is the same for both.
    """

    tokens: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)  # column of the parent, -1 for a first token
    positions: list[int] = field(default_factory=list)
    children: dict[tuple[int, int], int] = field(default_factory=dict)

    def add(self, parent: int, token: int) -> int:
        col = self.children.get((parent, token))
        if col is None:
            col = self.children[(parent, token)] = len(self.tokens)
            self.tokens.append(token)
            self.parents.append(parent)
            self.positions.append(self.positions[parent] + 1 if parent >= 0 else 0)
        return col

    def missing(self, plan: _Plan) -> int:
        """How many columns `insert(plan)` would add."""
        cur = -1
        for k, tok in enumerate(plan.prompt):
            nxt = self.children.get((cur, tok))
            if nxt is None:
                return len(plan.prompt) - k + len(plan.tokens)
            cur = nxt
        cols: list[int | None] = [cur]
        for tok, parent in zip(plan.tokens, plan.parents):
            col = cols[parent + 1]
            cols.append(None if col is None else self.children.get((col, tok)))
        return sum(c is None for c in cols)

    def insert(self, plan: _Plan, nodes: Sequence[int] | None = None) -> list[int]:
        """Add the prompt and answer nodes (all, or only `nodes`, a root-to-leaf path);
        returns the column of each reference -1, 0, 1, ... (-1 where not inserted)."""
        cur = -1
        for tok in plan.prompt:
            cur = self.add(cur, tok)
        cols = [cur] + [-1] * len(plan.tokens)
        for n in range(len(plan.tokens)) if nodes is None else nodes:
            cols[n + 1] = self.add(cols[plan.parents[n] + 1], plan.tokens[n])
        return cols


def _tree_rows(plans: Sequence[_Plan]) -> tuple[list[_Row], list[tuple[np.ndarray, np.ndarray]]]:
    """Pack whole probes into rows of about ROW_TOKENS columns (next fit, in the given order)."""
    rows = [_Row()]
    where = []
    for plan in plans:
        if rows[-1].tokens and len(rows[-1].tokens) + rows[-1].missing(plan) > ROW_TOKENS:
            rows.append(_Row())
        cols = rows[-1].insert(plan)
        where.append((np.full(len(cols), len(rows) - 1), np.asarray(cols)))
    return rows, where


def _path_rows(plans: Sequence[_Plan]) -> tuple[list[_Row], list[tuple[np.ndarray, np.ndarray]]]:
    """One plain causal row per root-to-leaf path of each probe's trie."""
    rows: list[_Row] = []
    where = []
    for plan in plans:
        row_of = np.full(len(plan.tokens) + 1, -1)
        col_of = np.full(len(plan.tokens) + 1, -1)
        is_parent = set(plan.parents)
        for leaf in (n for n in range(len(plan.tokens)) if n not in is_parent):
            path = [leaf]
            while plan.parents[path[-1]] >= 0:
                path.append(plan.parents[path[-1]])
            rows.append(_Row())
            cols = np.asarray(rows[-1].insert(plan, path[::-1]))
            new = (row_of < 0) & (cols >= 0)  # a node on several paths is read from the first
            row_of[new], col_of[new] = len(rows) - 1, cols[new]
        where.append((row_of, col_of))
    return rows, where


@dataclass
class _Batch:
    """Rows as tensors for one forward pass."""

    input_ids: torch.Tensor  # (B, T)
    position_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, 1, T, T) float for tree rows, (B, T) long for path rows
    keep: torch.Tensor  # (B, T) bool: the columns whose logits are read
    out_row: list[np.ndarray]  # per probe: the logits row of each reference -1, 0, 1, ...


def _tensors(rows: Sequence[_Row], where, tree: bool, pad_id: int, dtype: torch.dtype, device) -> _Batch:
    B, T = len(rows), max(len(r.tokens) for r in rows)
    ids = np.full((B, T), pad_id, dtype=np.int64)
    pos = np.zeros((B, T), dtype=np.int64)
    parents = np.full((B, T), -1, dtype=np.int64)  # padding is its own root
    for r, row in enumerate(rows):
        ids[r, : len(row.tokens)] = row.tokens
        pos[r, : len(row.tokens)] = row.positions
        parents[r, : len(row.tokens)] = row.parents
    keep = np.zeros((B, T), dtype=bool)
    for row_of, col_of in where:
        keep[row_of, col_of] = True
    flat = np.cumsum(keep.ravel()) - 1  # (B*T,) logits row of each kept column
    out_row = [flat[row_of * T + col_of] for row_of, col_of in where]

    if tree:
        # A column sees itself and its ancestors: closure of `parents`, one hop per depth.
        visible = np.broadcast_to(np.eye(T, dtype=bool), (B, T, T)).copy()  # (B, T, T) query, key
        b_idx, q_idx = np.indices((B, T))
        cur = parents
        while (hit := cur >= 0).any():
            visible[b_idx[hit], q_idx[hit], cur[hit]] = True
            cur = np.where(hit, np.take_along_axis(parents, np.maximum(cur, 0), axis=1), -1)
        mask = torch.zeros((B, 1, T, T), dtype=dtype)
        mask.masked_fill_(~torch.from_numpy(visible)[:, None], torch.finfo(dtype).min)  # (B, 1, T, T)
    else:
        lengths = np.array([len(r.tokens) for r in rows])
        mask = torch.from_numpy((np.arange(T)[None, :] < lengths[:, None]).astype(np.int64))  # (B, T)

    return _Batch(
        input_ids=torch.from_numpy(ids).to(device),
        position_ids=torch.from_numpy(pos).to(device),
        attention_mask=mask.to(device),
        keep=torch.from_numpy(keep).to(device),
        out_row=out_row,
    )


# ------------------------------------------------------------------------ fast path


def _score_batch(model, plans: Sequence[_Plan], tree: bool, pad_id: int, stop: torch.Tensor):
    """One forward pass over `plans`. Returns (slot_score, slot_miss, stops, slot_base):
    per slot the summed log-probability and the number of tokens greedy decoding misses,
    per probe whether the greedy token after the gold is a stop token, and each probe's
    first slot."""
    device, dtype = _device_dtype(model)
    rows, where = (_tree_rows if tree else _path_rows)(plans)
    batch = _tensors(rows, where, tree, pad_id, dtype, device)
    logits = _forward_rows(model, batch.input_ids, batch.position_ids, batch.attention_mask, batch.keep)  # (R, V)
    if any(pl.bias or pl.hard for pl in plans):
        _apply_support(logits, plans, batch.out_row, stop)
    greedy = logits.argmax(-1)  # (R,)
    log_z = torch.logsumexp(logits.float(), -1)  # (R,) log-softmax is logits - log_z; only gathered entries are needed

    # Every scored token of the batch, flattened: (logits row, token, slot).
    slot_base = np.cumsum([0] + [pl.n_slots for pl in plans])
    e_row = np.concatenate([batch.out_row[j][np.asarray(pl.score_ref) + 1] for j, pl in enumerate(plans)])
    e_tok = np.concatenate([pl.score_tok for pl in plans])
    e_slot = np.concatenate([np.asarray(pl.score_slot) + slot_base[j] for j, pl in enumerate(plans)])
    row_t = torch.from_numpy(e_row).to(device)
    tok_t = torch.from_numpy(e_tok).to(device)
    token_logp = (logits[row_t, tok_t].float() - log_z[row_t]).double().cpu().numpy()  # (E,)
    token_miss = (greedy[row_t] != tok_t).cpu().numpy()  # (E,)
    slot_score = np.bincount(e_slot, weights=token_logp, minlength=int(slot_base[-1]))  # (S,)
    slot_miss = np.bincount(e_slot, weights=token_miss, minlength=int(slot_base[-1]))  # (S,)
    stop_rows = torch.from_numpy(np.array([batch.out_row[j][pl.stop_ref + 1] for j, pl in enumerate(plans)])).to(device)
    stops = stop[greedy[stop_rows]].cpu().numpy()  # (b,)
    return slot_score, slot_miss, stops, slot_base


def _apply_support(logits: torch.Tensor, plans: Sequence[_Plan], out_row: list[np.ndarray], stop: torch.Tensor) -> None:
    """Knowledge-weighted decoding, in place on the kept logits (R, V): every supported
    next token (and, where a supported answer is complete, every stop token) gains its
    probe's `bias`; with `hard`, the other tokens of a row that has a supported one are
    ruled out. One scatter per batch, however many probes carry support."""
    # Support is a function of the prompt (what `SUPPORT` promises), so a column that tree
    # rows share between probes (one prompt, one answer prefix) gets one and the same bias.
    rows, toks, bias, stop_rows, stop_bias, hard_rows = [], [], [], [], [], []
    for j, pl in enumerate(plans):
        if not (pl.bias_ref or pl.bias_stop):
            continue
        r = out_row[j][np.asarray(pl.bias_ref, dtype=np.int64) + 1]
        s = out_row[j][np.asarray(pl.bias_stop, dtype=np.int64) + 1]
        rows.append(r), toks.append(np.asarray(pl.bias_tok, dtype=np.int64)), bias.append(np.full(len(r), pl.bias))
        stop_rows.append(s), stop_bias.append(np.full(len(s), pl.bias))
        if pl.hard:
            hard_rows += [r, s]
    if rows:
        bias_logits(logits, np.concatenate(rows), np.concatenate(toks), np.concatenate(bias), np.concatenate(stop_rows),
                    np.concatenate(stop_bias), np.concatenate(hard_rows) if hard_rows else np.zeros(0, dtype=np.int64), stop)


def bias_logits(logits: torch.Tensor, rows: np.ndarray, toks: np.ndarray, bias: np.ndarray, stop_rows: np.ndarray,
                stop_bias: np.ndarray, hard_rows: np.ndarray, stop: torch.Tensor) -> None:
    """Knowledge-weighted decoding's one scatter, in place on `logits` (R, V): token
    `toks[i]` of row `rows[i]` gains `bias[i]`; every stop token of row `stop_rows[i]`
    gains `stop_bias[i]`; in the `hard_rows` every token not so supported is ruled out.
    Shared by the scorer's teacher-forced pass and free greedy generation
    (ckl.evaluate.extraction.greedy_continuations), so both decode the same way."""
    if not len(rows) and not len(stop_rows):
        return
    device = logits.device
    all_rows = np.concatenate([rows, stop_rows]).astype(np.int64)
    used = np.unique(all_rows)  # (U,) the logits rows that have a supported token; only they are touched
    local = lambda r: torch.from_numpy(np.searchsorted(used, np.asarray(r, dtype=np.int64))).to(device)  # noqa: E731  row -> its index in `used`
    r_u, s_u = local(rows), local(stop_rows)
    t_t = torch.from_numpy(np.asarray(toks, dtype=np.int64)).to(device)
    stop_ids = stop.to(device).nonzero().flatten()  # (S,)
    allowed = torch.zeros((len(used), logits.shape[1]), dtype=torch.bool, device=device)  # (U, V)
    allowed[r_u, t_t] = True
    allowed[s_u[:, None], stop_ids[None, :]] = True
    bonus = torch.zeros(len(used), dtype=logits.dtype, device=device)  # (U,) per row: its probe's bias
    bonus[r_u] = torch.from_numpy(np.asarray(bias, dtype=np.float64)).to(device, logits.dtype)
    bonus[s_u] = torch.from_numpy(np.asarray(stop_bias, dtype=np.float64)).to(device, logits.dtype)
    used_t = torch.from_numpy(used).to(device)
    block = logits[used_t] + allowed * bonus[:, None]  # (U, V)
    if len(hard_rows):
        hard = torch.zeros(len(used), dtype=torch.bool, device=device)
        hard[local(hard_rows)] = True
        block = block.masked_fill(hard[:, None] & ~allowed, torch.finfo(logits.dtype).min)
    logits[used_t] = block


def supported_next(so_far: Sequence[int], supported: Sequence[Sequence[int]]) -> tuple[list[int], bool]:
    """After the answer tokens `so_far`, the next tokens that continue a `supported` token
    sequence, and whether one is complete (its stop tokens are supported): the rule the
    scorer's trie applies (`_support`), for one decoding step."""
    k = len(so_far)
    nxt = sorted({s[k] for s in supported if len(s) > k and list(s[:k]) == list(so_far)})
    return nxt, any(list(s) == list(so_far) for s in supported)


_TREE_CHECKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _tree_layout_works(model, plans: Sequence[_Plan], pad_id: int, stop: torch.Tensor) -> bool:
    """Whether tree rows give this model's plain causal results, checked once per model.

    Tree rows need a model whose attention honours a custom 4D mask and whose positions
    come from ``position_ids``; an architecture that derives them from a 2D mask (ALiBi
    models such as BLOOM) would silently score wrong, so a few probes are scored both
    ways first and the plain path rows are used if the two disagree.
    """
    if not _tree_masks_supported(model):
        return False
    if model not in _TREE_CHECKED:
        sample = list(plans[:4])
        tree = _score_batch(model, sample, True, pad_id, stop)[0]
        path = _score_batch(model, sample, False, pad_id, stop)[0]
        tol = 1e-3 if _device_dtype(model)[1] in (torch.float32, torch.float64) else 5e-2
        ok = bool(np.allclose(tree, path, atol=tol, rtol=tol))
        if not ok:
            warnings.warn(
                f"{type(model).__name__}: packed tree rows disagree with plain rows; scoring with plain rows (slower)",
                RuntimeWarning, stacklevel=3,
            )
        _TREE_CHECKED[model] = ok
    return _TREE_CHECKED[model]


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
    model in eval mode and leaves it there. To score the same probes many times (an
    in-stage curve), make a `ProbeScorer` once: it tokenises and plans them once.

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
    return ProbeScorer(tokenizer, probes, batch_size)(model, progress)


class ProbeScorer:
    """`score_probes` for a fixed list of probes: tokenised and planned once, then scored
    with any model of the tokenizer, as often as needed (`scorer(model)`).

    Raises:
        ValueError: ``batch_size`` < 1, or a prompt, answer or candidate with no tokens.
    """

    def __init__(self, tokenizer, probes: Sequence[Probe], batch_size: int = 256) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
        self.tokenizer, self.probes, self.batch_size = tokenizer, list(probes), batch_size
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id or 0
        answers = sorted({a for pr in self.probes for a in (*pr.candidates, pr.answer, *((pr.meta or {}).get(SUPPORT) or ()))})
        ids = dict(zip(answers, _encode(tokenizer, [" " + a for a in answers])))
        prompts = _encode(tokenizer, [pr.prompt for pr in self.probes])
        self.plans = [_plan(pr, prompt, ids) for pr, prompt in zip(self.probes, prompts)]
        n = len(self.plans)
        self._orders = {  # tree rows: neighbours in prompt order share prompt prefixes; path rows: similar lengths pad little
            True: sorted(range(n), key=lambda i: self.plans[i].prompt),
            False: sorted(range(n), key=lambda i: len(self.plans[i].prompt) + len(self.plans[i].tokens)),
        }
        self._stop: dict[tuple[int, str], torch.Tensor] = {}

    @torch.inference_mode()
    def __call__(self, model, progress: Callable[[int], None] | None = None) -> Scores:
        model.eval()
        n = len(self.probes)
        em = np.zeros(n, dtype=bool)
        rank_ok = np.zeros(n, dtype=bool)
        logprob = np.zeros(n, dtype=np.float64)
        predicted = [""] * n
        if n == 0:
            return Scores(em, rank_ok, logprob, predicted)
        device, _ = _device_dtype(model)
        key = (_vocab_size(model), str(device))
        if key not in self._stop:
            self._stop[key] = stop_token_mask(self.tokenizer, key[0]).to(device)  # (V,)
        stop, plans = self._stop[key], self.plans
        tree = _tree_layout_works(model, plans, self.pad_id, stop)
        order = self._orders[tree]
        for start in range(0, n, self.batch_size):
            batch = order[start : start + self.batch_size]
            bplans = [plans[i] for i in batch]
            slot_score, slot_miss, stops, slot_base = _score_batch(model, bplans, tree, self.pad_id, stop)
            for j, (i, pl) in enumerate(zip(batch, bplans)):
                gold_slot = slot_base[j] + pl.n_slots - 1
                logprob[i] = slot_score[gold_slot]
                em[i] = slot_miss[gold_slot] == 0 and bool(stops[j])
                k = pl.n_slots - 1
                if k:
                    best = int(np.argmax(slot_score[slot_base[j] : slot_base[j] + k]))  # first of the tied
                    predicted[i] = self.probes[i].candidates[best]
                    rank_ok[i] = best == pl.gold_index
            if progress is not None:
                progress(len(batch))
        return Scores(em, rank_ok, logprob, predicted)


# ------------------------------------------------------------------------ perplexity


def perplexity_from_nll(nll_sum: float, tokens: int) -> float | None:
    """exp(total negative log-likelihood / tokens); None without tokens. The one
    perplexity formula: held-out text (`perplexity`, the runner's sharded sums) and the
    forgotten answers of unlearning (ckl.evaluate.extraction) use it."""
    if tokens <= 0:
        return None
    return math.exp(nll_sum / tokens)


def perplexity(model, tokenizer, texts: Sequence[str], batch_size: int = 64) -> float:
    """Token-level perplexity: exp of the mean negative log-likelihood over all tokens
    (see `negative_log_likelihood`).

    Raises:
        ValueError: ``batch_size`` < 1, or no text has a token to predict.
    """
    value = perplexity_from_nll(*negative_log_likelihood(model, tokenizer, texts, batch_size))
    if value is None:
        raise ValueError("perplexity needs at least one text with a token to predict")
    return value


@torch.inference_mode()
def negative_log_likelihood(model, tokenizer, texts: Sequence[str], batch_size: int = 64, max_length: int | None = None) -> tuple[float, int]:
    """Summed negative log-likelihood of every token of `texts` and the number of tokens
    predicted (sums, so that shares of the texts scored apart add up).

    Each text is tokenised without special tokens; when the tokenizer has a BOS token it
    is prepended, so every token of the text is predicted (otherwise the first is only
    context). Texts are batched by length with right padding, padding masked out. A text
    longer than `max_length` tokens (a corpus document beyond the context window) is cut
    into consecutive windows of at most that many tokens, each scored on its own (its
    first token only context: no striding); without `max_length` each text must fit.

    Raises:
        ValueError: ``batch_size`` or ``max_length`` < 2 (< 1 for batch_size).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    if max_length is not None and max_length < 2:
        raise ValueError(f"max_length must be >= 2 (a window predicts its tokens after the first), got {max_length!r}")
    if not texts:
        return 0.0, 0
    model.eval()
    device, _ = _device_dtype(model)
    bos = tokenizer.bos_token_id
    seqs = [([bos] if bos is not None else []) + s for s in _encode(tokenizer, list(texts))]
    if max_length is not None:
        seqs = [s[i : i + max_length] for s in seqs for i in range(0, len(s), max_length)]
    seqs = sorted((s for s in seqs if len(s) >= 2), key=len)
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
    return total_nll, total_tokens


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
    return answer_text(tokenizer, continuation, stop_token_mask(tokenizer, _vocab_size(model))) == normalise_answer(probe.answer)


def answer_text(tokenizer, continuation: Sequence[int], stop: torch.Tensor) -> str:
    """The normalised answer a greedy `continuation` (token ids after the prompt) gives: cut
    at the first stop token, as exact match reads it."""
    # whitespace-only tokens that open the continuation (a byte-level BPE's bare "Ġ" before an
    # unmerged word: " journalist" as " " "j" "our" ...) start the answer, they do not end it
    lead = 0
    while lead < len(continuation) and continuation[lead] != tokenizer.eos_token_id and tokenizer.decode([continuation[lead]]).isspace():
        lead += 1
    cut = next((i for i in range(lead, len(continuation)) if continuation[i] >= len(stop) or stop[continuation[i]]), len(continuation))
    return normalise_answer(tokenizer.decode(list(continuation[:cut]), skip_special_tokens=True))


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


def known_fraction(tokenizer, relations, batch_size: int = 256):
    """known(model, facts): the fraction of `facts` whose statement probe the model answers
    with greedy exact match (the measure of `train.until`)."""
    def known(model, facts) -> float:
        probes = make_probes(facts, relations, "until", 0, "learn", ("statement",), 2)
        return float(score_probes(model, tokenizer, probes, batch_size=batch_size).em.mean()) if probes else 1.0

    return known
