"""Pretraining recipes x model sizes -> what the base model knows (docs/knowledge.md).

One run per call: build a world, pretrain the default tiny model on its K0 with the given
recipe for a fixed number of epochs (no early stop), and print one JSON line per accuracy
check: statement, paraphrase, question and extraction accuracy on the invariant K0 facts,
the epoch, the seconds so far and the thread count. --log appends the lines to a file:

    OMP_NUM_THREADS=1 .venv/bin/python bench/knowledge_recipe.py --epochs 300 --log runs/recipes.jsonl
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from accelerate import Accelerator

from ckl.train.pretrain import PretrainConfig, pretrain
from ckl.data.world import WorldConfig, build_world


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--people", type=int, default=200)
    ap.add_argument("--background", type=int, default=100)
    ap.add_argument("--min-probe-word-count", type=int, default=20)
    ap.add_argument("--qa-fraction", type=float, default=0.5)
    ap.add_argument("--general", type=int, default=400)
    ap.add_argument("--stages", type=int, default=2)
    ap.add_argument("--learn", type=int, default=40)
    ap.add_argument("--update", type=int, default=40)
    ap.add_argument("--forget", type=int, default=10)
    ap.add_argument("--no-shuffle", action="store_true")
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=128)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--biographies", type=int, default=1)
    ap.add_argument("--questions", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", default="")
    ap.add_argument("--log", type=Path, default=None)
    args = ap.parse_args()

    stream = build_world(WorldConfig(
        seed=args.seed, people=args.people, background_people=args.background,
        min_probe_word_count=args.min_probe_word_count, qa_fraction=args.qa_fraction, general_train=args.general,
        stages=args.stages, learn_per_stage=args.learn, update_per_stage=args.update, forget_per_stage=args.forget,
    ))
    config = PretrainConfig(
        n_layer=args.n_layer, n_embd=args.n_embd, n_head=args.n_head, lr=args.lr, batch_size=args.batch_size,
        max_epochs=args.epochs, target=1.0, eval_every=args.eval_every, biographies=args.biographies,
        questions=args.questions, seed=args.seed, shuffle=not args.no_shuffle,
    )
    recipe = {k: v for k, v in vars(args).items() if k != "log"} | {"threads": torch.get_num_threads()}
    start = time.perf_counter()

    def report(epoch: int, knowledge: dict[str, float]) -> None:
        line = json.dumps(recipe | {"epoch": epoch, "seconds": round(time.perf_counter() - start, 1)} | knowledge)
        print(line, flush=True)
        if args.log:
            with args.log.open("a") as f:
                f.write(line + "\n")

    _, _, result = pretrain(stream, config, Accelerator(cpu=True), progress=report)
    print(json.dumps({"parameters": result.parameters, "seconds": round(result.seconds, 1)}))


if __name__ == "__main__":
    main()
