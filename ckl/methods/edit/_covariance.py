"""The key second moment C = E[k k^T] of a layer, on the base model's own training text.

ROME and MEMIT (Meng et al. 2022, 2023) solve for weight updates that change the value
of one key while disturbing the values of all other keys as little as possible; "other
keys" are summarised by their uncentred second moment C, which the papers estimate on
Wikipedia text. Here the text is what the base model was trained on: the stream's base
facts rendered as training documents plus its general text (`covariance_texts`).

C costs a pass over the text, so it is cached on disk next to the model, in
`<model_dir>/.ckl_cache/`, as safetensors keyed by a hash of the model's weights and
config, the layer, the number of text samples and a hash of the texts: computed once per
(model, layer, corpus), read back afterwards.
"""

from __future__ import annotations

import hashlib
import os
import random
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ckl.model.layers import key_size, mlp_output_projection, token_view
from ckl.data.facts import Fact, Relation
from ckl.data.stream import render_documents

CACHE_DIR = ".ckl_cache"
computed = 0  # how many second moments this process computed (not read from the cache)
_fingerprints: dict[tuple, str] = {}


def covariance_texts(base: Sequence[Fact], relations: dict[str, Relation], general: Sequence[str], samples: int, seed: int = 0, qa_subjects: frozenset[str] | None = None) -> list[str]:
    """Up to `samples` training texts of the base model: base-fact documents (rendered as
    in pretraining) and general sentences, shuffled deterministically."""
    rng = random.Random(f"ckl.covariance/{seed}")
    texts = render_documents(base, relations, rng, qa_subjects=qa_subjects) + list(general)
    rng.shuffle(texts)
    return texts[:samples]


def model_fingerprint(model_dir: str | Path) -> str:
    """SHA-1 of a model directory's config.json and weight files (memoised per process
    by path, size and modification time, so a large model is hashed once)."""
    d = Path(model_dir)
    files = sorted([d / "config.json", *d.glob("*.safetensors")])
    key = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.exists())
    if key not in _fingerprints:
        digest = hashlib.sha1()
        for f in files:
            if f.exists():
                digest.update(f.name.encode())
                with open(f, "rb") as handle:
                    for block in iter(lambda: handle.read(1 << 24), b""):
                        digest.update(block)
        _fingerprints[key] = digest.hexdigest()
    return _fingerprints[key]


def cache_path(model_dir: str | Path, layer: int, texts: Sequence[str]) -> Path:
    text_hash = hashlib.sha1("\n".join(texts).encode()).hexdigest()[:10]
    name = f"keys-{model_fingerprint(model_dir)[:16]}-layer{layer}-n{len(texts)}-{text_hash}.safetensors"
    return Path(model_dir) / CACHE_DIR / name


@torch.no_grad()
def input_second_moments(
    model: nn.Module, tokenizer, modules: dict[str, nn.Module], texts: Sequence[str], batch_size: int = 32,
    progress: Callable[[int, int], None] | None = None, forward: Callable | None = None,
) -> tuple[dict[str, torch.Tensor], int]:
    """E[x x^T] of the input x of every module in `modules`, over every (unpadded) token of
    `texts`, in one pass: {name: (d, d) float32 on the CPU} (accumulated in float64) and
    the number of tokens. `forward(input_ids=..., attention_mask=...)` runs the model
    (default: `model` itself; the editors pass the body without the LM head)."""
    device = next(model.parameters()).device
    totals: dict[str, torch.Tensor] = {}
    state: dict[str, torch.Tensor] = {}
    count = 0

    def grab(name, mod, args):
        keys = token_view(args[0], state["mask"].shape[1])[state["mask"]].double()  # (tokens, d)
        if name not in totals:
            totals[name] = torch.zeros(keys.shape[1], keys.shape[1], dtype=torch.float64, device=device)
        totals[name].addmm_(keys.T, keys)

    limit = getattr(getattr(model, "config", None), "n_positions", None) or getattr(model.config, "max_position_embeddings", 1024)
    handles = [m.register_forward_pre_hook(lambda mod, args, name=name: grab(name, mod, args)) for name, m in modules.items()]
    run = forward or model
    try:
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths together: less padding
        for start in range(0, len(order), batch_size):
            chunk = [texts[i] for i in order[start : start + batch_size]]
            enc = tokenizer(chunk, add_special_tokens=False, padding=True, truncation=True, max_length=limit, return_tensors="pt")
            mask = enc["attention_mask"].bool().to(device)
            state["mask"] = mask
            count += int(mask.sum())
            run(input_ids=enc["input_ids"].to(device), attention_mask=enc["attention_mask"].to(device))
            if progress:
                progress(min(start + batch_size, len(texts)), len(texts))
    finally:
        for h in handles:
            h.remove()
    return {name: (t / max(count, 1)).float().cpu() for name, t in totals.items()}, count


