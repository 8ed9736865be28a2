"""Every unlearning part on the test suite's tiny world: forget accuracy before and after,
held-out paraphrases, retained facts, the forgotten subjects' other facts, steps, seconds.

Not a test (the tests assert the mechanisms; this prints the numbers they come from).
World and model are the fixtures of tests/conftest.py: 12 people x 6 relations, a 2-layer
width-64 GPT-2 pretrained on them (~15 s). The stage asks to forget the world's 4
deletion requests and nothing else; each method runs with the default stopping rule
(forget exact match 0 on the trained prompts) and at most `--epochs` passes.
Accuracies are greedy exact match on statement + question probes.

    python bench/unlearn_tiny.py [--epochs 30] [--lr 1e-3] [--out /tmp/ckl_tiny_model]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ckl.model import lm  # noqa: E402
from ckl.model.scoring import score_probes  # noqa: E402
from ckl.methods.base import StageContext, build_method  # noqa: E402
from ckl.train.pretrain import PretrainConfig, pretrain  # noqa: E402
from ckl.data.stream import Change, make_probes  # noqa: E402
from ckl.data.world import WorldConfig, build_world  # noqa: E402
from tests.conftest import TINY_PRETRAIN, TINY_WORLD  # noqa: E402

METHODS = ["ga", "graddiff", "kl", "npo", "simnpo", "ihl", "idk", "relearn", "ihl+lora", "npo+lora"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--out", default="/tmp/ckl_tiny_model")
    args = parser.parse_args()
    accelerator = Accelerator(cpu=True)
    stream = build_world(WorldConfig(**TINY_WORLD))
    out = Path(args.out)
    if not (out / "config.json").exists():
        pretrain(stream, PretrainConfig(**TINY_PRETRAIN), accelerator, out)
    forget = [f for ch in stream.stages for f in ch.forget]
    gone = {f.id for f in forget}
    retained = [f for f in stream.invariant() if f.id not in gone]
    boundary = [f for f in retained if f.subject in {f.subject for f in forget}]
    change = Change(stage=1, forget=tuple(forget))

    def em(model, tokenizer, facts, kinds=("statement", "question")) -> float:
        return float(score_probes(model, tokenizer, make_probes(facts, stream.relations, "b", 0, "forget", kinds, 1)).em.mean())

    model, tokenizer = lm.load(out)
    print(f"before unlearning: retain {em(model, tokenizer, retained):.3f}, boundary {em(model, tokenizer, boundary):.3f} "
          f"({len(forget)} forget facts, {len(retained)} retained, {len(boundary)} of them about the forgotten subjects)")
    print("| method | mode | forget before | forget after | paraphrase after | retain | boundary | steps | seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    for expression in METHODS:
        for mode in ("batched", "sequential"):
            model, tokenizer = lm.load(out)
            before = em(model, tokenizer, forget)
            first = expression.split("+")[0]
            method = build_method(expression, {"train": {"epochs": args.epochs, "lr": args.lr}, first: {"mode": mode}})
            ctx = StageContext(stream.relations, stream.base, 1, 0, tokenizer, accelerator, change=change)
            start = time.perf_counter()
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                model, stats = method.apply(model, change, ctx)
            seconds = time.perf_counter() - start
            print(f"| {expression} | {mode} | {before:.3f} | {em(model, tokenizer, forget):.3f} | {em(model, tokenizer, forget, ('paraphrase',)):.3f} "
                  f"| {em(model, tokenizer, retained):.3f} | {em(model, tokenizer, boundary):.3f} | {stats.steps} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
