"""The registry of reported numbers: one line per number, read by every surface that shows
numbers, so that a number added here appears on all of them.

    ckl show, ckl compare, the demo   the key tables (`table=True`, in registry order)
    the demo's summary.json           every learning number
    the HTML report                   the learning table and the unlearning section
    MLflow                            every learning and unlearning number of each seed
    ckl update                        the gates (`gate=True`, family "update")

A family's summary computes its built-in numbers itself (`ckl.results.summary`,
`ckl.results.unlearning`, `ckl.results.editing`), with the definitions in their
docstrings and docs/metrics.md. A number added from outside gives a `compute` function,
called with a `SeedView` after the built-ins; adding a metric to every surface is then
that function and one `register_number` line. `ckl update` measures its gate numbers on
its own keep-set, so a gate needs code there too (ckl/app/update/run.py).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ckl.evaluate.metrics import format_fuar, mean

FAMILIES = ("learning", "unlearning", "editing", "update")


@dataclass(frozen=True)
class SeedView:
    """What a `compute` function reads: one (method, seed) of a run's store, the run's
    metric ("em" or "rank") and probe kinds, and the number of stages T."""

    store: Any  # ckl.results.store.Store
    method: str
    seed: int
    metric: str
    kinds: tuple[str, ...]
    T: int


@dataclass(frozen=True)
class Number:
    key: str  # the summary key (unique within its family)
    label: str  # the column header
    family: str  # one of FAMILIES
    fmt: str | Callable[[Any], str] = "{:.3f}"  # a format string, or a function of the value
    better: str = "higher"  # "higher", "lower", or "" (a cost or a context number)
    table: bool = False  # a column of its family's key table
    gate: bool = False  # usable as `ckl update --gate KEY>=X` (family "update")
    help: str = ""
    compute: Callable[[SeedView], float | None] | None = field(default=None, compare=False)
    optional: bool = False  # a table column only when some method measured it (e.g. domain numbers of CPT streams)
    defined_by: str = ""  # a summary flag: a table column only when some entry has it true (FUAR: the stream had facts to gain)

    def format(self, value) -> str:
        """The value as its table shows it ("-" when not measured)."""
        if callable(self.fmt):
            return self.fmt(value)
        return "-" if value is None else self.fmt.format(value)


REGISTRY: dict[tuple[str, str], Number] = {}


def register_number(number: Number) -> Number:
    """Add a number to every surface of its family.

    Raises:
        ValueError: an unknown family or `better`, or the key is taken in that family.
    """
    if number.family not in FAMILIES:
        raise ValueError(f"number {number.key!r}: family must be one of {', '.join(FAMILIES)}, got {number.family!r}")
    if number.better not in ("higher", "lower", ""):
        raise ValueError(f"number {number.key!r}: better must be 'higher', 'lower' or '', got {number.better!r}")
    if (number.family, number.key) in REGISTRY:
        raise ValueError(f"number {number.key!r} is already registered in family {number.family!r}")
    REGISTRY[(number.family, number.key)] = number
    return number


def unregister_number(family: str, key: str) -> None:
    """Remove a number (tests that register one clean up with this)."""
    REGISTRY.pop((family, key), None)


def numbers(family: str) -> list[Number]:
    """Every number of `family`, in registry order."""
    return [n for (f, _), n in REGISTRY.items() if f == family]


def columns(family: str) -> list[Number]:
    """The key table's columns of `family`, in registry order."""
    return [n for n in numbers(family) if n.table]


def shown(cols: list[Number], entries) -> list[Number]:
    """`cols` less the optional ones no entry (a method's summary) measured, and those whose
    `defined_by` flag no entry has (FUAR on a stream with nothing to gain, whose "no gain"
    would read as a result)."""
    entries = list(entries)
    return [n for n in cols if (not n.optional or any(e.get(n.key) is not None for e in entries))
            and not (n.defined_by and entries and not any(e.get(n.defined_by, True) for e in entries))]


def keys(family: str) -> tuple[str, ...]:
    return tuple(n.key for n in numbers(family))


def mean_std(values) -> tuple[float | None, float | None]:
    """Mean and population standard deviation over seeds, skipping unmeasured (None)
    values: (None, None) when none was measured, std 0.0 with one value."""
    measured = [v for v in values if v is not None]
    if not measured:
        return None, None
    return mean(measured), statistics.pstdev(measured) if len(measured) > 1 else 0.0


