"""Config -> runs (methods x seeds) over a stream, resumable.

For each method and seed:
    row 0  = evaluate(base model, every probe set)
    row i  = evaluate(method.apply(model, stage i), every probe set)
Each row is written to the store in one transaction as soon as it exists, after the
model checkpoint and the method's state for that stage are saved (atomically). Running
the same command again skips completed rows and continues from the last checkpoint, so
an interrupted run (even one killed with SIGKILL) finishes with the same results as an
uninterrupted one.

Under `accelerate launch` (several processes, data parallel) every process trains and
evaluates its share, and only the main process writes the world, the base model,
checkpoints and the store; decisions that depend on the disk are the main process's
(`ckl.core.distributed`). See docs/scaling.md.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from ckl.run import checkpoint
from ckl.run import unlearning as unlearning_run

from ckl.model import lm
from ckl.run.checkpoint import CheckpointError
from ckl.run.checkpoint import checkpoint_dir as _checkpoint_dir
from ckl.run.checkpoint import join_state as _join_state, load as load_checkpoint, split_state as _split_state  # noqa: F401 (kept importable here)
from ckl.run.config import ExperimentConfig, plain
from ckl.run.curves import CurveRecorder, select_probes
from ckl.train.config import PretrainConfig
from ckl.core.distributed import gather, is_main, on_main, precision, shard
from ckl.core.environment import environment
from ckl.core.errors import DivergenceError, InputError, WeakBaseError
from ckl.evaluate import answers as answers_eval
from ckl.model.scoring import known_fraction, negative_log_likelihood, perplexity_from_nll, score_probes
from ckl.data.check import check_stream, raise_errors
from ckl.data.facts import AS_OF, TWO_HOP, Probe, atomic_write_text
from ckl.methods.base import StageContext, apply_stage, build_method
from ckl.run.rundir import check_run_dir, claim_run_dir, experiment_hash
from ckl.results.store import Outcome, StageInfo, Store
from ckl.data.stream import Stream

Reporter = Callable[[str], None]


def make_accelerator():
    from accelerate import Accelerator

    return Accelerator(cpu=not torch.cuda.is_available())


def is_main_process() -> bool:
    """Whether this process reports and writes: always, unless started by `accelerate
    launch` with several processes, where only rank 0 does."""
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available()).is_main_process


def end_processes() -> None:
    """Under `accelerate launch` with several processes: wait for all, then close the
    process group (a process exiting with it open may abort in gloo's destructor)."""
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    if state.num_processes > 1:
        state.wait_for_everyone()
        state.destroy_process_group()


def prepare_stream(config: ExperimentConfig, run_dir: Path, accelerator=None) -> Stream:
    """Load the configured stream, or build the configured world into run_dir/world (on
    the main process; the others load what it wrote)."""
    if config.stream is not None:
        return Stream.load(config.stream)
    world_dir = run_dir / "world"
    on_main(accelerator, lambda: _build_world(config, world_dir))
    return Stream.load(world_dir)


def _build_world(config: ExperimentConfig, world_dir: Path) -> None:
    """Write the world to a private sibling and rename it, so that a crash never leaves
    half a world and two runs starting at once in one directory cannot collide (the world
    is deterministic: whichever rename wins, the content is the same)."""
    from ckl.data.world import build_world

    if world_dir.exists():
        return
    tmp = Path(tempfile.mkdtemp(dir=world_dir.parent, prefix=f".{world_dir.name}."))
    try:
        build_world(config.world).save(tmp)
        tmp.rename(world_dir)
    except OSError:
        if not world_dir.exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def prepare_model_dir(config: ExperimentConfig, stream: Stream, run_dir: Path, accelerator, say: Reporter, progress=None) -> Path:
    """The base model directory: the configured one, or a tiny model pretrained on K0
    (cached in run_dir/base_model)."""
    if config.model is not None:
        return Path(config.model)
    from ckl.train.pretrain import knowledge_line, pretrain

    out = run_dir / "base_model"
    if on_main(accelerator, lambda: (out / "config.json").exists(), share=True):
        return out
    pcfg = config.pretrain or PretrainConfig()
    say(f"pretraining the base model ({pcfg.n_layer} layers, width {pcfg.n_embd}) on {len(stream.base)} base facts")
    if progress:
        progress.start("pretraining (epochs)", pcfg.max_epochs)
    _, _, result = pretrain(  # every process trains (data parallel); the main one saves
        stream, pcfg, accelerator, out,
        progress=lambda e, k: say(f"  epoch {e}: {knowledge_line(k)}"),
        step_progress=(lambda e, s, loss: progress.epoch(e + 1, s, loss)) if progress else None,
    )
    on_main(accelerator, lambda: atomic_write_text(run_dir / "pretrain.json", json.dumps(asdict(result), indent=2)))
    if progress:
        progress.finish(result.epochs, "target reached" if result.reached_target else "budget spent, target missed")
    verdict = "reached" if result.reached_target else "did NOT reach"
    say(f"pretrained in {result.seconds:.0f}s, {result.epochs} epochs: {knowledge_line(result.knowledge)} ({verdict} target {pcfg.target} on statements)")
    return out


def weak_base(run_dir: Path) -> dict | None:
    """What `pretrain.json` says of a pretrained base model that missed its target
    (accuracies, targets, epochs), or None when it reached it or was not pretrained here."""
    path = run_dir / "pretrain.json"
    if not path.exists():
        return None
    result = json.loads(path.read_text())
    if result.get("reached_target", True):
        return None
    return {"knowledge": result.get("knowledge", {}), "accuracy": result.get("accuracy"), "epochs": result.get("epochs")}


def _check_base(config: ExperimentConfig, run_dir: Path, store, accelerator, say: Reporter) -> None:
    """Stop before any method runs when the pretrained base missed its target, unless the
    config allows it; then the store records it, and `ckl show` and the report say so."""
    weak = weak_base(run_dir)
    if weak is None:
        return
    from ckl.train.pretrain import knowledge_line

    spec = config.pretrain or PretrainConfig()
    what = f"the pretrained base model missed its target ({knowledge_line(weak['knowledge'])} after {weak['epochs']} epochs; " \
           f"targets: statements {spec.target}, paraphrase and extraction {spec.knowledge_target})"
    if not config.allow_weak_base:
        raise WeakBaseError(
            f"{what}, so every number measured on it would mean little. Give pretraining more room "
            f"(pretrain.max_epochs {spec.max_epochs}, pretrain.max_seconds, pretrain.lr) or lower the targets, "
            f"delete {run_dir / 'base_model'} and run again; or pass --allow-weak-base (allow_weak_base: true) to run on it anyway"
        )
    say(f"warning: {what}; running on it because allow_weak_base is set")
    on_main(accelerator, lambda: store.set_meta("weak_base", weak))


def evaluate_row(model, tokenizer, probes: list[Probe], heldout: tuple[str, ...], batch_size: int, accelerator=None) -> tuple[list[Outcome], float | None]:
    """Score every probe (batched) and the held-out perplexity. Under data parallelism
    each process scores a contiguous share of the probes and of the held-out texts, and
    the outcomes (in probe order) and the log-likelihood sums are gathered on all."""
    mine = shard(probes, accelerator)
    outcomes = []
    if mine:
        scores = score_probes(model, tokenizer, mine, batch_size=batch_size)
        outcomes = [
            Outcome(p.id, bool(e), bool(r), float(lp), pred)
            for p, e, r, lp, pred in zip(mine, scores.em, scores.rank_ok, scores.logprob, scores.predicted)
        ]
    outcomes = gather(outcomes, accelerator)
    if not heldout:
        return outcomes, None
    sums = gather([negative_log_likelihood(model, tokenizer, shard(list(heldout), accelerator))], accelerator)
    ppl = perplexity_from_nll(sum(s[0] for s in sums), sum(s[1] for s in sums))
    if ppl is None:
        raise ValueError("perplexity needs at least one held-out text with a token to predict")
    return outcomes, ppl


def domain_losses(model, tokenizer, heldout: dict[int, tuple[str, ...]], batch_size: int, accelerator=None) -> dict[str, float]:
    """Stage -> mean negative log-likelihood per token (nats) of that stage's held-out
    domain corpus (continual pre-training streams), every domain at every row, so that the
    row-by-domain matrix shows learning (the diagonal) and forgetting (below it). Documents
    longer than the model's context are scored in windows (`negative_log_likelihood`)."""
    context = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", None)
    out = {}
    for stage, texts in sorted(heldout.items()):
        sums = gather([negative_log_likelihood(model, tokenizer, shard(list(texts), accelerator), batch_size, max_length=context)], accelerator)
        nll, tokens = sum(s[0] for s in sums), sum(s[1] for s in sums)
        if tokens:
            out[str(stage)] = nll / tokens
    return out


def run_experiment(config: ExperimentConfig, run_dir: str | Path, say: Reporter = print, progress=None) -> Path:
    """Run (or resume) every method x seed of `config` in `run_dir`.

    Args:
        say: receives one-line status messages.
        progress: optional object with `start(label, total)`, `advance()` and
            `train_step(step, loss)` used for progress bars.

    Raises:
        InputError: the run directory holds results of a different config.
    """
    from ckl.run.config import check_world, unsupported_methods

    world = check_world(config)  # a world that cannot be built stops here, before anything is written
    for i, message in unsupported_methods(config):
        raise InputError("<config>", None, f"methods[{i}]", message)
    run_dir = Path(run_dir)
    resolved = plain(config)
    accelerator = make_accelerator()
    if not is_main(accelerator):  # one voice: the main process reports
        say, progress = (lambda message: None), None
    # a bad stream or model directory stops the run here, before anything is written
    stream = Stream.load(config.stream) if config.stream is not None else None
    findings = []  # what loads but would make the numbers wrong (ckl check): errors stop here, warnings print once every check passed
    if stream is not None:
        findings = check_stream(config.stream, rank_metric=config.eval.metric == "rank", stream=stream)
        raise_errors(findings)
    if config.model is not None:
        lm.check_directory(Path(config.model), config.allow_pickle, config.trust_remote_code)
        _check_tokenizer(config, stream if stream is not None else world)
    _check_block_sizes(config)
    for finding in findings:
        say(str(finding))
    source = stream if stream is not None else world
    for kind, has, what in ((TWO_HOP, lambda r: r.two_hop, "two-hop chains"), (AS_OF, lambda r: r.dated, "dated relations")):
        if source is not None and any(has(r) for r in source.relations.values()) and kind not in config.eval.kinds:
            say(f"note: the stream has {what} but eval.kinds ({', '.join(config.eval.kinds)}) lacks {kind}: its {kind} probes are not scored")
    experiment = experiment_hash(experiment_identity(resolved))
    on_main(accelerator, lambda: check_run_dir(run_dir, experiment))  # a directory ckl does not own is refused here
    store = on_main(accelerator, lambda: _open_store(run_dir, resolved, experiment))  # None on the other processes
    try:
        with precision(config.precision, accelerator):  # bf16: every forward pass below, training and scoring
            _run_all(config, stream, run_dir, store, accelerator, say, progress)
    finally:
        if store is not None:
            store.close()
    return run_dir


def _run_all(config: ExperimentConfig, stream: Stream | None, run_dir: Path, store, accelerator, say: Reporter, progress) -> None:
    """The world, the base model, then every method x seed (and its attack)."""
    if stream is None:
        stream = prepare_stream(config, run_dir, accelerator)
    model_dir = prepare_model_dir(config, stream, run_dir, accelerator, say, progress)
    _check_base(config, run_dir, store, accelerator, say)
    probes = stream.probes(kinds=config.eval.kinds, max_candidates=config.eval.max_candidates)
    on_main(accelerator, lambda: _describe(store, probes, stream.T, config.eval.metric))
    on_main(accelerator, lambda: unlearning_run.describe(store, stream))
    for spec in config.methods:
        for seed in config.seeds:
            _run_one(config, spec, seed, stream, model_dir, probes, store, run_dir, accelerator, say, progress)
            if config.eval.attack is not None:
                unlearning_run.attack_final(config, spec, seed, stream, probes, store,
                                            _checkpoint_dir(run_dir, spec.display, seed), accelerator, say)


def _open_store(run_dir: Path, resolved: dict, experiment: str) -> Store:
    claim_run_dir(run_dir, experiment)  # the marker first: the directory is ckl's from here on
    store = Store(run_dir / "results.sqlite")
    try:
        _check_same_experiment(store, resolved, run_dir)
        store.set_meta("config", resolved)
        # every environment that added results here (a resume on another thread count shows)
        env, seen = environment(), store.get_meta("environments") or []
        if env not in seen:
            store.set_meta("environments", [*seen, env])
        atomic_write_text(run_dir / "config.json", json.dumps(resolved, indent=2))
        claim_run_dir(run_dir, experiment)  # an older run of this experiment, stored under earlier defaults
    except BaseException:
        store.close()
        raise
    return store


def _describe(store: Store, probes: list[Probe], T: int, metric: str) -> None:
    store.add_probes(probes)
    store.set_meta("T", T)
    store.set_meta("metric", metric)


# Bumped when a default changes what an unchanged config means (2: the world's QA half and
# background people, shuffled packing by default). Results of another protocol are not
# mixed into one table.
PROTOCOL = 2


def _check_block_sizes(config: ExperimentConfig) -> None:
    """Every packed block must fit the model's context (a longer one fails mid-run with an
    IndexError in the position embeddings): checked before anything is written."""
    if config.model is not None:
        limit, where = lm.context_length(Path(config.model)), f"the model's context length (config.json of {config.model})"
    else:
        from ckl.model.lm import TinyModelConfig

        limit, where = TinyModelConfig().n_positions, "the context length of the model ckl pretrains"
        block = (config.pretrain.block_size if config.pretrain else 128)
        if block > limit:
            raise InputError("<config>", None, "pretrain.block_size", f"{block} is above {where}, {limit}")
    if limit is None:
        return
    for i, spec in enumerate(config.methods):
        method = build_method(spec.name, spec.options, where=spec.display)
        sizes = {"train.block_size": method.train_config.block_size if method.train_config else None}
        for part in method.parts:
            sizes[f"{part.name}.block_size"] = getattr(getattr(part, "config", None), "block_size", None)
        for key, block in sizes.items():
            if isinstance(block, int) and block > limit:
                raise InputError("<config>", None, f"methods[{i}].{key}", f"{block} is above {where}, {limit}; lower it to at most {limit}")


def experiment_identity(resolved: dict) -> dict:
    """What makes two configs one experiment: everything but the name, methods and seeds
    (methods and seeds may be added to a run later)."""
    # precision joined the config later: at its default it is the experiment every earlier run was
    return {k: v for k, v in resolved.items() if k not in ("name", "methods", "seeds", "allow_weak_base") and not (k == "precision" and v == "fp32")}


def _check_tokenizer(config: ExperimentConfig, stream: Stream) -> None:
    """A user's model must encode the stream's (or the built world's) words, before anything is written."""
    facts = [*stream.base, *(r.fact for r in stream.records()), *stream.unseen]
    tokenizer = lm.load_tokenizer(config.model, config.trust_remote_code)
    corpus = [doc.text for doc in stream.corpus_documents()]
    lm.check_vocabulary(tokenizer, lm.stream_texts(stream.relations, facts, corpus), str(Path(config.model) / "tokenizer"))


def _check_same_experiment(store: Store, resolved: dict, run_dir: Path) -> None:
    """A run directory holds one experiment: the same stream, model, evaluation. Methods
    and seeds may be added later (finished rows are kept and reused), but a method whose
    options changed under the same label would mix two protocols in one table: refused.
    Every method spec ever run here is remembered in the store's `methods` meta."""
    fixed = experiment_identity
    previous = store.get_meta("config")
    if previous is not None:
        # a config stored by an older ckl lacks options added since: read it with today's
        # defaults, so that a new option left at its default is not a different experiment
        try:
            previous = plain(ExperimentConfig.from_dict(previous))
        except (ValueError, InputError):
            pass  # no longer valid at all: it differs, and the check below says so
    if previous is not None and store.get_meta("protocol") != PROTOCOL:
        raise InputError(str(run_dir), None, None,
                         f"holds results made by an earlier ckl whose defaults differ (protocol {store.get_meta('protocol') or 1}, now "
                         f"{PROTOCOL}: the world's QA half and background people, shuffled packing); choose another output directory")
    store.set_meta("protocol", PROTOCOL)
    if previous is not None and fixed(previous) != fixed(resolved):
        changed = sorted(k for k in fixed(resolved) if fixed(previous).get(k) != resolved[k])
        raise InputError(str(run_dir), None, ", ".join(changed) or None,
                         "holds results of a different experiment (stream, model or evaluation differ); choose another output directory")

    def add_methods(known: dict | None) -> dict:  # in one transaction: two runs starting at once keep both
        known = known or {m.get("label") or m["name"]: m for m in (previous or {}).get("methods", [])}
        for i, spec in enumerate(resolved["methods"]):
            label = spec.get("label") or spec["name"]
            if label in known and known[label] != spec:
                raise InputError(str(run_dir), None, f"methods[{i}]",
                                 f"method {label!r} already ran here with other options; give the new variant its own `label`")
            known[label] = spec
        return known

    store.update_meta("methods", add_methods)
    labels = [spec.get("label") or spec["name"] for spec in resolved["methods"]]
    store.update_meta("method_order", lambda order: (order or []) + [label for label in labels if label not in (order or [])])


def _run_one(config, spec, seed, stream, model_dir, probes, store, run_dir, accelerator, say, progress) -> None:
    label, T = spec.display, stream.T
    ckpt = _checkpoint_dir(run_dir, label, seed)
    # what is on disk, as the main process sees it (it alone writes; the others follow)
    attack = config.eval.attack is not None and any(ch.forget for ch in stream.stages)
    done, failed, resumable, damaged, final_needed = on_main(accelerator, lambda: _progress_on_disk(store, label, seed, ckpt, T, attack), share=True)
    if failed:
        say(f"{label} seed {seed}: a stage failed earlier (see `ckl show`); not retried")
        return
    if damaged:
        say(f"warning: {label} seed {seed}: checkpoint {ckpt} discarded: {damaged}; recomputing from the base model")
    if done >= set(range(T + 1)) and (resumable or not final_needed):
        return
    method = build_method(spec.name, spec.options, where=label)
    start_row = 0
    if resumable:
        try:
            model, tokenizer, state = checkpoint.load_verified(ckpt, method, label, T)
        except CheckpointError as err:  # what the checksums cannot see (a checkpoint from before them)
            say(f"warning: {label} seed {seed}: checkpoint {ckpt} discarded: {err}; recomputing from the base model")
            on_main(accelerator, lambda: checkpoint.discard(ckpt))
            method, resumable = build_method(spec.name, spec.options, where=label), False
    if resumable:
        start_row = state["stage"]
        if start_row not in done:  # checkpoint written, row not yet: evaluate it now
            _record(store, label, seed, start_row, model, tokenizer, probes, stream, config, StageInfo(**state["info"]), accelerator, method)
            done.add(start_row)
        say(f"{label} seed {seed}: resuming after stage {start_row}")
    else:
        model, tokenizer = lm.load(model_dir, allow_pickle=config.allow_pickle, trust_remote_code=config.trust_remote_code)
        if 0 not in done:
            trainable, total = lm.count_parameters(model)
            _record(store, label, seed, 0, model, tokenizer, probes, stream, config, StageInfo(total_params=total), accelerator, method)
    model.to(accelerator.device)
    if progress:
        progress.start(f"{label} (seed {seed})", T - start_row)
    curve_probes = _curve_probes(method, probes, seed)
    for change in stream.stages[start_row:]:
        recorder = None if curve_probes is None else CurveRecorder(curve_probes, tokenizer, config.eval.batch_size, accelerator, rank=config.eval.metric == "rank")
        ctx = StageContext(
            relations=stream.relations, base=stream.base, stage=change.stage, seed=seed,
            tokenizer=tokenizer, accelerator=accelerator, change=change,
            progress=(lambda e, s, loss: progress.train_step(s, loss)) if progress else None,
            model_dir=model_dir, general_text=stream.general_train, background=stream.background, qa_subjects=stream.qa_subjects,
            known=known_fraction(tokenizer, stream.relations, config.eval.batch_size), curve=recorder,
        )
        try:
            model, stats = apply_stage(method, model, change, ctx)
        except DivergenceError as err:
            info = StageInfo(status="failed", notes={"error": str(err)})
            on_main(accelerator, lambda: store.record_row(label, seed, change.stage, [], info))
            kept = f"last good checkpoint kept in {ckpt}" if change.stage > 1 else "the base model is the last good state"
            say(f"{label} seed {seed}: stage {change.stage} FAILED ({err}); {kept}")
            return
        notes = {"not_applied": stats.not_applied} if stats.not_applied else {}
        if method.train_config and method.train_config.until:
            notes["epochs"] = stats.epochs  # where the stopping rule ended the stage
        if recorder is not None:  # before the checkpoint: a stage recomputed after a crash replaces its curve
            notes["curve_seconds"] = round(recorder.seconds, 3)  # included in the row's seconds
            on_main(accelerator, lambda: store.record_curve(label, seed, change.stage, recorder.points))
        for kind, n in stats.not_applied.items():
            say(f"{label}: does not support '{kind}'; {n} {kind} request(s) of stage {change.stage} NOT applied")
        info = StageInfo(
            seconds=stats.seconds, trainable_params=stats.trainable_params, total_params=stats.total_params,
            tokens_seen=stats.tokens_seen, notes=notes, peak_memory_mb=_peak_memory_mb(),
        )
        on_main(accelerator, lambda: checkpoint.save(ckpt, model, tokenizer, change.stage, method.state_dict(), info, label))
        if change.stage not in done:  # rows kept from before a discarded checkpoint are not evaluated again
            _record(store, label, seed, change.stage, model, tokenizer, probes, stream, config, info, accelerator, method)
        if progress:
            progress.advance()


def _curve_probes(method, probes: list[Probe], seed: int) -> list[Probe] | None:
    """The probes an in-stage curve scores (`train.eval_every`), or None without curves."""
    config = method.train_config
    if config is None or not config.eval_every:
        return None
    return select_probes(method.transform_probes(probes), config.eval_cohorts, config.eval_sample, seed)


def _progress_on_disk(store: Store, label: str, seed: int, ckpt: Path, T: int, attack: bool) -> tuple[set[int], bool, bool, str | None, bool]:
    """(rows recorded, whether a stage failed, whether a verified checkpoint exists to
    resume from, why a checkpoint was discarded or None, whether the final model is still
    needed for the relearning attack). A checkpoint is verified (and discarded when
    damaged) only when it is needed: rows are missing, or the final model is to be attacked."""
    done = set(store.completed_rows(label, seed))
    failed = any(i["status"] == "failed" for i in store.stage_infos(label, seed))
    final_needed = attack and T not in store.attacks(label, seed)
    checkpoint.adopt_legacy(ckpt.parent.parent, label, seed, store.get_meta("method_order") or [])
    if not checkpoint.exists(ckpt):
        return done, failed, False, None, final_needed
    if failed or (done >= set(range(T + 1)) and not final_needed):
        return done, failed, True, None, final_needed
    try:
        checkpoint.verify(ckpt, label, T)
    except CheckpointError as err:
        checkpoint.discard(ckpt)
        return done, failed, False, str(err), final_needed
    return done, failed, True, None, final_needed


def _record(store, label, seed, row, model, tokenizer, probes, stream, config, info: StageInfo, accelerator=None, method=None) -> None:
    probes = method.transform_probes(probes)  # in-context methods (IKE, RAG) rewrite prompts; ids stay
    info.notes.update(method.row_notes())  # e.g. RAG's retrieval recall on these probes
    info.notes["state_bytes"] = checkpoint.state_bytes(method.state_dict())  # what it keeps beside the weights (an index, a memory, a buffer)
    outcomes, ppl = evaluate_row(model, tokenizer, probes, stream.general_heldout, config.eval.batch_size, accelerator)
    info.perplexity = ppl
    if stream.domain_heldout:
        info.notes["domain_nll"] = domain_losses(model, tokenizer, stream.domain_heldout, config.eval.batch_size, accelerator)
    if config.eval.unlearning is not None and row in (0, stream.T):  # text-target metrics, first and last row, main process
        on_main(accelerator, lambda: info.notes.update(unlearning=unlearning_run.row_notes(
            model, tokenizer, probes, asdict(config.eval.unlearning), config.model or store.path.parent / "base_model")))
    if config.eval.answers and row in (0, stream.T):  # what the answers were, first and last row, main process
        on_main(accelerator, lambda: info.notes.update(answers=answers_eval.row_notes(model, tokenizer, probes, stream, config.eval.batch_size)))
    on_main(accelerator, lambda: store.record_row(label, seed, row, outcomes, info))


def _peak_memory_mb() -> float | None:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    except ImportError:  # pragma: no cover - non-Unix
        return None
