"""Editing throughput: ROME one edit at a time against MEMIT in one batch of 1,000 edits.

Not a test. On a tiny model pretrained on a synthetic world big enough for 1,000
distinct editable facts (300 people x 6 relations; built and pretrained once under
--cache with a short time budget, then reused), it times
  - ROME applying `--rome` edits one after another (reported per edit), and
  - MEMIT applying `--edits` edits as one batch,
both from the same base model, with the same target-optimisation settings, after the key
second moments are cached (their one-off cost is printed separately). It also prints
each editor's efficacy (statement exact match of the new objects) so that a fast but
ineffective editor is visible. The ratio of seconds per edit is printed last.

    python bench/edit_speed.py [--edits 1000] [--rome 20] [--cache DIR] [--threads N] [--subject-token first]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import time
from pathlib import Path

import torch

from ckl.model import lm
from ckl.methods.edit import _covariance as covariance
from ckl.model.scoring import score_probes
from ckl.data.facts import ChangeRecord, Fact
from ckl.methods.base import StageContext, build_method
from ckl.methods.edit.memit import edited_layers
from ckl.methods.edit.rome import default_layer
from ckl.data.stream import Change, Stream, make_probes
from ckl.data.world import WorldConfig, build_world


def base_model(cache: Path, people: int, seconds: float) -> tuple[Stream, Path]:
    """The bench world and a model pretrained on it (cached)."""
    from accelerate import Accelerator

    from ckl.train.pretrain import PretrainConfig, pretrain

    world_dir, model_dir = cache / f"world-{people}", cache / f"model-{people}-shuffled"  # pretrained with a new document order each epoch
    if not (world_dir / "meta.json").exists():
        build_world(WorldConfig(seed=0, people=people, stages=0, learn_per_stage=0, update_per_stage=0, forget_per_stage=0)).save(world_dir)
    stream = Stream.load(world_dir)
    if not (model_dir / "config.json").exists():
        print(f"pretraining the bench model on {len(stream.base)} facts (budget {seconds:.0f}s, cached in {model_dir}) ...", flush=True)
        _, _, result = pretrain(stream, PretrainConfig(max_seconds=seconds, target=0.95, eval_every=10, shuffle=True), Accelerator(cpu=True), model_dir)
        print(f"  {result.epochs} epochs, statement accuracy {result.accuracy:.3f}, {result.seconds:.0f}s", flush=True)
    return stream, model_dir


def edits(stream: Stream, n: int) -> list[ChangeRecord]:
    """`n` distinct base facts, each rewritten to another candidate object."""
    rng = random.Random(0)
    chosen = rng.sample(list(stream.base), n)
    out = []
    for f in chosen:
        new = rng.choice([c for c in stream.relations[f.relation].candidates if c != f.object])
        out.append(ChangeRecord(1, "edit", Fact(f.id, f.subject, f.relation, new, 1), f.object))
    return out


def run(name: str, stream: Stream, model_dir: Path, records: list[ChangeRecord], options: dict) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds of this process, efficacy) of applying `records` with
    method `name` to a fresh base model. CPU time is the robust figure on a shared
    machine: other processes stretch wall time, not this process's CPU time."""
    model, tokenizer = lm.load(model_dir)
    method = build_method(name, {name: options})
    change = Change(1, edit=tuple(records))
    ctx = StageContext(stream.relations, stream.base, 1, 0, tokenizer, None, change=change, general_text=stream.general_train,
                       background=stream.background, qa_subjects=stream.qa_subjects, model_dir=model_dir)
    # the one-off key statistics (cached on disk by the warm-up) are not part of the edit time
    warm = time.perf_counter()
    layers = edited_layers(method.config, model) if name == "memit" else [method.config.layer if method.config.layer >= 0 else default_layer(model)]
    for layer in layers:
        method.statistics.get(model, tokenizer, layer, ctx)
    print(f"{name}: key statistics for layers {layers} ready in {time.perf_counter() - warm:.1f}s", flush=True)
    start, cpu = time.perf_counter(), time.process_time()
    model, _ = method.apply(model, change, ctx)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    probes = make_probes([r.fact for r in records], stream.relations, "edit", 1, "edit", ("statement",), 10)
    efficacy = float(score_probes(model, tokenizer, probes).em.mean())
    print(f"{name}: {len(records)} edits in {seconds:.1f}s wall, {cpu:.1f}s CPU; efficacy {efficacy:.3f}", flush=True)
    return seconds, cpu, efficacy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--edits", type=int, default=1000, help="MEMIT batch size")
    parser.add_argument("--rome", type=int, default=20, help="ROME edits timed one after another")
    parser.add_argument("--people", type=int, default=300)
    parser.add_argument("--pretrain-seconds", type=float, default=240.0)
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "ckl-bench-edit")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--subject-token", default="last", choices=("last", "first"), help="subject token both editors edit (see `ckl locate`)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {platform.machine()} cpu_count={os.cpu_count()} torch_threads={torch.get_num_threads()} load_avg={os.getloadavg()[0]:.2f}")
    stream, model_dir = base_model(args.cache, args.people, args.pretrain_seconds)
    records = edits(stream, args.edits)
    model, _ = lm.load(model_dir)
    print(f"model: {lm.count_parameters(model)[1]:,} parameters, {model.config.n_layer} layers; {len(records)} distinct facts to edit ({len({r.fact.subject for r in records})} subjects)")
    options = {"subject_token": args.subject_token}
    rome_s, rome_cpu, rome_ok = run("rome", stream, model_dir, records[: args.rome], options)
    memit_s, memit_cpu, memit_ok = run("memit", stream, model_dir, records, options)
    n = len(records)
    print(f"ROME  one at a time: {rome_s / args.rome:.3f} s/edit wall, {rome_cpu / args.rome:.3f} s/edit CPU; efficacy {rome_ok:.3f} ({args.rome} edits)")
    print(f"MEMIT one batch:     {memit_s / n:.4f} s/edit wall, {memit_cpu / n:.4f} s/edit CPU; efficacy {memit_ok:.3f} ({n} edits)")
    print(f"covariance computations this process: {covariance.computed}; load average now {os.getloadavg()[0]:.2f}")
    print(f"CPU-time speedup (MEMIT batch vs ROME, per edit): {(rome_cpu / args.rome) / (memit_cpu / n):.1f}x")
    print(f"edit speedup (MEMIT batch vs ROME, per edit, wall): {(rome_s / args.rome) / (memit_s / n):.1f}x")


if __name__ == "__main__":
    main()