def compute_second_moment(
    model: nn.Module, tokenizer, layer: int, texts: Sequence[str], batch_size: int = 32,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """E[k k^T] over every token of `texts` at `layer`'s MLP output projection input.

    Returns:
        (d, d) float32, d the key width. Accumulated in float64.
    """
    global computed
    module = mlp_output_projection(model, layer)
    moments, _ = input_second_moments(model, tokenizer, {"keys": module}, texts, batch_size, progress, forward=model.base_model)
    computed += 1
    d = key_size(module)
    return moments.get("keys", torch.zeros(d, d))


def second_moment(
    model: nn.Module, tokenizer, layer: int, texts: Sequence[str], model_dir: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """C for `layer`, read from `model_dir`'s cache or computed (and cached when the
    directory is writable). Without `model_dir` nothing is cached.

    `model` must be the model whose weights are in `model_dir` (the base model): the
    cache is keyed by the directory's weights, not by the object passed in.
    """
    if model_dir is None:
        return compute_second_moment(model, tokenizer, layer, texts, progress=progress)
    path = cache_path(model_dir, layer, texts)
    if path.exists():
        return load_file(str(path))["second_moment"]
    moment = compute_second_moment(model, tokenizer, layer, texts, progress=progress)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".safetensors")
        os.close(fd)
        save_file({"second_moment": moment.contiguous()}, tmp, metadata={"layer": str(layer), "samples": str(len(texts))})
        os.replace(tmp, path)
    except OSError:  # a read-only model directory: the statistic is still correct, just not cached
        pass
    return moment


class KeyStatistics:
    """The second moments an editor uses, one per layer, always of the *base* model.

    At a run's first stage the model handed to the editor is the base model, so C comes
    from it (or from the cache next to `ctx.model_dir`). After a resume the model in hand
    is already edited; then C is read from the cache, or recomputed from the base model
    loaded from `ctx.model_dir`, never from the edited weights.
    """

    def __init__(self, samples: int):
        self.samples = samples
        self.moments: dict[int, torch.Tensor] = {}
        self.model_is_base = True  # set False once the editor has changed the model

    def get(self, model: nn.Module, tokenizer, layer: int, ctx) -> torch.Tensor:
        if layer in self.moments:
            return self.moments[layer]
        texts = covariance_texts(ctx.base, ctx.relations, tuple(ctx.general_text) + tuple(ctx.background), self.samples, qa_subjects=ctx.qa_subjects)
        if not texts:
            raise ValueError("the key second moment needs text: the stream has no base facts and no general text")
        model_dir = getattr(ctx, "model_dir", None)
        source = model
        if not self.model_is_base and model_dir is not None and not cache_path(model_dir, layer, texts).exists():
            from ckl.model import lm

            source, _ = lm.load(model_dir)
            source.to(next(model.parameters()).device)
        self.moments[layer] = second_moment(source, tokenizer, layer, texts, model_dir=model_dir)
        return self.moments[layer]


def solve(moment: torch.Tensor, rhs: torch.Tensor, ridge: float = 1e-6) -> torch.Tensor:
    """moment^-1 @ rhs by a linear solve (no explicit inverse), in float64, with a ridge
    of `ridge` x the mean eigenvalue so that never-active key directions stay solvable."""
    m = moment.double()
    m = m + ridge * m.diagonal().mean() * torch.eye(m.shape[0], dtype=m.dtype, device=m.device)
    return torch.linalg.solve(m, rhs.double().to(m.device)).float()
