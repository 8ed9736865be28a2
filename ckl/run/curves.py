"""In-stage curves (`train.eval_every`): the chosen cohorts scored while a stage trains.

A stage's row is scored once, after the stage; a forgetting curve over steps needs points
inside it. `CurveRecorder` is the loop's `on_eval` callback (through
`StageContext.curve`): at each point it scores a fixed subset of the run's probes with
the same batched scorer as a row (sharded and gathered under data parallelism), and the
runner stores the stage's points (`Store.record_curve`) before the stage's checkpoint, so
a stage recomputed after a crash writes its curve again instead of adding to it.

The subset: the probes of the selected cohorts (`train.eval_cohorts`, names or
prefixes), at most `train.eval_sample` per cohort and probe kind, drawn from the run's
seed alone, so that every method of a seed is scored on the same probes. They are
tokenised and planned once per stage (`ProbeScorer`), and scored without their candidate
answers unless the run ranks candidates (`eval.metric: rank`): exact match and the
answer's log-probability come from the gold path alone, which halves a point's cost
(bench/eval_curve.py). Unranked points store no `rank_ok`.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Sequence

from ckl.core.distributed import gather, shard
from ckl.data import cohorts
from ckl.data.facts import Probe
from ckl.data.stream import stable_hash
from ckl.model.scoring import ProbeScorer
from ckl.results.store import CurvePoint, Outcome


def select_probes(probes: Sequence[Probe], selectors: Sequence[str], sample: int, seed: int) -> list[Probe]:
    """The probes a curve scores, in the run's probe order.

    Args:
        selectors: cohort names or prefixes (`ckl.data.cohorts.selects`).
        sample: at most this many per (cohort, kind); 0 keeps all.
        seed: the run's seed (the same subset for every method of a seed).
    """
    groups: dict[tuple[str, str], list[int]] = {}
    for i, probe in enumerate(probes):
        if any(cohorts.selects(s, probe.cohort) for s in selectors):
            groups.setdefault((probe.cohort, probe.kind), []).append(i)
    keep: list[int] = []
    for (cohort, kind), members in sorted(groups.items()):
        if sample and len(members) > sample:
            members = random.Random(stable_hash(str(seed), "curve", cohort, kind)).sample(members, sample)
        keep.extend(members)
    return [probes[i] for i in sorted(keep)]


class CurveRecorder:
    """Scores `probes` at each point of one stage and keeps the points (`points`).

    Args:
        rank: score the candidates too (`rank_ok`); without, only the gold answer's path.
    """

    def __init__(self, probes: Sequence[Probe], tokenizer, batch_size: int, accelerator=None, rank: bool = False) -> None:
        self.probes = list(probes)
        self.rank = rank
        self.accelerator = accelerator
        mine = shard(self.probes, accelerator)  # this process's share, the same at every point
        self.mine = mine if rank else [dataclasses.replace(p, candidates=()) for p in mine]
        self.scorer = ProbeScorer(tokenizer, self.mine, batch_size)
        self.points: list[CurvePoint] = []

    def __call__(self, model, step: int, epoch: int, loss: float) -> None:
        start = time.perf_counter()
        scores = self.scorer(model)
        outcomes = [Outcome(p.id, bool(e), bool(r) if self.rank else None, float(lp), "")
                    for p, e, r, lp in zip(self.mine, scores.em, scores.rank_ok, scores.logprob)]
        outcomes = gather(outcomes, self.accelerator)
        self.points.append(CurvePoint(step, epoch, None if step == 0 else float(loss), time.perf_counter() - start, outcomes))

    @property
    def seconds(self) -> float:
        """What scoring every point so far cost."""
        return sum(p.eval_seconds for p in self.points)
