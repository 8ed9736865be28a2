"""Config -> runs (methods x seeds) over a stream, resumable.

For each method and seed:
    row 0  = evaluate(base model, every probe set)
    row i  = evaluate(method.apply(model, stage i), every probe set)
Each row is written to the store in one transaction as soon as it exists, after the
model checkpoint and the method's state for that stage are saved (atomically). Running
the same command again skips completed rows and continues from the last checkpoint, so
an interrupted run finishes with the same results as an uninterrupted one.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ckl import lm
from ckl.config import ExperimentConfig
from ckl.errors import DivergenceError, InputError
from ckl.evaluate.scoring import perplexity, score_probes
from ckl.facts import Probe, atomic_write_text
from ckl.methods.base import StageContext, build_method
from ckl.store import Outcome, StageInfo, Store
from ckl.stream import Stream

Reporter = Callable[[str], None]


def make_accelerator():
    from accelerate import Accelerator

    return Accelerator(cpu=not torch.cuda.is_available())


def prepare_stream(config: ExperimentConfig, run_dir: Path) -> Stream:
    """Load the configured stream, or build the configured world into run_dir/world."""
    if config.stream is not None:
        return Stream.load(config.stream)
    from ckl.world import WorldConfig, build_world

    world_dir = run_dir / "world"
    if (world_dir / "facts.jsonl").exists():
        return Stream.load(world_dir)
    stream = build_world(WorldConfig(**config.world.model_dump()))
    stream.save(world_dir)
    return Stream.load(world_dir)


def prepare_model_dir(config: ExperimentConfig, stream: Stream, run_dir: Path, accelerator, say: Reporter, progress=None) -> Path:
    """The base model directory: the configured one, or a tiny model pretrained on K0
    (cached in run_dir/base_model)."""
    if config.model is not None:
        return Path(config.model)
    from ckl.pretrain import PretrainConfig, pretrain

    out = run_dir / "base_model"
    if (out / "config.json").exists():
        return out
    spec = config.pretrain.model_dump() if config.pretrain else {}
    pcfg = PretrainConfig(**spec)
    say(f"pretraining the base model ({pcfg.n_layer} layers, width {pcfg.n_embd}) on {len(stream.base)} base facts")
    if progress:
        progress.start("pretraining (epochs)", pcfg.max_epochs)
    _, _, result = pretrain(
        stream, pcfg, accelerator, out,
        progress=lambda e, a: say(f"  epoch {e}: invariant accuracy {a:.3f}"),
        step_progress=(lambda e, s, loss: progress.epoch(e + 1, s, loss)) if progress else None,
    )
    atomic_write_text(run_dir / "pretrain.json", json.dumps(asdict(result), indent=2))
    verdict = "reached" if result.reached_target else "did NOT reach"
    say(f"pretrained in {result.seconds:.0f}s, {result.epochs} epochs: accuracy {result.accuracy:.3f} ({verdict} target {pcfg.target})")
    return out


def evaluate_row(model, tokenizer, probes: list[Probe], heldout: tuple[str, ...], batch_size: int) -> tuple[list[Outcome], float | None]:
    """Score every probe (batched) and the held-out perplexity."""
    scores = score_probes(model, tokenizer, probes, batch_size=batch_size)
    outcomes = [
        Outcome(p.id, bool(e), bool(r), float(lp), pred)
        for p, e, r, lp, pred in zip(probes, scores.em, scores.rank_ok, scores.logprob, scores.predicted)
    ]
    ppl = perplexity(model, tokenizer, list(heldout)) if heldout else None
    return outcomes, ppl


def _checkpoint_dir(run_dir: Path, label: str, seed: int) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in label)
    return run_dir / "checkpoints" / f"{safe}-seed{seed}"


def run_experiment(config: ExperimentConfig, run_dir: str | Path, say: Reporter = print, progress=None) -> Path:
    """Run (or resume) every method x seed of `config` in `run_dir`.

    Args:
        say: receives one-line status messages.
        progress: optional object with `start(label, total)`, `advance()` and
            `train_step(step, loss)` used for progress bars.

    Raises:
        InputError: the run directory holds results of a different config.
    """
    from ckl.config import unsupported_methods

    for i, message in unsupported_methods(config):
        raise InputError("<config>", None, f"methods[{i}]", message)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = config.model_dump(mode="json")
    with Store(run_dir / "results.sqlite") as store:
        _check_same_experiment(store, resolved, run_dir)
        store.set_meta("config", resolved)
        atomic_write_text(run_dir / "config.json", json.dumps(resolved, indent=2))
        accelerator = make_accelerator()
        stream = prepare_stream(config, run_dir)
        model_dir = prepare_model_dir(config, stream, run_dir, accelerator, say, progress)
        probes = stream.probes(kinds=config.eval.kinds, max_candidates=config.eval.max_candidates)
        store.add_probes(probes)
        store.set_meta("T", stream.T)
        store.set_meta("metric", config.eval.metric)
        for spec in config.methods:
            for seed in config.seeds:
                _run_one(config, spec, seed, stream, model_dir, probes, store, run_dir, accelerator, say, progress)
    return run_dir


def _check_same_experiment(store: Store, resolved: dict, run_dir: Path) -> None:
    """A run directory holds one experiment: the same stream, model, evaluation. Methods
    and seeds may be added later (finished rows are kept and reused), but a method whose
    options changed under the same label would mix two protocols in one table: refused.
    Every method spec ever run here is remembered in the store's `methods` meta."""
    fixed = lambda c: {k: v for k, v in c.items() if k not in ("name", "methods", "seeds")}  # noqa: E731
    previous = store.get_meta("config")
    if previous is not None and fixed(previous) != fixed(resolved):
        changed = sorted(k for k in fixed(resolved) if fixed(previous).get(k) != resolved[k])
        raise InputError(str(run_dir), None, ", ".join(changed) or None,
                         "holds results of a different experiment (stream, model or evaluation differ); choose another output directory")
    known = store.get_meta("methods") or {m.get("label") or m["name"]: m for m in (previous or {}).get("methods", [])}
    for i, spec in enumerate(resolved["methods"]):
        label = spec.get("label") or spec["name"]
        if label in known and known[label] != spec:
            raise InputError(str(run_dir), None, f"methods[{i}]",
                             f"method {label!r} already ran here with other options; give the new variant its own `label`")
        known[label] = spec
    store.set_meta("methods", known)