def computed(family: str, view: SeedView) -> dict[str, float | None]:
    """The added (non-built-in) numbers of `family` for one seed."""
    return {n.key: n.compute(view) for n in numbers(family) if n.compute is not None}


def _fuar(value) -> str:
    return format_fuar(value)  # None: no seed gained anything ("no gain")


# Columns of streams that have them only (continual pre-training's domains)
_OPTIONAL = frozenset({"domain_gain", "domain_forgetting", "domain_ppl", "two_hop_before", "two_hop_invariant",
                       "two_hop_acquisition", "two_hop_update", "two_hop_stale", "as_of_invariant", "as_of_update",
                       "rewind_before", "rewind", "rewind_updated", "hallucinated_before", "hallucinated", "no_object",
                       "forget_hallucinated"})


_DEFINED_BY = {"fuar": "fuar_defined"}  # FUAR exists only on a stream with facts to gain


def _register(family: str, rows) -> None:
    for key, label, fmt, better, table, help in rows:
        register_number(Number(key, label, family, fmt, better, table, family == "update", help, optional=key in _OPTIONAL,
                               defined_by=_DEFINED_BY.get(key, "") if family == "learning" else ""))


# key, label, format, better, in the key table, help
_register("learning", (
    ("retention", "retention", "{:.3f}", "higher", True, "R[T][invariant] / R[0][invariant]: base knowledge kept"),
    ("acquisition", "acquired", "{:.3f}", "higher", True, "accuracy after the last stage on every learned fact"),
    ("update", "updated", "{:.3f}", "higher", True, "accuracy after the last stage on the new object of updated facts"),
    ("stale", "stale", "{:.3f}", "lower", True, "accuracy after the last stage on the old object of updated facts"),
    ("fuar", "FUAR", _fuar, "lower", True, "forgotten invariant facts per fact gained (Jang et al. 2022)"),
    ("acc", "ACC", "{:.3f}", "higher", True, "mean accuracy over cohorts after the last stage"),
    ("bwt", "BWT", "{:+.3f}", "higher", True, "backward transfer (Lopez-Paz & Ranzato 2017)"),
    ("fwt", "FWT", "{:+.3f}", "higher", False, "forward transfer (Lopez-Paz & Ranzato 2017)"),
    ("forgetting", "forgetting", "{:.3f}", "lower", True, "mean forgetting (Chaudhry et al. 2018)"),
    ("superficial", "superficial", "{:.3f}", "", False, "of the invariant facts no longer stated by row T, the share whose gold answer still ranks first among the candidates (SEFE's superficial forgetting; the rest is essential)"),
    ("plasticity", "plasticity", "{:.3f}", "higher", False, "accuracy on each stage's cohort just after it"),
    ("invariant_before", "invariant before", "{:.3f}", "", False, "accuracy on the invariant facts at row 0"),
    ("invariant_after", "invariant after", "{:.3f}", "higher", False, "accuracy on the invariant facts at row T"),
    ("extraction_retention", "extr. ret.", "{:.3f}", "higher", True, "retention on extraction probes (questions never trained)"),
    ("extraction_acquisition", "extr. acq.", "{:.3f}", "higher", True, "acquisition on extraction probes"),
    ("extraction_invariant", "extr. invariant", "{:.3f}", "higher", False, "invariant facts at row T on extraction probes"),
    ("paraphrase_retention", "para. ret.", "{:.3f}", "higher", True, "retention on held-out paraphrase probes"),
    ("paraphrase_acquisition", "para. acq.", "{:.3f}", "higher", True, "acquisition on held-out paraphrase probes"),
    ("paraphrase_invariant", "para. invariant", "{:.3f}", "higher", False, "invariant facts at row T on paraphrase probes"),
    ("two_hop_before", "2-hop before", "{:.3f}", "", False, "two-hop probes of the invariant facts at row 0 (the base model composing two facts)"),
    ("two_hop_invariant", "2-hop inv.", "{:.3f}", "higher", True, "two-hop probes of the invariant facts at row T"),
    ("two_hop_acquisition", "2-hop acq.", "{:.3f}", "higher", True, "two-hop probes through the learned facts at row T"),
    ("two_hop_update", "2-hop upd.", "{:.3f}", "higher", True, "two-hop probes through updated facts' new objects at row T (does the update propagate?)"),
    ("two_hop_stale", "2-hop stale", "{:.3f}", "lower", True, "two-hop probes through updated facts' old objects at row T"),
    ("as_of_invariant", "as-of inv.", "{:.3f}", "higher", True, "as_of probes (\"As of 2020, X works for\", a dated world) of the invariant facts at row T"),
    ("as_of_update", "as-of upd.", "{:.3f}", "higher", True, "as_of probes of updated facts as of their update's year (the new object) at row T"),
    ("rewind_before", "rewind before", "{:.3f}", "", False, "as_of probes of updated facts as of the year their old object became true (its target) at row 0"),
    ("rewind", "rewind", "{:.3f}", "higher", True, "as_of probes of updated facts as of the year their old object became true, answered with it at row T: does a prompted cutoff rewind the model past the update?"),
    ("rewind_updated", "upd. + rewind", "{:.3f}", "higher", True, "updated facts that give at row T both their new object (asked plainly) and their old one (asked as of its year): a rewind that is not an update left unapplied"),
    ("hallucinated_before", "halluc. before", "{:.3f}", "", False, "eval.answers: free greedy answers at row 0 that name another object of the world than the fact's (true-now probes)"),
    ("hallucinated", "halluc.", "{:.3f}", "lower", True, "eval.answers: free greedy answers at row T that name another object of the world than the fact's object or a former one (KCTS's hallucinated content), over the probes whose answer is true now"),
    ("no_object", "no object", "{:.3f}", "", True, "eval.answers: free greedy answers at row T that name no object of the world (true-now probes)"),
    ("forget_hallucinated", "forget halluc.", "{:.3f}", "", False, "eval.answers: answers at row T to the forgotten facts that name another object of the world (a replacement, not a refusal)"),
    ("question_acquisition", "question acq.", "{:.3f}", "higher", False, "acquisition on question probes"),
    ("forget_kept", "forget kept", "{:.3f}", "lower", False, "accuracy after the last stage on facts asked to be forgotten"),
    ("perplexity_before", "ppl before", "{:.2f}", "", False, "held-out general-text perplexity at row 0"),
    ("perplexity_after", "ppl", "{:.2f}", "lower", True, "held-out general-text perplexity at row T"),
    ("perplexity_delta", "ppl delta", "{:+.2f}", "lower", False, "perplexity after - before"),
    ("perplexity_ratio", "ppl ratio", "{:.3f}", "lower", False, "perplexity after / before"),
    ("domain_gain", "dom. gain", "{:.3f}", "higher", True, "continual pre-training: loss (nats/token) each stage removed from its own domain's held-out text, mean over stages"),
    ("domain_forgetting", "dom. fgt", "{:+.3f}", "lower", True, "continual pre-training: loss (nats/token) regained on earlier domains by the last stage, mean over them"),
    ("domain_ppl", "dom. ppl", "{:.2f}", "lower", True, "continual pre-training: geometric mean of the domains' held-out perplexities at row T"),
    ("trainable_params", "trainable", "{:,.0f}", "", True, "parameters trained (the most of any stage)"),
    ("seconds", "seconds", "{:.1f}", "", True, "wall time of all stages"),
    ("tokens_seen", "tokens", "{:,.0f}", "", False, "training tokens of all stages"),
))

