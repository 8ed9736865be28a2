"""What an in-stage curve (`train.eval_every`) costs: one stage trained with and without it.

Not a test. Applies stage 1 of a stream (default: the default world, built here) to a
base model (default: pretrained here with the defaults, minutes) with `naive`, 40 epochs
at lr 1e-3 (examples/methods.yaml), once without a curve and once with one of about
--points points (eval_every = steps // points; cohorts invariant and stage, --sample
probes per cohort and kind, default `train.eval_sample`; the run's four probe kinds), in alternation for --rounds
rounds, and prints the medians and their ratio. The trained weights must be identical
(checked): scoring between steps changes nothing the loop computes.

    python bench/eval_curve.py [--stream DIR --model DIR] [--points 100] [--sample N] [--rounds 2] [--threads N]

The issue's target: a 100-point curve costs < 30% extra on the default world.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ckl.data.stream import Stream
from ckl.methods.base import StageContext, apply_stage, build_method
from ckl.model import lm
from ckl.run.curves import CurveRecorder, select_probes
from ckl.run.experiment import make_accelerator
from ckl.train.loop import TrainConfig

KINDS = ("statement", "paraphrase", "question", "extraction")


def _stream_and_model(args, scratch: Path) -> tuple[Stream, Path]:
    if args.stream and args.model:
        return Stream.load(args.stream), Path(args.model)
    from ckl.data.world import WorldConfig, build_world
    from ckl.train.config import PretrainConfig
    from ckl.train.pretrain import pretrain

    stream = build_world(WorldConfig())
    print("pretraining the default base model (minutes) ...", flush=True)
    pretrain(stream, PretrainConfig(), make_accelerator(), scratch / "model")
    return stream, scratch / "model"


def _apply(stream: Stream, model_dir: Path, options: dict, recorder, accelerator):
    model, tokenizer = lm.load(model_dir)
    change = stream.stages[0]
    ctx = StageContext(stream.relations, stream.base, 1, 0, tokenizer, accelerator, change=change,
                       general_text=stream.general_train, background=stream.background, qa_subjects=stream.qa_subjects,
                       curve=recorder)
    start = time.perf_counter()
    model, stats = apply_stage(build_method("naive", {"train": options}), model, change, ctx)
    return time.perf_counter() - start, stats, model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stream")
    parser.add_argument("--model")
    parser.add_argument("--points", type=int, default=100)
    parser.add_argument("--sample", type=int, default=TrainConfig().eval_sample)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    accelerator = make_accelerator()
    with tempfile.TemporaryDirectory() as scratch:
        stream, model_dir = _stream_and_model(args, Path(scratch))
        train = {"epochs": 40, "lr": 1e-3}
        _, stats, _ = _apply(stream, model_dir, train, None, accelerator)  # warm-up, and the step count
        every = max(1, stats.steps // args.points)
        curve = {**train, "eval_every": every, "eval_sample": args.sample}
        tokenizer = lm.load_tokenizer(model_dir)
        probes = select_probes(stream.probes(kinds=KINDS), ("invariant", "stage"), args.sample, seed=0)
        plain, with_curve, points, scoring = [], [], 0, []
        for _ in range(args.rounds):
            seconds, _, model_a = _apply(stream, model_dir, train, None, accelerator)
            plain.append(seconds)
            recorder = CurveRecorder(probes, tokenizer, 256, accelerator)
            seconds, _, model_b = _apply(stream, model_dir, curve, recorder, accelerator)
            with_curve.append(seconds)
            points, scoring = len(recorder.points), [p.eval_seconds for p in recorder.points]
            assert all(torch.equal(a, b) for a, b in zip(model_a.parameters(), model_b.parameters())), "a curve changed the training"
    a, b = statistics.median(plain), statistics.median(with_curve)
    print(f"threads {torch.get_num_threads()}; stage 1 of {len(stream.base)} base facts, {stats.steps} optimiser steps")
    print(f"curve: {points} points (eval_every {every}), {len(probes)} probes per point "
          f"({args.sample} per cohort and kind), median {statistics.median(scoring) * 1000:.0f} ms per point")
    print(f"stage without curve  {a:7.2f} s   (median of {args.rounds})")
    print(f"stage with curve     {b:7.2f} s")
    print(f"ratio                {b / a:7.3f}   (target < 1.30); weights identical: yes")


if __name__ == "__main__":
    main()
