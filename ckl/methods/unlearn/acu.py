"""ACU: analytic continual unlearning, exact by construction (Tang et al. 2025, "ACU:
Analytic Continual Unlearning for Efficient and Exact Forgetting with Privacy
Preservation"; its analytic learner is ACIL's, Zhuang et al. 2022, "ACIL: Analytic
Class-Incremental Learning with Absolute Memorization and Privacy Protection").

The transformer is frozen. Its output head is replaced (through a forward hook; no weight
changes) by a ridge-regression head over features of the hidden state that feeds the head:

    phi(h) = [h, gelu(h B)]            B: a fixed random "buffer layer", d x `buffer`
    W = (Phi^T Phi + ridge * I)^-1 Phi^T Y,   logits = sharpness * phi(h) W

with one row per position of the training texts (Y: the one-hot next token). The method
keeps the two sums A = Phi^T Phi and Q = Phi^T Y (in float64). Teaching a fact adds the
rows of its texts to both; forgetting one subtracts exactly those rows, so the head after
a forget request *is* the head fit without the fact, to float tolerance, and the
forgotten data is not needed, only recomputed from the fact (the paper's point: no
retraining, no access to the rest of the data). tests/methods/unlearn/test_acu.py checks
that equality. The rows of a fact are all of its training texts (`fact_texts`: every
statement template, and every question form for subjects whose questions are trained),
each encoded alone, so the same fact always gives the same rows. An update removes the
old object's rows and adds the new object's.

At the first stage the head is fit on what the base model read: the world's general and
background text (rows that are never removed) and every fact of K0 (removable like any
other).

What "exact" covers, said plainly: the head is exactly the one never fit on the removed
facts. The frozen transformer was pretrained on K0, so for a K0 fact its hidden states may
still carry the answer, and a head fit on the other facts may still read it out; the
forget cohort's accuracy measures how much. For facts taught during the stream (the
transformer never saw them) the guarantee is the whole story.

Deviations from the paper: the paper classifies images (one row per sample, a class
label as target); here every position of every text is a row and the next token is the
target. The paper keeps the inverse of A and updates it recursively (Woodbury); this
keeps A itself and solves once per stage (a Cholesky solve of a `D x D` system, D = d +
`buffer`): the same head, numerically steadier, and a removal is a plain subtraction. The
features include h itself beside the buffer layer's (so the head can represent the base
model's own linear head), and the head's outputs, which approximate probabilities, are
scaled by `sharpness` to serve as logits.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ckl.core.checks import ConfigError, check_count, check_number
from ckl.data.facts import Fact
from ckl.data.stream import Change, fact_texts
from ckl.methods.base import ApplyStats, Method, StageContext, register_method
from ckl.model.layers import blocks

FIXED = ""  # the entry of rows that are never removed (general and background text)


@dataclass
class AcuConfig:
    buffer: int = field(default=2048, metadata={"help": "width of the random buffer layer whose features (with the hidden state's) the head reads; 0 = the hidden state only"})
    ridge: float = field(default=1.0, metadata={"help": "ridge penalty of the least-squares head (> 0)"})
    sharpness: float = field(default=20.0, metadata={"help": "scale from the head's outputs (about probabilities) to logits"})
    layer: int | None = field(default=None, metadata={"help": "read features from the output of this block (0 = the first) instead of the head's input; null = the head's input"})
    batch_size: int = field(default=128, metadata={"help": "texts per forward pass when computing features"})

    def __post_init__(self) -> None:
        check_count(self.buffer, "buffer", low=0)
        check_number(self.ridge, "ridge", low=0, low_open=True)
        check_number(self.sharpness, "sharpness", low=0, low_open=True)
        check_count(self.batch_size, "batch_size")
        if self.layer is not None:
            check_count(self.layer, "layer", low=0)


class Acu(Method):
    name = "acu"
    kinds = frozenset({"learn", "update", "edit", "forget"})

    def __init__(self, config: AcuConfig) -> None:
        self.config = config
        self.texts: dict[str, list[str]] = {}  # entry (fact id, or FIXED) -> the texts whose rows are in the sums
        self.forgotten: set[str] = set()  # ids a forget request removed: never added again
        self.A: torch.Tensor | None = None  # (D, D) float64, sum of phi phi^T over the rows
        self.Q: torch.Tensor | None = None  # (D, V) float64, sum of phi onehot(next)^T
        self.B: torch.Tensor | None = None  # (d, buffer) float32, the buffer layer
        self.W: torch.Tensor | None = None  # (D, V) float32, the solved head
        self.rows = 0
        self.handles: list = []  # the forward hooks while the head is attached
        self._tap: dict = {}  # with `layer`: this forward pass's block output and logits_to_keep
        self.model_id: int | None = None

    # ------------------------------------------------------------------ features
    def phi(self, h: torch.Tensor) -> torch.Tensor:
        """Features (..., D) of hidden states h (..., d), in h's dtype."""
        if self.B is None or self.B.shape[1] == 0:
            return h
        return torch.cat([h, F.gelu(h @ self.B.to(h.device, h.dtype))], dim=-1)

    @torch.no_grad()
    def features(self, model, tokenizer, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(Phi (R, D) float64, next tokens (R,)) over every position of `texts` that
        predicts a token of the text, each text encoded alone (as probes are asked)."""
        seen: list[torch.Tensor] = []
        if self.config.layer is None:
            grab = model.get_output_embeddings().register_forward_pre_hook(lambda module, args: seen.append(args[0]))
        else:
            grab = self.block(model).register_forward_hook(lambda module, args, out: seen.append(out[0] if isinstance(out, tuple) else out))
        device = next(model.parameters()).device
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id or 0
        rows, targets = [], []
        try:
            for start in range(0, len(texts), self.config.batch_size):
                ids = tokenizer(list(texts[start : start + self.config.batch_size]), add_special_tokens=False)["input_ids"]
                T = max(map(len, ids))
                batch = torch.full((len(ids), T), pad, dtype=torch.long)  # (b, T)
                mask = torch.zeros((len(ids), T), dtype=torch.long)  # (b, T)
                for r, s in enumerate(ids):
                    batch[r, : len(s)] = torch.tensor(s)
                    mask[r, : len(s)] = 1
                seen.clear()
                model(input_ids=batch.to(device), attention_mask=mask.to(device), use_cache=False)
                h = seen[-1]  # (b, T, d)
                keep = (mask[:, 1:] > 0)  # (b, T-1): positions with a next token of the text
                rows.append(self.phi(h[:, :-1][keep.to(device)].float()).double().cpu())  # (r, D)
                targets.append(batch[:, 1:][keep])  # (r,)
        finally:
            grab.remove()
        if not rows:
            return torch.zeros((0, self.dim(model)), dtype=torch.float64), torch.zeros(0, dtype=torch.long)
        return torch.cat(rows), torch.cat(targets)

    def block(self, model) -> torch.nn.Module:
        layers = blocks(model)
        if self.config.layer >= len(layers):
            raise ConfigError("layer", f"acu.layer {self.config.layer} is past the model's last block ({len(layers) - 1})")
        return layers[self.config.layer]

    @staticmethod
    def hidden_size(model) -> int:
        return model.get_output_embeddings().weight.shape[1]

    def dim(self, model) -> int:
        return self.hidden_size(model) + self.config.buffer

    def accumulate(self, model, tokenizer, texts: Sequence[str], sign: float) -> None:
        """Add (sign 1) or subtract (sign -1) the rows of `texts` from A and Q."""
        if not texts:
            return
        phi, y = self.features(model, tokenizer, texts)
        self.A.add_(phi.T @ phi, alpha=sign)
        self.Q.index_add_(1, y, phi.T, alpha=sign)
        self.rows += int(sign) * len(y)

    def solve(self) -> None:
        eye = torch.eye(self.A.shape[0], dtype=torch.float64)
        factor = torch.linalg.cholesky(self.A + self.config.ridge * eye)
        self.W = torch.cholesky_solve(self.Q, factor).float()  # (D, V)

    # ------------------------------------------------------------------ the method
    def start(self, model, ctx: StageContext) -> None:
        d, V = self.hidden_size(model), model.get_output_embeddings().weight.shape[0]
        g = torch.Generator().manual_seed(ctx.seed)
        self.B = torch.randn((d, self.config.buffer), generator=g) / d**0.5
        D = d + self.config.buffer
        self.A = torch.zeros((D, D), dtype=torch.float64)
        self.Q = torch.zeros((D, V), dtype=torch.float64)
        self.texts[FIXED] = [t for t in (*ctx.general_text, *ctx.background) if t.strip()]
        self.accumulate(model, ctx.tokenizer, self.texts[FIXED], 1.0)
        for f in ctx.base:
            if f.id not in self.forgotten:
                self.texts[f.id] = fact_texts(f, ctx.relations[f.relation], ctx.qa_subjects)
        self.accumulate(model, ctx.tokenizer, [t for fid, ts in self.texts.items() if fid != FIXED for t in ts], 1.0)

    def apply(self, model, change: Change, ctx: StageContext):
        t0 = time.perf_counter()
        self.detach()  # features come from the model's own head input; the hook is off meanwhile
        model.eval()
        if self.A is None:
            self.start(model, ctx)
        removed, added = [], []
        taught: list[Fact] = [*change.learn, *(r.fact for r in (*change.update, *change.edit))]
        for f in [*taught, *change.forget]:
            removed += self.texts.pop(f.id, [])  # an update's old object, a forgotten fact
        for f in change.forget:
            self.forgotten.add(f.id)
        for f in taught:
            self.forgotten.discard(f.id)  # taught again on purpose (a later learn request)
            self.texts[f.id] = fact_texts(f, ctx.relations[f.relation], ctx.qa_subjects)
            added += self.texts[f.id]
        self.accumulate(model, ctx.tokenizer, removed, -1.0)
        self.accumulate(model, ctx.tokenizer, added, 1.0)
        self.solve()
        self.attach(model)
        stats = ApplyStats(total_params=sum(p.numel() for p in model.parameters()),
                           trainable_params=int(self.W.numel()))
        stats.seconds = time.perf_counter() - t0
        return model, stats

    # ------------------------------------------------------------------ the hooks
    def _forward(self, module, args, output):
        h = args[0] if self.config.layer is None else self._tapped(args[0])
        return self.config.sharpness * (self.phi(h) @ self.W.to(h.device, h.dtype))

    def _tapped(self, head_input: torch.Tensor) -> torch.Tensor:
        """The block output of this forward pass at the positions the head is asked for
        (Hugging Face's `logits_to_keep`: an int keeps the last k, a mask or an index
        tensor picks positions), so that it lines up with the head's input."""
        h, keep = self._tap["block"], self._tap.get("keep", 0)
        if isinstance(keep, torch.Tensor) and keep.dtype == torch.bool and keep.ndim == h.ndim - 1:
            h = h[keep]
        elif isinstance(keep, torch.Tensor):
            h = h[:, keep]
        elif keep:
            h = h[:, -keep:]
        if h.shape[:-1] != head_input.shape[:-1]:
            raise RuntimeError(f"acu: the tapped block output {tuple(h.shape)} does not line up with the head's input {tuple(head_input.shape)}")
        return h

    def attach(self, model) -> None:
        if self.W is None or (self.handles and self.model_id == id(model)):
            return
        self.detach()
        self.handles = [model.get_output_embeddings().register_forward_hook(self._forward)]
        if self.config.layer is not None:
            self._tap = {}
            # bound methods, not closures: a deep copy of the model (the relearning attack's)
            # then carries one copy of this method whose hooks share one tap
            self.handles += [model.register_forward_pre_hook(self._keep_hook, with_kwargs=True),
                             self.block(model).register_forward_hook(self._block_hook)]
        self.model_id = id(model)

    def _keep_hook(self, module, args, kwargs):
        self._tap["keep"] = kwargs.get("logits_to_keep", 0)

    def _block_hook(self, module, args, out):
        self._tap["block"] = out[0] if isinstance(out, tuple) else out

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles, self.model_id = [], None

    def restore(self, model):
        self.attach(model)
        return model

    def kept_outside_weights(self) -> list[str]:
        return [self.name]  # the head is hooked onto the model, beside its weights

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        if self.A is None:
            return {"acu": {"forgotten": sorted(self.forgotten)}}
        return {"acu": {"texts": self.texts, "forgotten": sorted(self.forgotten), "rows": self.rows,
                        "A": self.A, "Q": self.Q, "B": self.B}}

    def load_state_dict(self, state: dict) -> None:
        state = state.get("acu", {})
        damaged = lambda why: ValueError(f"acu: the saved head is damaged ({why}); discard the checkpoint and run again")
        texts, forgotten = state.get("texts", {}), state.get("forgotten", [])
        if not isinstance(texts, dict) or not all(isinstance(v, list) and all(isinstance(t, str) for t in v) for v in texts.values()):
            raise damaged("its texts have the wrong types")
        if not isinstance(forgotten, list) or set(map(str, forgotten)) & set(texts):
            raise damaged("a fact is both in the head and forgotten")
        self.texts, self.forgotten = {str(k): v for k, v in texts.items()}, {str(x) for x in forgotten}
        A, Q, B = state.get("A"), state.get("Q"), state.get("B")
        if A is None and Q is None and B is None and not texts:
            self.A = self.Q = self.B = self.W = None
            return
        if not all(isinstance(x, torch.Tensor) for x in (A, Q, B)):
            raise damaged("A, Q or B is missing")
        D = A.shape[0]
        if A.shape != (D, D) or Q.shape[0] != D or B.shape[0] + B.shape[1] != D or not (torch.isfinite(A).all() and torch.isfinite(Q).all()):
            raise damaged(f"shapes A {tuple(A.shape)}, Q {tuple(Q.shape)}, B {tuple(B.shape)} do not fit, or values are not finite")
        self.A, self.Q, self.B = A.double(), Q.double(), B.float()
        self.rows = int(state.get("rows", 0))
        self.solve()


register_method("acu", AcuConfig, Acu, "ACU: frozen model, a ridge-regression head over its features (sums kept); forgetting subtracts a fact's rows exactly", ["learn", "update", "edit", "forget"])
