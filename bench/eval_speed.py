"""Probe-scoring throughput: batched `score_probes` against one-probe-at-a-time paths.

Not a test. Scores ~1,000 probes of the default synthetic world (10 candidates each,
answers of 1-3 words) with the default tiny model shape, and compares with
  - naive generate: `model.generate` for one probe at a time, exact match only
    (`reference_exact_match`), and
  - full reference: generate plus one forward pass per candidate (`reference_score`),
both timed on a subset. Also checks that the batched results equal the reference ones
on that subset. Intra-op threads are left at torch's default unless --threads is given.

    python bench/eval_speed.py [--probes 1000] [--naive 100] [--model DIR]

Without --model the model is freshly initialised: speed does not depend on the weights
(greedy decoding always runs its full len(answer)+1 steps here, since an untrained model
does not emit EOS and a trained one ends answers with ".", not EOS).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
import torch
import transformers

from ckl.model import lm
from ckl.model.scoring import reference_exact_match, reference_score, score_probes
from ckl.train.pretrain import tokenizer_corpus
from ckl.data.world import WorldConfig, build_world
# The shape docs/benchmarks.md measured (4 layers, width 128, the default base model until
# it widened to 256: docs/knowledge.md); pinned so the published ratios stay reproducible.
BENCH_SHAPE = lm.TinyModelConfig(n_layer=4, n_embd=128, n_head=4)


def timed(fn, repeats: int) -> tuple[float, object]:
    """Median wall time of `repeats` calls, and the last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=1000, help="probes scored by the batched path")
    parser.add_argument("--naive", type=int, default=100, help="probes scored one at a time (a subset)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5, help="batched timings; the median is reported")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--model", default=None, help="a saved ckl/HF model directory instead of a fresh tiny model")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    stream = build_world(WorldConfig())
    every = stream.probes()
    probes = every[:: max(1, len(every) // args.probes)][: args.probes]
    if args.model:
        model, tokenizer = lm.load(args.model)
    else:
        tokenizer = lm.make_tokenizer(tokenizer_corpus(stream))
        model = lm.tiny_model(tokenizer, BENCH_SHAPE, seed=0)
    trainable, total = lm.count_parameters(model)
    answer_tokens = [len(tokenizer(" " + p.answer, add_special_tokens=False)["input_ids"]) for p in probes]

    print(f"machine: {platform.machine()} {platform.processor() or ''} cpu_count={os.cpu_count()} "
          f"torch_threads={torch.get_num_threads()} load_avg={os.getloadavg()[0]:.2f}")
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, python {platform.python_version()}")
    if torch.get_num_threads() > 1 and os.getloadavg()[0] > 0.5:
        print("note: other processes are using the CPUs; with several intra-op threads, OpenMP threads that "
              "wait for a descheduled sibling can slow every forward pass many times over. "
              "Compare with --threads 1.")
    cfg = model.config
    print(f"model: {cfg.model_type} n_layer={cfg.n_layer} n_embd={cfg.n_embd} vocab={cfg.vocab_size} "
          f"params={total:,} attn={cfg._attn_implementation}")
    print(f"probes: {len(probes)} batched, {args.naive} one at a time; candidates/probe="
          f"{np.mean([len(p.candidates) for p in probes]):.1f}; answer tokens min/mean/max="
          f"{min(answer_tokens)}/{np.mean(answer_tokens):.2f}/{max(answer_tokens)}")

    subset = probes[:: max(1, len(probes) // args.naive)][: args.naive]
    score_probes(model, tokenizer, probes[:64], batch_size=args.batch_size)  # warm-up
    for p in subset[:3]:
        reference_score(model, tokenizer, p)

    t_batched, scores = timed(lambda: score_probes(model, tokenizer, probes, batch_size=args.batch_size), args.repeats)
    t_generate, _ = timed(lambda: [reference_exact_match(model, tokenizer, p) for p in subset], 1)
    t_reference, reference = timed(lambda: [reference_score(model, tokenizer, p) for p in subset], 1)

    sub = score_probes(model, tokenizer, subset, batch_size=args.batch_size)
    agree = sum(
        (bool(sub.em[i]), bool(sub.rank_ok[i]), sub.predicted[i]) == (em, rank_ok, predicted)
        and abs(sub.logprob[i] - logprob) < 1e-4
        for i, (em, rank_ok, logprob, predicted) in enumerate(reference)
    )

    rate_batched = len(probes) / t_batched
    rate_generate = len(subset) / t_generate
    rate_reference = len(subset) / t_reference
    print(f"batched score_probes (em + ranking + logprob): {rate_batched:10.1f} probes/s  "
          f"({t_batched * 1e3:.0f} ms for {len(probes)}, median of {args.repeats})")
    print(f"naive one-probe generate (em only):            {rate_generate:10.1f} probes/s  ({t_generate:.2f} s for {len(subset)})")
    print(f"full reference (generate + 1 pass/candidate):  {rate_reference:10.1f} probes/s  ({t_reference:.2f} s for {len(subset)})")
    print(f"batched agrees with the reference on {agree}/{len(subset)} probes")
    print(f"speedup vs full reference: {rate_batched / rate_reference:.0f}x")
    print(f"eval speedup (batched vs naive one-probe generate): {rate_batched / rate_generate:.0f}x")


if __name__ == "__main__":
    main()