_register("unlearning", (
    ("forget_before", "forget before", "{:.3f}", "", True, "accuracy on every forgotten fact at row 0"),
    ("forget_after", "forget after", "{:.3f}", "lower", True, "accuracy on every forgotten fact at row T"),
    ("floor", "floor", "{:.3f}", "", True, "never-seen accuracy (what forgetting can reach)"),
    ("efficacy", "efficacy", "{:.2f}", "higher", True, "(before - after) / (before - floor)"),
    ("kept_before", "kept before", "{:.3f}", "", False, "invariant facts at row 0"),
    ("kept_after", "kept after", "{:.3f}", "higher", False, "invariant facts at row T"),
    ("retention", "retention", "{:.3f}", "higher", True, "invariant facts after / before"),
    ("kfr", "KFR", "{:.3f}", "higher", False, "ReLearn's knowledge forgetting rate, exact-match form: forgotten facts no longer answered at row T"),
    ("krr", "KRR", "{:.3f}", "higher", False, "ReLearn's knowledge retention rate, exact-match form: invariant facts still answered at row T"),
    ("boundary_before", "boundary before", "{:.3f}", "", False, "forgotten subjects' other facts at row 0"),
    ("boundary_after", "boundary after", "{:.3f}", "higher", False, "forgotten subjects' other facts at row T"),
    ("boundary_retention", "boundary", "{:.3f}", "higher", True, "forgotten subjects' other facts after / before"),
    ("attack_original", "attack original", "{:.3f}", "", False, "the attacked facts at row 0"),
    ("attack_before", "attack before", "{:.3f}", "lower", False, "forgotten facts before the relearning attack"),
    ("attack_after", "after attack", "{:.3f}", "lower", True, "forgotten facts after the relearning attack"),
    ("recovered", "recovered", "{:.2f}", "lower", True, "(after - before) / (original - before) of the attack"),
    ("attack_unseen_before", "attack unseen before", "{:.3f}", "", False, "never-taught facts before the attack"),
    ("attack_unseen_after", "attack unseen after", "{:.3f}", "", False, "never-taught facts after the attack"),
    ("ma_before", "MA before", "{:.3f}", "", False, "memorization accuracy of the forgotten text targets at row 0"),
    ("ma_after", "MA", "{:.3f}", "lower", True, "memorization accuracy of the forgotten text targets at row T"),
    ("el_before", "EL before", "{:.3f}", "", False, "extraction likelihood of the forgotten text targets at row 0"),
    ("el_after", "EL", "{:.3f}", "lower", True, "extraction likelihood of the forgotten text targets at row T"),
    ("answer_ppl_before", "answer ppl before", "{:.1f}", "", False, "perplexity of the forgotten answers at row 0"),
    ("answer_ppl_after", "answer ppl", "{:.1f}", "higher", True, "perplexity of the forgotten answers at row T"),
    ("distinct_before", "distinct before", "{:.2f}", "", False, "distinct-token share of generations at row 0"),
    ("distinct_after", "distinct", "{:.2f}", "higher", True, "distinct-token share of generations at row T"),
    ("kept_ma_after", "kept MA", "{:.3f}", "higher", True, "memorization accuracy of the kept facts at row T"),
    ("ls_before", "LS before", "{:.3f}", "", False, "ReLearn's Linguistic Score of the answers to forgotten prompts at row 0"),
    ("ls_after", "LS", "{:.3f}", "higher", True, "ReLearn's Linguistic Score of the answers to forgotten prompts at row T (fluent, varied answers)"),
    ("refusal_after", "refusals", "{:.3f}", "", False, "share of forgotten facts answered with a refusal at row T (TOFU's refusal sentences)"),
    ("kept_refusal_after", "kept refusals", "{:.3f}", "lower", False, "share of kept facts answered with a refusal at row T: over-forgetting (SafeEraser's safe answer refusal rate)"),
    ("kept_ls_after", "kept LS", "{:.3f}", "higher", True, "ReLearn's Linguistic Score of the answers to kept prompts at row T"),
    ("seconds", "seconds", "{:.1f}", "", True, "wall time of all stages"),
))

