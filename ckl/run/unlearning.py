"""The unlearning parts of a run (docs/unlearning.md), called by `ckl.run.experiment`:

- `describe`: stores the forgetting boundary's fact ids (the forgotten subjects' other,
  untouched facts; `Stream.boundary`) so the summary can pool their outcomes;
- `row_notes`: with `eval.unlearning`, the text-target metrics (MA, EL_n, fluency of
  answers to forgotten prompts) per cohort of row 0 and of the last row (before and
  after all the unlearning; EL_n costs a decoding per prefix, so not every row), stored
  in the row's notes;
- `attack_final`: with `eval.attack`, a relearning attack on a copy of each method's
  final model, stored in the `attacks` table (the run's checkpoint is only read).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from ckl.data import cohorts
from ckl.model import lm
from ckl.core.distributed import on_main
from ckl.run.attack import relearning_attack
from ckl.evaluate.extraction import ExtractionConfig, cohort_scores
from ckl.data.facts import Probe
from ckl.results.store import Store
from ckl.data.stream import Stream


def boundary_ids(stream: Stream) -> list[str]:
    """Ids of the boundary facts of every stage (untouched facts of forgotten subjects)."""
    return sorted({f.id for j in range(1, stream.T + 1) for f in stream.boundary(j)})


def describe(store: Store, stream: Stream) -> None:
    store.set_meta("boundary", boundary_ids(stream))


@lru_cache(maxsize=2)
def _judge(directory: str):
    """The base model, loaded once per process, that judges the fluency of answers."""
    model, _ = lm.load(directory)
    return model


def row_notes(model, tokenizer, probes: list[Probe], options: dict, judge_dir: str | Path | None) -> dict:
    """{cohort: cohort_scores} for every forget cohort, `invariant` and `unseen`
    (statement probes; the first `max_facts` of each)."""
    config = ExtractionConfig(**options)
    judge = None
    if judge_dir is not None and (Path(judge_dir) / "config.json").exists():
        judge = _judge(str(judge_dir)).to(next(model.parameters()).device)
    groups: dict[str, list[Probe]] = {}
    for p in probes:
        if p.kind == "statement" and (p.change == "forget" or p.cohort in (cohorts.INVARIANT, cohorts.UNSEEN)):
            groups.setdefault(p.cohort, []).append(p)
    return {name: cohort_scores(model, tokenizer, group, config, judge) for name, group in groups.items()}


def attack_final(config, spec, seed: int, stream: Stream, probes: list[Probe], store: Store | None, ckpt: Path, accelerator, say) -> None:
    """Run the configured relearning attack on the final model of (spec, seed) unless it
    is stored already or the run is incomplete. The model is the final checkpoint as the
    method left it: with its state restored (a memory or adapters kept beside the weights)."""
    from ckl.run.checkpoint import load as load_checkpoint
    from ckl.methods.base import build_method

    label, T = spec.display, stream.T
    if not any(ch.forget for ch in stream.stages):
        return
    todo = on_main(accelerator, lambda: T in store.completed_rows(label, seed) and T not in store.attacks(label, seed), share=True)
    if not todo:
        return
    model, tokenizer, _ = load_checkpoint(ckpt, build_method(spec.name, spec.options, where=label))
    model.to(accelerator.device)
    attack = config.eval.attack
    result = relearning_attack(model, tokenizer, stream, probes, attack, accelerator)
    on_main(accelerator, lambda: store.record_attack(label, seed, T, result.to_dict()))
    say(f"{label} seed {seed}: relearning attack ({attack.data}, {result.steps} steps): forgotten facts "
        f"{result.accuracy_before:.3f} -> {result.accuracy_after:.3f}")
