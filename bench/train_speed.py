"""Training throughput: ckl's Accelerate loop against a bare PyTorch loop, and MFU.

Not a test. Trains a tiny model (`BENCH_SHAPE`: GPT-2, 4 layers, width
128) on the pretraining documents of a 100-person world (biographies and question lines
of the base facts + general text; batch 16, block 128, AdamW lr 3e-3, clip 1.0) with
  - ckl: `ckl.train.loop.train` (packs each epoch, runs the Accelerate loop with its
    divergence checks), and
  - bare: the same model initialisation, the same packed blocks (`pack` once per epoch,
    same documents), the same batch order, and a plain
    `model(**batch).loss.backward(); clip; opt.step(); opt.zero_grad()` loop,
  - trainer (with --trainer): Hugging Face `Trainer` on the same blocks in the same batch
    order (a batch sampler of the bare loop's batches), constant lr, the same clip, with
    `optim="adamw_torch"` and with Trainer's default `adamw_torch_fused`; and ckl with
    `train.optimizer: adamw_fused` beside it,
timed in alternation (ckl, bare, ckl, bare, ... after a warm-up) so that noise from other
processes hits both alike, together with square fp32 matmuls (the same-run peak). Reports
medians. The loops see identical batches, so the unfused ones must end on the same loss.

    python bench/train_speed.py [--epochs 3] [--rounds 5] [--threads N] [--max-seconds 150] [--profile] [--trainer]

The headline ratio is of whole `train()` calls (setup and teardown included); the ratio
of the time between the first and the last optimiser step is printed too, which
separates per-step overhead from per-call overhead. --profile adds a torch.profiler
breakdown of one epoch of each loop and the cost of `accelerator.free_memory()`.

Tokens/s counts non-padding tokens (`TrainResult.tokens_seen`). MFU counts every packed
position, padding included, because the model computes on it:

    FLOPs per position = 6 * N_nonembedding            (all block + final-LN weights)
                       + 6 * V * d                     (tied LM head: 2Vd fwd + 4Vd bwd)
                       + 12 * n_layer * d * T          (attention scores and mixing, fwd+bwd,
                                                        full T x T as in PaLM / nanoGPT)
    MFU = FLOPs per position * positions / second / (median fp32 matmul GFLOP/s peak)

Intra-op threads are torch's default unless --threads is given.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time

import torch
import transformers

from ckl.model import lm
from ckl.train.pretrain import tokenizer_corpus
from ckl.data.stream import render_documents
from ckl.train.batching import pack, shard_batches
from ckl.train.loop import TrainConfig, rng_for, train
from ckl.data.world import WorldConfig, build_world

WORLD = dict(people=100, learn_per_stage=20, update_per_stage=20, forget_per_stage=5, general_train=200, general_heldout=100)
LR, BATCH, BLOCK, CLIP, SEED = 3e-3, 16, 128, 1.0, 0
# The shape docs/benchmarks.md measured (4 layers, width 128, the default base model until
# it widened to 256: docs/knowledge.md); pinned so the published ratios stay reproducible.
BENCH_SHAPE = lm.TinyModelConfig(n_layer=4, n_embd=128, n_head=4)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run_ckl(tokenizer, docs, epochs: int, accelerator, optimizer: str = "adamw") -> dict:
    model = lm.tiny_model(tokenizer, BENCH_SHAPE, seed=SEED)
    # shuffle off: the bare loop packs the renderer's order (shuffling is a data choice, not loop overhead)
    config = TrainConfig(epochs=epochs, lr=LR, batch_size=BATCH, block_size=BLOCK, max_grad_norm=CLIP, shuffle=False, optimizer=optimizer)
    stamps: list[float] = []  # after each optimiser step (the loop's progress callback)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        result = train(model, tokenizer, lambda epoch: docs[epoch], config, accelerator, seed=SEED,
                       progress=lambda epoch, step, loss: stamps.append(time.perf_counter()))
    return dict(seconds=result.seconds, tokens=result.tokens_seen, steps=result.steps, loss=result.last_loss,
                in_loop=stamps[-1] - stamps[0])


def run_bare(tokenizer, docs, epochs: int) -> dict:
    """The same work as `train` with nothing but PyTorch: same init, blocks, order, clip."""
    model = lm.tiny_model(tokenizer, BENCH_SHAPE, seed=SEED)
    model.train()
    start = time.perf_counter()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)
    generator = torch.Generator().manual_seed(SEED)
    tokens = steps = 0
    loss = None
    stamps: list[float] = []
    for epoch in range(epochs):
        input_ids, mask, labels = pack(tokenizer, docs[epoch], BLOCK)
        tokens += int(mask.sum())
        for index in shard_batches(len(input_ids), BATCH, 0, 1, generator):
            loss = model(input_ids=input_ids[index], attention_mask=mask[index], labels=labels[index]).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, CLIP)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            steps += 1
            stamps.append(time.perf_counter())
    seconds = time.perf_counter() - start
    return dict(seconds=seconds, tokens=tokens, steps=steps, loss=float(loss.detach()), in_loop=stamps[-1] - stamps[0])


def run_trainer(tokenizer, docs, epochs: int, optim: str, out_dir: str) -> dict:
    """Hugging Face Trainer on the bare loop's blocks and batches (same init, order, clip)."""
    import transformers as hf

    model = lm.tiny_model(tokenizer, BENCH_SHAPE, seed=SEED)
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(SEED)
    blocks, batches, tokens = [], [], 0
    for epoch in range(epochs):
        input_ids, mask, labels = pack(tokenizer, docs[epoch], BLOCK)
        tokens += int(mask.sum())
        offset = len(blocks)
        blocks += [{"input_ids": i, "attention_mask": m, "labels": lab} for i, m, lab in zip(input_ids, mask, labels)]
        batches += [[offset + int(j) for j in index] for index in shard_batches(len(input_ids), BATCH, 0, 1, generator)]
    stamps: list[float] = []

    class Stamp(hf.TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(time.perf_counter())

    last = {}

    class SameBatches(hf.Trainer):
        def get_train_dataloader(self):
            return torch.utils.data.DataLoader(blocks, batch_sampler=batches, collate_fn=lambda rows: {k: torch.stack([r[k] for r in rows]) for k in rows[0]})

        def compute_loss(self, model, inputs, *a, **k):
            loss = super().compute_loss(model, inputs, *a, **k)
            last["loss"] = loss[0] if isinstance(loss, tuple) else loss
            return loss

    args = hf.TrainingArguments(output_dir=out_dir, per_device_train_batch_size=BATCH, learning_rate=LR, weight_decay=0.0,
                                max_grad_norm=CLIP, lr_scheduler_type="constant", warmup_steps=0, num_train_epochs=1,
                                max_steps=len(batches), optim=optim, report_to=[], save_strategy="no", logging_strategy="no",
                                use_cpu=True, seed=SEED, disable_tqdm=True, dataloader_num_workers=0)
    trainer = SameBatches(model=model, args=args, train_dataset=blocks, callbacks=[Stamp()])
    trainer.train()
    seconds = time.perf_counter() - start
    return dict(seconds=seconds, tokens=tokens, steps=len(batches), loss=float(last["loss"].detach()), in_loop=stamps[-1] - stamps[0])


def matmul_peak(sizes=(1024, 2048), repeats: int = 3) -> dict[int, float]:
    """Median fp32 GFLOP/s of n x n @ n x n for each n (one untimed warm-up each)."""
    out = {}
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        c = torch.empty(n, n)
        torch.mm(a, b, out=c)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mm(a, b, out=c)
            times.append(time.perf_counter() - start)
        out[n] = 2 * n**3 / statistics.median(times) / 1e9
    return out


def flops_per_position(model, seq_len: int) -> tuple[float, dict[str, float]]:
    cfg = model.config
    d, L, V = cfg.n_embd, cfg.n_layer, cfg.vocab_size
    total = sum(p.numel() for p in model.parameters())  # tied: wte counted once
    non_embedding = total - V * d - cfg.n_positions * d
    parts = {"6*N_nonemb": 6 * non_embedding, "6*V*d (lm head)": 6 * V * d, "12*L*d*T (attention)": 12 * L * d * seq_len}
    return float(sum(parts.values())), parts | {"N_nonemb": non_embedding, "N_total": total}


def profile(tokenizer, docs, accelerator) -> None:
    """Where one epoch's time goes, for the bare loop and for ckl's loop (torch.profiler)."""
    import gc

    from torch.profiler import ProfilerActivity, profile as torch_profile, record_function

    times = []
    for _ in range(3):  # before any profiler exists (its records would inflate the heap)
        start = time.perf_counter()
        accelerator.free_memory()  # what `train` calls on its way out: it runs gc.collect()
        times.append(time.perf_counter() - start)
    print(f"accelerator.free_memory() (a full gc.collect() over {len(gc.get_objects()):,} tracked objects): "
          f"{statistics.median(times) * 1e3:.0f} ms per call")

    groups = [
        ("matmul (addmm/mm/bmm/linear)", ("addmm", "aten::mm", "bmm", "matmul", "linear")),
        ("attention kernel (sdpa)", ("scaled_dot_product", "_flash_attention", "_efficient_attention")),
        ("softmax / cross-entropy", ("softmax", "nll_loss", "cross_entropy")),
        ("layernorm", ("layer_norm",)),
        ("gelu", ("gelu",)),
        ("elementwise (AdamW, grad accum.)", ("_foreach", "addcdiv", "lerp", "sqrt", "aten::mul", "aten::add", "aten::div", "addcmul", "aten::copy_", "aten::fill_", "aten::zero_")),
        ("grad clip (norm)", ("linalg_vector_norm", "aten::norm", "clamp", "aten::stack")),
    ]

    def report(title: str, prof, wall: float) -> None:
        events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
        total = sum(e.self_cpu_time_total for e in events)
        shares: dict[str, float] = {}
        for e in events:
            name = next((g for g, keys in groups if any(k in e.key for k in keys)), "other aten ops")
            shares[name] = shares.get(name, 0.0) + e.self_cpu_time_total
        regions = {e.key: e.cpu_time_total for e in prof.key_averages() if e.key.startswith("bench:") or e.key.startswith("Optimizer.")}
        print(f"profile ({title}): aten self-CPU time by kind, {total / 1e3:.0f} ms of {wall * 1e3:.0f} ms wall "
              f"(the rest: Python, autograd engine, profiler)")
        for name, t in sorted(shares.items(), key=lambda kv: -kv[1]):
            print(f"  {name:32s} {t / 1e3:8.1f} ms  {t / total:6.1%}")
        if regions:
            print("  regions: " + ", ".join(f"{k} {v / 1e3:.0f} ms" for k, v in sorted(regions.items())))
        print("  top ops: " + ", ".join(f"{e.key} {e.self_cpu_time_total / 1e3:.0f}" for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:8]))

    model = lm.tiny_model(tokenizer, BENCH_SHAPE, seed=SEED)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LR)
    input_ids, mask, labels = pack(tokenizer, docs[0], BLOCK)
    batches = shard_batches(len(input_ids), BATCH, 0, 1, torch.Generator().manual_seed(SEED))
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for index in batches:
            with record_function("bench:forward"):
                loss = model(input_ids=input_ids[index], attention_mask=mask[index], labels=labels[index]).loss
            with record_function("bench:backward"):
                loss.backward()
            with record_function("bench:clip"):
                torch.nn.utils.clip_grad_norm_(params, CLIP)
            with record_function("bench:optimizer"):
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        wall = time.perf_counter() - start
    report("bare loop, 1 epoch", prof, wall)
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        run_ckl(tokenizer, docs, 1, accelerator)
        wall = time.perf_counter() - start
    report("ckl loop, 1 epoch", prof, wall)
    # how fast the model's own GEMM shapes run, against the square-matmul peak
    d, V, rows = model.config.n_embd, model.config.vocab_size, BATCH * BLOCK
    shapes = {f"{rows}x{d} @ {d}x{3 * d} (qkv)": (rows, d, 3 * d), f"{rows}x{d} @ {d}x{4 * d} (mlp up)": (rows, d, 4 * d),
              f"{rows}x{4 * d} @ {4 * d}x{d} (mlp down)": (rows, 4 * d, d), f"{rows}x{d} @ {d}x{V} (lm head)": (rows, d, V)}
    parts = []
    for name, (m, k, n) in shapes.items():
        a, b = torch.randn(m, k), torch.randn(k, n)
        torch.mm(a, b)
        times = []
        for _ in range(20):
            start = time.perf_counter()
            torch.mm(a, b)
            times.append(time.perf_counter() - start)
        parts.append(f"{name} {2 * m * k * n / statistics.median(times) / 1e9:.0f}")
    print("model GEMM shapes, fp32 GFLOP/s: " + "; ".join(parts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="epochs per timed training run")
    parser.add_argument("--rounds", type=int, default=5, help="timed (ckl, bare, matmul) rounds; medians are reported")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--max-seconds", type=float, default=150.0,
                        help="start no further round once the next one would end past this many seconds of timing")
    parser.add_argument("--profile", action="store_true", help="also print a torch.profiler breakdown of one epoch")
    parser.add_argument("--trainer", action="store_true",
                        help="also time Hugging Face Trainer (adamw_torch and its default adamw_torch_fused) and ckl with adamw_fused")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from accelerate import Accelerator
    import accelerate

    print(f"machine: {platform.machine()} {cpu_model()} cpu_count={os.cpu_count()} torch_threads={torch.get_num_threads()} "
          f"load_avg={'/'.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, accelerate {accelerate.__version__}, "
          f"python {platform.python_version()}")
    if torch.get_num_threads() > 1 and os.getloadavg()[0] > 0.5:
        print("note: other processes are using the CPUs; with several intra-op threads, OpenMP threads that wait "
              "for a descheduled sibling can slow every step many times over. "
              "Compare with --threads 1, or run with OMP_WAIT_POLICY=PASSIVE in the environment.")

    stream = build_world(WorldConfig(**WORLD))
    tokenizer = lm.make_tokenizer(tokenizer_corpus(stream))
    general = list(stream.general_train)
    # the pretraining documents of `ckl.train.pretrain`, rendered once up front for both loops
    docs = [render_documents(stream.base, stream.relations, rng_for(SEED, "pretrain", e)) + general for e in range(args.epochs)]
    packed = [pack(tokenizer, d, BLOCK) for d in docs]
    positions = sum(ids.numel() for ids, _, _ in packed)  # computed positions, padding included
    real = sum(int(m.sum()) for _, m, _ in packed)
    width = packed[0][0].shape[1]
    model = lm.tiny_model(tokenizer, BENCH_SHAPE, seed=SEED)
    per_position, parts = flops_per_position(model, width)
    cfg = model.config
    print(f"model: {cfg.model_type} n_layer={cfg.n_layer} n_embd={cfg.n_embd} n_head={cfg.n_head} vocab={cfg.vocab_size} "
          f"params={parts['N_total']:,} (non-embedding {parts['N_nonemb']:,}) attn={cfg._attn_implementation}")
    steps_per_epoch = [-(-ids.shape[0] // BATCH) for ids, _, _ in packed]
    print(f"data: {len(docs[0])} documents/epoch -> {packed[0][0].shape[0]} blocks of {width} -> {steps_per_epoch[0]} steps of "
          f"batch {BATCH}; {real:,} real of {positions:,} positions over {args.epochs} epochs ({real / positions:.1%} non-padding)")
    print("FLOPs/position (train) = " + " + ".join(f"{k} {v / 1e6:.3f}M" for k, v in parts.items() if not k.startswith("N_"))
          + f" = {per_position / 1e6:.3f}M")

    accelerator = Accelerator(cpu=True)
    start = time.perf_counter()
    warm = [docs[0][:150]]  # 2-3 steps of the same shapes: allocator, kernels, lazy imports
    run_ckl(tokenizer, warm, 1, accelerator)
    run_bare(tokenizer, warm, 1)
    matmul_peak(repeats=1)
    print(f"warm-up: {time.perf_counter() - start:.1f} s")

    ckl_runs, bare_runs, peaks = [], [], []
    sides: dict[str, list[dict]] = {"trainer adamw_torch": [], "trainer adamw_torch_fused": [], "ckl adamw_fused": []}
    scratch = tempfile.mkdtemp(prefix="ckl-bench-trainer-")
    if args.trainer:
        run_trainer(tokenizer, warm, 1, "adamw_torch", scratch)
        run_ckl(tokenizer, warm, 1, accelerator, "adamw_fused")
    timing = time.perf_counter()
    for r in range(args.rounds):
        elapsed = time.perf_counter() - timing
        if r and elapsed + elapsed / r > args.max_seconds:
            print(f"note: stopping after {r} rounds (--max-seconds {args.max_seconds:.0f}); medians are of {r}")
            break
        c = run_ckl(tokenizer, docs, args.epochs, accelerator)
        b = run_bare(tokenizer, docs, args.epochs)
        p = matmul_peak()
        ckl_runs.append(c), bare_runs.append(b), peaks.append(p)
        if args.trainer:
            sides["trainer adamw_torch"].append(run_trainer(tokenizer, docs, args.epochs, "adamw_torch", scratch))
            sides["trainer adamw_torch_fused"].append(run_trainer(tokenizer, docs, args.epochs, "adamw_torch_fused", scratch))
            sides["ckl adamw_fused"].append(run_ckl(tokenizer, docs, args.epochs, accelerator, "adamw_fused"))
            print("  " + ", ".join(f"{k} {v[-1]['seconds']:.2f} s" for k, v in sides.items()))
        print(f"round {r + 1}: ckl {c['seconds']:.2f} s, bare {b['seconds']:.2f} s, ratio {b['seconds'] / c['seconds']:.3f} "
              f"(between first and last step: {b['in_loop'] / c['in_loop']:.3f}); "
              f"matmul " + ", ".join(f"{n}: {g:.0f}" for n, g in p.items()) + f" GFLOP/s; load {os.getloadavg()[0]:.2f}")

    t_ckl = statistics.median(x["seconds"] for x in ckl_runs)
    t_bare = statistics.median(x["seconds"] for x in bare_runs)
    rounds = len(ckl_runs)
    ratio = statistics.median(b["seconds"] / c["seconds"] for c, b in zip(ckl_runs, bare_runs))
    ratio_loop = statistics.median(b["in_loop"] / c["in_loop"] for c, b in zip(ckl_runs, bare_runs))
    outside_ckl = statistics.median(c["seconds"] - c["in_loop"] for c in ckl_runs)
    outside_bare = statistics.median(b["seconds"] - b["in_loop"] for b in bare_runs)
    peak_by_size = {n: statistics.median(p[n] for p in peaks) for n in peaks[0]}
    peak = max(peak_by_size.values())
    c0, b0 = ckl_runs[0], bare_runs[0]
    assert c0["tokens"] == b0["tokens"] == real and c0["steps"] == b0["steps"], (c0, b0, real)
    same = "identical" if c0["loss"] == b0["loss"] else f"DIFFERENT ({c0['loss']:.6f} vs {b0['loss']:.6f})"
    print(f"both loops: {c0['steps']} steps, {real:,} tokens, final loss {c0['loss']:.6f} / {b0['loss']:.6f} ({same})")
    mfu_ckl = per_position * positions / t_ckl / (peak * 1e9)
    mfu_bare = per_position * positions / t_bare / (peak * 1e9)
    print(f"ckl loop:  {t_ckl:6.2f} s  {real / t_ckl:8.0f} tokens/s (non-padding)  {positions / t_ckl:8.0f} positions/s  "
          f"{per_position * positions / t_ckl / 1e9:6.1f} GFLOP/s  (median of {rounds})")
    print(f"bare loop: {t_bare:6.2f} s  {real / t_bare:8.0f} tokens/s (non-padding)  {positions / t_bare:8.0f} positions/s  "
          f"{per_position * positions / t_bare / 1e9:6.1f} GFLOP/s  (median of {rounds})")
    print("fp32 matmul peak (median per size): " + ", ".join(f"{n}x{n}: {g:.1f}" for n, g in peak_by_size.items())
          + f" GFLOP/s -> peak {peak:.1f} GFLOP/s")
    print(f"MFU (padded positions counted): ckl {mfu_ckl:.2f}, bare {mfu_bare:.2f}")
    print(f"ckl/bare speed, whole train() call: median of per-round ratios {ratio:.3f} (ratio of medians {t_bare / t_ckl:.3f})")
    print(f"ckl/bare speed, steps 2..{c0['steps']} only (first step to last): {ratio_loop:.3f}; time outside that span "
          f"(setup, packing epoch 1, first step, teardown): ckl {outside_ckl:.3f} s, bare {outside_bare:.3f} s")
    if args.trainer:
        t = {k: statistics.median(x["seconds"] for x in v) for k, v in sides.items()}
        per_round = lambda a, b: statistics.median(x["seconds"] / y["seconds"] for x, y in zip(a, b))  # noqa: E731
        tr, trf, cf = sides["trainer adamw_torch"], sides["trainer adamw_torch_fused"], sides["ckl adamw_fused"]
        print(f"trainer adamw_torch: {t['trainer adamw_torch']:.2f} s, final loss {tr[0]['loss']:.6f} "
              f"({'identical to ckl' if tr[0]['loss'] == c0['loss'] else 'ckl: %.6f' % c0['loss']})")
        print(f"trainer adamw_torch_fused (Trainer's default): {t['trainer adamw_torch_fused']:.2f} s; "
              f"ckl adamw_fused: {t['ckl adamw_fused']:.2f} s (final losses {trf[0]['loss']:.6f} / {cf[0]['loss']:.6f})")
        print(f"ckl/Trainer speed, both adamw_torch (multi-tensor): {per_round(tr, ckl_runs):.3f}")
        print(f"ckl/Trainer speed, ckl adamw vs Trainer's default fused: {per_round(trf, ckl_runs):.3f}")
        print(f"ckl/Trainer speed, both fused: {per_round(trf, cf):.3f}")
    shutil.rmtree(scratch, ignore_errors=True)
    if args.profile:
        profile(tokenizer, docs, accelerator)
    print(f"train loop speed (ckl vs bare PyTorch): {ratio:.2f}x  MFU: {mfu_ckl:.2f} of fp32 matmul peak")


if __name__ == "__main__":
    main()