def _run_one(config, spec, seed, stream, model_dir, probes, store, run_dir, accelerator, say, progress) -> None:
    label, T = spec.display, stream.T
    done = set(store.completed_rows(label, seed))
    infos = {i["row"]: i for i in store.stage_infos(label, seed)}
    if any(i["status"] == "failed" for i in infos.values()):
        say(f"{label} seed {seed}: a stage failed earlier (see `ckl show`); not retried")
        return
    if done >= set(range(T + 1)):
        return
    method = build_method(spec.name, spec.options, where=label)
    ckpt = _checkpoint_dir(run_dir, label, seed)
    state_path = ckpt / "ckl_state.json"
    pending = ckpt.with_name(ckpt.name + ".new")
    if not state_path.exists() and (pending / "ckl_state.json").exists():
        pending.rename(ckpt)  # a crash hit between writing a checkpoint and its rename
    start_row = 0
    if state_path.exists():
        state = json.loads(state_path.read_text())
        model, tokenizer = lm.load(ckpt)
        method.load_state_dict(_join_state(state["method"], ckpt / "ckl_state.safetensors"))
        start_row = state["stage"]
        if start_row not in done:  # checkpoint written, row not yet: evaluate it now
            _record(store, label, seed, start_row, model, tokenizer, probes, stream, config, StageInfo(**state["info"]))
            done.add(start_row)
        say(f"{label} seed {seed}: resuming after stage {start_row}")
    else:
        model, tokenizer = lm.load(model_dir, allow_pickle=config.allow_pickle, trust_remote_code=config.trust_remote_code)
        if 0 not in done:
            trainable, total = lm.count_parameters(model)
            _record(store, label, seed, 0, model, tokenizer, probes, stream, config, StageInfo(total_params=total))
    model.to(accelerator.device)
    if progress:
        progress.start(f"{label} (seed {seed})", T - start_row)
    for change in stream.stages[start_row:]:
        ctx = StageContext(
            relations=stream.relations, base=stream.base, stage=change.stage, seed=seed,
            tokenizer=tokenizer, accelerator=accelerator, change=change,
            progress=(lambda e, s, loss: progress.train_step(s, loss)) if progress else None,
        )
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed * 1000 + change.stage)
                model, stats = method.apply(model, change, ctx)
            _check_finite(model)
        except DivergenceError as err:
            info = StageInfo(status="failed", notes={"error": str(err)})
            store.record_row(label, seed, change.stage, [], info)
            say(f"{label} seed {seed}: stage {change.stage} FAILED ({err}); last good checkpoint kept in {ckpt}")
            return
        notes = {"not_applied": stats.not_applied} if stats.not_applied else {}
        for kind, n in stats.not_applied.items():
            say(f"{label}: does not support '{kind}'; {n} {kind} request(s) of stage {change.stage} NOT applied")
        info = StageInfo(
            seconds=stats.seconds, trainable_params=stats.trainable_params, total_params=stats.total_params,
            tokens_seen=stats.tokens_seen, notes=notes, peak_memory_mb=_peak_memory_mb(),
        )
        _save_checkpoint(ckpt, model, tokenizer, change.stage, method.state_dict(), info)
        _record(store, label, seed, change.stage, model, tokenizer, probes, stream, config, info)
        if progress:
            progress.advance()


