"""Reinforcement fine-tuning on the model's own samples instead of supervised fine-tuning
(after Lai et al. 2025, "Reinforcement Fine-Tuning Naturally Mitigates Forgetting in
Continual Post-Training", whose RFT is GRPO with a verifiable reward).

An objective part: it takes the stage's taught facts away from the next-token loss (the
SFT the loop would do; `select_facts` hands it nothing, so only other parts' text, e.g.
`replay`'s, is still trained that way) and trains on them by group-relative policy
gradients instead. Each step takes `batch_size` of the facts, asks each one's statement
prompt (and, for subjects whose questions are trained, its question), samples `group`
answers from the current model (temperature `temperature`), rewards an answer 1 when it
starts with the fact's object (the scorer's normalisation) and 0 otherwise, and minimises

    - mean over samples of  A_i * (sum of log p(answer_i tokens | prompt)) / |answer_i|,
    A_i = (r_i - mean_group r) / (std_group r + 1e-4)

(GRPO's group-relative advantage, one update per sample batch, so the importance ratio is
1 and there is nothing to clip). A group whose rewards are all equal teaches nothing: a
model that never samples a new fact's object cannot learn it by reinforcement, which is
the method's nature, not a bug (measured on the tiny world: no step, weights unchanged).
`guide: true` replaces one sample of every group by the gold answer (off-policy guidance,
as LUFFY does), so new objects get a positive advantage.

Deviations: no KL penalty to a reference model and no clipping (a single on-policy update
per batch, as Dr. GRPO argues is enough); the reward is exact match on the object, the
prompts are the fact store's training templates; the paper's tasks are reasoning
benchmarks, not facts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ckl.core.checks import ConfigError, check_count, check_number
from ckl.data.facts import Fact
from ckl.data.stream import make_probes
from ckl.methods.base import Part, StageContext, register_part
from ckl.methods.scope.attached import host_model
from ckl.model.scoring import normalise_answer


@dataclass
class RftConfig:
    group: int = field(default=4, metadata={"help": "answers sampled per prompt (the GRPO group)"})
    batch_size: int = field(default=8, metadata={"help": "prompts per step"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature"})
    max_new_tokens: int = field(default=8, metadata={"help": "longest sampled answer"})
    guide: bool = field(default=False, metadata={"help": "put the gold answer in every group (off-policy guidance); false: pure on-policy RFT"})
    weight: float = field(default=1.0, metadata={"help": "weight of the policy-gradient loss"})

    def __post_init__(self) -> None:
        check_count(self.group, "group")
        if self.group < 2:
            raise ConfigError("group", f"group must be at least 2 (the advantage is relative to the group), got {self.group!r}")
        check_count(self.batch_size, "batch_size")
        check_number(self.temperature, "temperature", low=0, low_open=True)
        check_count(self.max_new_tokens, "max_new_tokens")
        check_number(self.weight, "weight", low=0)


def group_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """(prompts, group) rewards -> GRPO advantages, (r - mean) / (std + 1e-4) per row."""
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, unbiased=False, keepdim=True)
    return (rewards - mean) / (std + 1e-4)


class Rft(Part):
    name = "rft"

    def __init__(self, config: RftConfig):
        self.config = config
        self.prompts: list[tuple[str, str]] = []  # (prompt, object) of the stage's facts
        self.order: list[int] = []
        self.cursor = 0
        self.rewarded: list[float] = []  # per step: share of sampled answers rewarded (guides excluded)
        self.ctx: StageContext | None = None
        self._tokens = 0  # prompt and answer tokens of the last step

    def own_tokens(self) -> int:
        tokens, self._tokens = self._tokens, 0
        return tokens

    def prepare(self, model, ctx: StageContext):
        self.ctx, self.prompts, self.cursor, self.rewarded = ctx, [], 0, []
        return model

    def select_facts(self, facts: list[Fact], ctx: StageContext) -> list[Fact]:
        if not self.prompts and facts:
            probes = make_probes(facts, ctx.relations, "rft", ctx.stage, "learn", ("statement", "question"), max_candidates=1, qa_subjects=ctx.qa_subjects)
            self.prompts = [(p.prompt, p.answer) for p in probes]
            self.order = list(range(len(self.prompts)))
            random.Random(f"ckl.rft/{ctx.seed}/{ctx.stage}").shuffle(self.order)
        return []  # no next-token training on them: they are learned by reinforcement

    def steps(self, epoch: int, epochs: int) -> int:
        return -(-len(self.prompts) // self.config.batch_size) if self.prompts else 0

    def _batch(self) -> list[tuple[str, str]]:
        n = len(self.order)
        picked = [self.prompts[self.order[(self.cursor + i) % n]] for i in range(min(self.config.batch_size, n))]
        self.cursor = (self.cursor + len(picked)) % n
        return picked

    def loss(self, model, batch: dict | None, outputs, step: int) -> torch.Tensor | None:
        if not self.prompts or self.config.weight == 0:
            return None
        tokenizer, lm = self.ctx.tokenizer, host_model(model)
        c = self.config
        device = next(lm.parameters()).device
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        rows, rewards = [], []
        batch = self._batch()
        prompts = tokenizer([prompt for prompt, _ in batch], add_special_tokens=False)["input_ids"]
        width = max(map(len, prompts))
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)  # (B, P), left-padded: every prompt ends at column P
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):], attention[i, width - len(p):] = torch.tensor(p), 1
        training = lm.training
        lm.eval()
        with torch.no_grad():  # one sampling call for the whole batch: `group` answers per prompt, prompt by prompt
            sampled = lm.generate(ids.to(device), attention_mask=attention.to(device), do_sample=True, temperature=c.temperature, top_k=0,
                                  max_new_tokens=c.max_new_tokens, num_return_sequences=c.group, pad_token_id=pad)
        lm.train(training)
        generated = sampled[:, width:].tolist()  # (B * group, new): rows i * group .. i * group + group - 1 answer prompt i
        for i, ((prompt, answer), prompt_ids) in enumerate(zip(batch, prompts)):
            answers = []
            for seq in generated[i * c.group : (i + 1) * c.group]:
                if tokenizer.eos_token_id in seq:
                    seq = seq[: seq.index(tokenizer.eos_token_id) + 1]
                answers.append(seq)
            if c.guide:
                answers[0] = tokenizer(" " + answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            target = normalise_answer(answer)
            r = [float(normalise_answer(tokenizer.decode(a, skip_special_tokens=True)).startswith(target) and target != "") for a in answers]
            if c.guide:
                r[0] = 1.0
            self.rewarded.append(sum(r[1:] if c.guide else r) / (len(r) - (1 if c.guide else 0)))
            rewards.append(r)
            rows += [(prompt_ids, a) for a in answers]
        advantages = group_advantages(torch.tensor(rewards)).flatten()  # (prompts * group,)
        if not bool(advantages.abs().gt(1e-6).any()):
            return None  # every group's answers were all right or all wrong: nothing to reinforce
        width = max(len(p) + len(a) for p, a in rows)
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        answer_mask = torch.zeros((len(rows), width), dtype=torch.bool)  # positions whose *next* token is an answer token
        for i, (p, a) in enumerate(rows):
            input_ids[i, : len(p) + len(a)] = torch.tensor(p + a)
            mask[i, : len(p) + len(a)] = 1
            answer_mask[i, len(p) - 1 : len(p) + len(a) - 1] = True
        self._tokens = int(mask.sum())
        input_ids, mask, answer_mask = input_ids.to(device), mask.to(device), answer_mask.to(device)
        logits = model(input_ids=input_ids, attention_mask=mask).logits[:, :-1].float()  # (N, L-1, V)
        logp = -F.cross_entropy(logits.transpose(1, 2), input_ids[:, 1:], reduction="none")  # (N, L-1)
        chosen = answer_mask[:, :-1].to(logp.dtype)
        per_answer = (logp * chosen).sum(1) / chosen.sum(1).clamp_min(1)  # mean log-prob per answer token
        return -c.weight * (advantages.to(device) * per_answer).mean()

    def row_notes(self) -> dict:
        return {"rft_reward": sum(self.rewarded) / len(self.rewarded)} if self.rewarded else {}


register_part("rft", RftConfig, Rft, "reinforcement fine-tuning (GRPO-style, exact-match reward on sampled answers) instead of next-token training on the stage's facts; `guide` adds the gold answer to every group")