_register("editing", (
    ("efficacy", "efficacy", "{:.3f}", "higher", True, "edited prompts giving the new object (greedy)"),
    ("generalization", "generalization", "{:.3f}", "higher", True, "paraphrases of edited prompts giving the new object"),
    ("locality", "locality", "{:.3f}", "higher", True, "neighbourhood prompts whose prediction equals the unedited model's"),
    ("locality_acc", "locality acc.", "{:.3f}", "higher", True, "neighbourhood prompts still answered correctly"),
    ("es", "ES", "{:.3f}", "higher", True, "efficacy score: P(new) > P(true) on edit prompts"),
    ("ps", "PS", "{:.3f}", "higher", True, "paraphrase score: P(new) > P(true) on paraphrases"),
    ("ns", "NS", "{:.3f}", "higher", True, "neighbourhood score: P(true) > P(new) on neighbourhood prompts"),
    ("score", "score", "{:.3f}", "higher", True, "harmonic mean of ES, PS, NS"),
    ("retention", "retention", "{:.3f}", "higher", True, "untouched facts after / before"),
))

_register("update", (
    ("retention", "retention", "{:.3f}", "higher", False, "keep-set accuracy after / before (the facts that must stay)"),
    ("keep", "keep", "{:.3f}", "higher", False, "keep-set accuracy after the update"),
    ("acquisition", "acquisition", "{:.3f}", "higher", False, "accuracy on the learned (new) facts"),
    ("update", "update", "{:.3f}", "higher", False, "accuracy on the new object of updated facts"),
    ("stale", "stale", "{:.3f}", "lower", False, "accuracy on the old object of updated facts"),
    ("forget", "forget", "{:.3f}", "lower", False, "accuracy on the facts asked to be forgotten"),
))