def _record(store, label, seed, row, model, tokenizer, probes, stream, config, info: StageInfo) -> None:
    outcomes, ppl = evaluate_row(model, tokenizer, probes, stream.general_heldout, config.eval.batch_size)
    info.perplexity = ppl
    store.record_row(label, seed, row, outcomes, info)


def _save_checkpoint(ckpt: Path, model, tokenizer, stage: int, method_state: dict, info: StageInfo) -> None:
    """Model and method state of one stage, replacing the previous stage's atomically."""
    tmp = ckpt.with_name(ckpt.name + ".new")
    shutil.rmtree(tmp, ignore_errors=True)
    lm.save(model, tokenizer, tmp)
    data, tensors = _split_state(method_state)
    if tensors:
        save_file(tensors, str(tmp / "ckl_state.safetensors"))
    state = {"stage": stage, "method": data, "info": asdict(info)}
    atomic_write_text(tmp / "ckl_state.json", json.dumps(state))
    old = ckpt.with_name(ckpt.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if ckpt.exists():
        ckpt.rename(old)
    tmp.rename(ckpt)
    shutil.rmtree(old, ignore_errors=True)


def _split_state(state: dict) -> tuple[dict, dict[str, torch.Tensor]]:
    """Method state -> (JSON part, tensors keyed "part/key") for checkpointing."""
    data: dict = {}
    tensors: dict[str, torch.Tensor] = {}
    for part, values in state.items():
        data[part] = {}
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{part}/{key}"] = value.detach().cpu().contiguous()
            else:
                data[part][key] = value
    return data, tensors


def _join_state(data: dict, tensor_file: Path) -> dict:
    state = {part: dict(values) for part, values in data.items()}
    if tensor_file.exists():
        for name, tensor in load_file(str(tensor_file)).items():
            part, key = name.split("/", 1)
            state.setdefault(part, {})[key] = tensor
    return state


def _check_finite(model) -> None:
    for name, p in model.named_parameters():
        if not torch.isfinite(p).all():
            raise DivergenceError(f"weights of {name} are not finite")


def _peak_memory_mb() -> float | None:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    except ImportError:  # pragma: no cover - non-Unix
        return None
