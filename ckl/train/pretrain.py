"""Train the embedded default base model on the base knowledge K0.

A word-level tokenizer and a small GPT-2-style model are trained from scratch on
biographies of every base person and question-answer lines of the people in the stream's
QA half (rendered anew each epoch with shuffled fact order and varied templates), plus
general text and the background documents, shuffled before packing, until the model
answers the
invariant statement probes with greedy exact match >= `target` and its paraphrase and
extraction probes >= `knowledge_target`, or the budget runs out.
The result is a standard Hugging Face directory (safetensors + tokenizer).
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ckl.data import cohorts
from ckl.model import lm
from ckl.train.config import PretrainConfig  # noqa: F401  (its home is ckl.train.config; imported here by callers)
from ckl.data.copy_mix import copy_documents, demonstration
from ckl.core.distributed import on_main
from ckl.data.facts import ALL_PROBE_KINDS, PROBE_KINDS
from ckl.data.stream import Stream, make_probes, render_documents
from ckl.train.loop import TrainConfig, rng_for, train


@dataclass
class PretrainResult:
    epochs: int
    accuracy: float  # statement accuracy on the target facts (what `target` is checked on)
    seconds: float
    reached_target: bool
    parameters: int
    history: list[tuple[int, float]]
    # statement / paraphrase / question / extraction accuracy on the target facts at the
    # last check (a kind absent from the stream is left out)
    knowledge: dict[str, float] = field(default_factory=dict)
    knowledge_history: list[tuple[int, dict[str, float]]] = field(default_factory=list)


def tokenizer_corpus(stream: Stream, extra: Sequence[str] = ()) -> list[str]:
    """Every text the stream can show the model: training renderings of all facts of all
    stages, every probe prompt and candidate, the general text, the domain corpora and `extra`."""
    facts = list(stream.base) + [f for ch in stream.stages for f in ch.taught()]
    texts = render_documents(facts, stream.relations, random.Random(0)) + list(extra)
    for probe in stream.probes(kinds=ALL_PROBE_KINDS):
        texts.append(probe.prompt)
        texts.extend(probe.candidates)
    corpus = [doc.text for doc in stream.corpus_documents()]  # the domains a model is later trained on (CPT)
    return texts + list(stream.general_train) + list(stream.background) + list(stream.general_heldout) + corpus


def knowledge_line(knowledge: dict[str, float]) -> str:
    """"statement 0.990, paraphrase 0.850, ..." in the order of PROBE_KINDS."""
    return ", ".join(f"{k} {knowledge[k]:.3f}" for k in PROBE_KINDS if k in knowledge)


def pretrain(stream: Stream, config: PretrainConfig, accelerator, out_dir: str | Path | None = None, progress=None, step_progress=None):
    """Pretrain a tiny model on `stream`'s base knowledge.

    `progress(epoch, knowledge)` is called after each accuracy check, with the accuracy
    of each probe kind on the target facts (`knowledge_line` formats it), and
    `step_progress(epoch, step, loss)` after each optimiser step.

    Returns:
        (model, tokenizer, PretrainResult); the model is also saved to `out_dir` if given.
    """
    from ckl.model.scoring import score_probes  # evaluation sits downstream of training

    start = time.perf_counter()
    extra = [demonstration("", "")] if config.copy_fraction else []
    if config.refusals:
        from ckl.data.formats.refusals import DEFAULT_FILE, read_refusals

        extra += read_refusals(DEFAULT_FILE)
    tokenizer = lm.make_tokenizer(tokenizer_corpus(stream, extra))
    shape = lm.TinyModelConfig(config.n_layer, config.n_embd, config.n_head, n_inner=config.n_inner)
    model = lm.tiny_model(tokenizer, shape, seed=config.seed).to(accelerator.device)
    if config.target_facts == "base":
        probes = make_probes(stream.base, stream.relations, "base", 0, "base", PROBE_KINDS, 10, qa_subjects=stream.qa_subjects)
    else:
        probes = [p for p in stream.probes() if p.cohort == cohorts.INVARIANT]
    kinds = np.array([p.kind for p in probes])
    general = list(stream.general_train) + list(stream.background)
    history: list[tuple[int, float]] = []
    knowledge_history: list[tuple[int, dict[str, float]]] = []

    def documents(epoch: int) -> list[str]:
        rng = rng_for(config.seed, "pretrain", epoch)
        copies = copy_documents(stream.base, stream.relations, rng, round(config.copy_fraction * len(stream.base)))
        questions = None if config.questions == -1 else config.questions
        docs = render_documents(stream.base, stream.relations, rng, questions=questions, qa_subjects=stream.qa_subjects, biographies=config.biographies)
        return docs + general + copies

    # A form is waited for only where the stream teaches it: an importer's held-out
    # paraphrases, without background text, are a test the model may fail by design.
    taught = {"extraction": stream.qa_subjects is not None, "paraphrase": bool(stream.background)}

    def reached(by_kind: dict[str, float]) -> bool:
        others = [by_kind[k] for k in ("paraphrase", "extraction") if k in by_kind and taught[k]]
        return by_kind.get("statement", 1.0) >= config.target and all(a >= config.knowledge_target for a in others)

    def check(epoch: int) -> bool:
        done = epoch + 1
        out_of_time = bool(config.max_seconds) and time.perf_counter() - start > config.max_seconds
        if config.max_seconds:  # clocks differ per process: all follow the main one's
            out_of_time = bool(on_main(accelerator, lambda: out_of_time, share=True))
        if done % config.eval_every and done != config.max_epochs and not out_of_time:
            return False
        em = score_probes(model, tokenizer, probes).em if probes else np.ones(0, dtype=bool)
        by_kind = {k: float(em[kinds == k].mean()) for k in PROBE_KINDS if (kinds == k).any()}
        accuracy = by_kind.get("statement", 1.0)
        model.train()
        history.append((done, accuracy))
        knowledge_history.append((done, by_kind))
        if progress:
            progress(done, by_kind)
        stop = reached(by_kind) or bool(out_of_time)
        return bool(on_main(accelerator, lambda: stop, share=True))  # every process stops at the same epoch

    train_config = TrainConfig(epochs=config.max_epochs, lr=config.lr, batch_size=config.batch_size, block_size=config.block_size, schedule=config.schedule, shuffle=config.shuffle)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        train(model, tokenizer, documents, train_config, accelerator, seed=config.seed, on_epoch_end=check, progress=step_progress)
    accuracy = history[-1][1] if history else 0.0
    result = PretrainResult(
        epochs=history[-1][0] if history else 0,
        accuracy=accuracy,
        seconds=time.perf_counter() - start,
        reached_target=reached(knowledge_history[-1][1]) if knowledge_history else False,
        parameters=lm.count_parameters(model)[1],
        history=history,
        knowledge=knowledge_history[-1][1] if knowledge_history else {},
        knowledge_history=knowledge_history,
    )
    model.config.ckl_pretrain = {"config": asdict(config), "epochs": result.epochs, "accuracy": accuracy}
    if out_dir is not None:
        on_main(accelerator, lambda: lm.save(model, tokenizer, out_dir))  # one writer under data parallelism
    return model, tokenizer, result
