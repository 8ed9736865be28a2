"""Per-method summaries of a run: the numbers `ckl show`, `ckl demo` and reports print.

Reads the store, then calls the pure metric functions of `ckl.evaluate.metrics`.
Definitions (all on the run's matrix metric, exact match unless configured otherwise,
over statement probes unless `kinds` says otherwise):
    retention      R[T][invariant] / R[0][invariant]
    acquisition    accuracy after the last stage on every learned (new) fact
    update         accuracy after the last stage on the new object of updated facts
    stale          accuracy after the last stage on the old object of updated facts
    generalization the same acquisition/update cohorts, on held-out paraphrase probes
    extraction_*   retention and acquisition on extraction probes: questions about the
                   people whose question-answer lines were never trained (knowledge
                   extraction, Allen-Zhu & Li, "Physics of Language Models 3.1")
    paraphrase_*   retention and acquisition on held-out paraphrase probes
    two_hop_*      accuracy on two-hop probes (a world with two_hop chains) of the
                   invariant facts (before and after), learned facts, updated facts' new
                   answers and their stale ones: whether knowledge composes and whether an
                   update propagates (MQuAKE, Zhong et al. 2023)
    as_of_*        accuracy on as_of probes (a dated world: "As of 2020, X works for") of the
    rewind         invariant facts and the updated facts' new objects, and `rewind`: the
                   stale cohort's as_of probes, whose target is the old object as of its
                   own year (prompted knowledge cutoffs: can a prompt rewind the model to
                   before the update?), at row T and at row 0; rewind_updated: the
                   updated facts answered both ways at row T (the new object plainly,
                   the old one as of its year), so an update left unapplied is no rewind
    hallucinated   with eval.answers: of the free greedy answers at row T to the probes
                   whose answer is true now, the share naming another object of the
                   world (neither the fact's object nor a former one: KCTS's hallucinated
                   content); no_object, the share naming none; hallucinated_before at row
                   0; forget_hallucinated, of the forgotten facts' answers
                   (ckl.evaluate.answers)
    superficial    of the invariant facts whose exact match was lost by row T, the share
                   whose gold answer still ranks first among the candidates (SEFE's
                   superficial forgetting: the form is lost, the content is not)
    domain_*       continual pre-training streams (a domain corpus per stage): each stage's
                   loss drop on its own domain, the loss regained on earlier domains by
                   the end, the domains' final perplexity (ckl.evaluate.metrics.domain_*)
    FUAR           multi-stage form (Jang et al. 2022): forgetting of invariant facts per
                   fact gained, stage by stage
    ACC, BWT, FWT, forgetting, plasticity on the cohort matrix (GEM 2017, Chaudhry 2018)
"""

from __future__ import annotations

from typing import Any

from ckl.data import cohorts
from ckl.data.facts import AS_OF, TWO_HOP
from ckl.evaluate import metrics as M
from ckl.results import numbers
from ckl.results.store import Store, metric_column


def _pooled(store: Store, method: str, seed: int, row: int, groups: set[str], changes: set[str], metric: str, kinds) -> float | None:
    """Accuracy at `row` pooled over probes of the given cohorts and change kinds."""
    rows = [o for c in groups for o in store.outcomes(method, seed, row, cohort=c) if o["change"] in changes and o["kind"] in kinds]
    if not rows:
        return None
    key = metric_column(metric)
    return sum(o[key] for o in rows) / len(rows)


def _rewind_updated(store: Store, method: str, seed: int, T: int, stages: set[str], stales: set[str], metric: str, kinds) -> float | None:
    """Of the updated facts with an as_of probe, the share that at row T give their new
    object (every probe of `kinds`) and their old one as of its year (the stale cohort's
    as_of probe): a rewind that is not the update left unapplied. None without as_of probes."""
    key = metric_column(metric)
    old = {o["fact_id"]: bool(o[key]) for c in stales for o in store.outcomes(method, seed, T, cohort=c)
           if o["kind"] == AS_OF and o["change"] in ("update", "edit")}
    if not old:
        return None
    new: dict[str, bool] = {}
    for c in stages:
        for o in store.outcomes(method, seed, T, cohort=c):
            if o["fact_id"] in old and o["kind"] in kinds and o["change"] in ("update", "edit"):
                new[o["fact_id"]] = new.get(o["fact_id"], True) and bool(o[key])
    both = [old[f] and new[f] for f in old if f in new]
    return sum(both) / len(both) if both else None


def _superficial(store: Store, method: str, seed: int, T: int, metric: str, kinds) -> float | None:
    """Of the invariant facts whose exact match was lost between row 0 and row T (probes
    with candidates to rank), the share whose gold answer still ranks first: forgetting of
    the answer's form, not of its content (SEFE's superficial forgetting; the rest is
    essential). None under the rank metric or when nothing was forgotten."""
    if metric != "em":
        return None
    ranked = {p.id for p in store.probes() if len(p.candidates) > 1}
    lost = [o for o in store.forgotten(method, seed, cohorts.INVARIANT, 0, T, metric="em", kinds=kinds) if o["probe_id"] in ranked]
    return M.mean(bool(o["rank_ok"]) for o in lost)


def summarize_seed(store: Store, method: str, seed: int, metric: str = "em", kinds=("statement",)) -> dict[str, Any]:
    T = int(store.get_meta("T"))
    acc = store.accuracy(method, seed, metric=metric, kinds=kinds)
    infos = store.stage_infos(method, seed)
    out: dict[str, Any] = {"method": method, "seed": seed, "complete": len(acc) == T + 1 and all(i["status"] == "ok" for i in infos)}
    if not out["complete"]:
        out["failed"] = [i["row"] for i in infos if i["status"] == "failed"]
        return out
    R = M.cohort_matrix(acc, T)
    out["matrix"] = R
    out.update(M.summary_metrics(R))
    stages, stales, forgets = (set(cohorts.names(prefix, T)) for prefix in (cohorts.STAGE, cohorts.STALE, cohorts.FORGET))
    out["invariant_before"], out["invariant_after"] = R[0][0], R[T][0]
    out["acquisition"] = _pooled(store, method, seed, T, stages, {"learn"}, metric, kinds)
    out["update"] = _pooled(store, method, seed, T, stages, {"update", "edit"}, metric, kinds)
    out["stale"] = _pooled(store, method, seed, T, stales, {"update", "edit"}, metric, kinds)
    out["forget_kept"] = _pooled(store, method, seed, T, forgets, {"forget"}, metric, kinds)
    out["paraphrase_acquisition"] = _pooled(store, method, seed, T, stages, {"learn"}, metric, ("paraphrase",))
    out["paraphrase_invariant"] = _pooled(store, method, seed, T, {cohorts.INVARIANT}, {"base"}, metric, ("paraphrase",))
    out["question_acquisition"] = _pooled(store, method, seed, T, stages, {"learn"}, metric, ("question",))
    out["extraction_acquisition"] = _pooled(store, method, seed, T, stages, {"learn"}, metric, ("extraction",))
    out["extraction_invariant"] = _pooled(store, method, seed, T, {cohorts.INVARIANT}, {"base"}, metric, ("extraction",))
    # two-hop probes (a world with two_hop chains): accuracy, not retention (the base model's
    # own two-hop accuracy may be near chance, and a ratio to it would mean little)
    hop = (TWO_HOP,)
    out["two_hop_before"] = _pooled(store, method, seed, 0, {cohorts.INVARIANT}, {"base"}, metric, hop)
    out["two_hop_invariant"] = _pooled(store, method, seed, T, {cohorts.INVARIANT}, {"base"}, metric, hop)
    out["two_hop_acquisition"] = _pooled(store, method, seed, T, stages, {"learn"}, metric, hop)
    out["two_hop_update"] = _pooled(store, method, seed, T, stages, {"update", "edit"}, metric, hop)
    out["two_hop_stale"] = _pooled(store, method, seed, T, stales, {"update", "edit"}, metric, hop)
    # as_of probes (a dated world): on the stale cohort the old object is the target
    dated = (AS_OF,)
    out["as_of_invariant"] = _pooled(store, method, seed, T, {cohorts.INVARIANT}, {"base"}, metric, dated)
    out["as_of_update"] = _pooled(store, method, seed, T, stages, {"update", "edit"}, metric, dated)
    out["rewind_before"] = _pooled(store, method, seed, 0, stales, {"update", "edit"}, metric, dated)
    out["rewind"] = _pooled(store, method, seed, T, stales, {"update", "edit"}, metric, dated)
    out["rewind_updated"] = _rewind_updated(store, method, seed, T, stages, stales, metric, kinds)
    for kind in ("extraction", "paraphrase"):  # retention of base knowledge asked another way
        by_kind = store.accuracy(method, seed, metric=metric, kinds=(kind,))
        out[f"{kind}_retention"] = M.retention(M.cohort_matrix(by_kind, T)) if len(by_kind) == T + 1 else None
    out["superficial"] = _superficial(store, method, seed, T, metric, kinds)
    by_change = store.accuracy_by_change(method, seed, metric=metric, kinds=kinds)
    gains = []
    for j in range(1, T + 1):
        def at(row: int, change: str) -> float | None:
            return by_change.get(row, {}).get((cohorts.name(cohorts.STAGE, j), change))

        ul = (at(j - 1, "update"), at(j, "update"))
        nl = (at(j - 1, "learn"), at(j, "learn"))
        gains.append(M.StageGain(
            il_before=R[j - 1][0], il_after=R[j][0],
            ul_before=ul[0] if None not in ul else None, ul_after=ul[1] if None not in ul else None,
            nl_before=nl[0] if None not in nl else None, nl_after=nl[1] if None not in nl else None,
        ))
    out["fuar"] = M.fuar_stages(gains)
    # a stream with nothing to gain (continual pre-training on corpora alone) has no FUAR at
    # all, which is not the "no gain" of a method that learned nothing it was taught
    out["fuar_defined"] = any(g.ul_before is not None or g.nl_before is not None for g in gains)
    ppl = [i["perplexity"] for i in infos]
    out["perplexity_before"], out["perplexity_after"] = ppl[0], ppl[-1]
    if ppl[0] and ppl[-1]:
        change = M.perplexity_change(ppl[0], ppl[-1])
        out["perplexity_delta"], out["perplexity_ratio"] = change["delta"], change["ratio"]
    domains = [(i["notes"] or {}).get("domain_nll") or {} for i in infos]  # continual pre-training streams only
    if any(domains):
        out["domain_gain"], out["domain_forgetting"], out["domain_ppl"] = M.domain_gain(domains), M.domain_forgetting(domains), M.domain_perplexity(domains)
    # what the answers were (eval.answers, ckl.evaluate.answers): rows 0 and T only
    said = [((i["notes"] or {}).get("answers") or {}) for i in (infos[0], infos[-1])]
    out["hallucinated_before"] = said[0].get("known", {}).get("other_object")
    out["hallucinated"] = said[1].get("known", {}).get("other_object")
    out["no_object"] = said[1].get("known", {}).get("no_object")
    out["forget_hallucinated"] = said[1].get("forget", {}).get("other_object")
    out["trainable_params"] = max(i["trainable_params"] for i in infos)
    out["seconds"] = sum(i["seconds"] for i in infos)
    out["tokens_seen"] = sum(i["tokens_seen"] for i in infos)
    out["not_applied"] = {}
    for i in infos:
        for kind, n in (i["notes"] or {}).get("not_applied", {}).items():
            out["not_applied"][kind] = out["not_applied"].get(kind, 0) + n
    out.update(numbers.computed("learning", numbers.SeedView(store, method, seed, metric, tuple(kinds), T)))
    return out


def summarize(store: Store, metric: str | None = None, kinds=("statement",)) -> dict[str, dict[str, Any]]:
    """Per method: the mean over seeds of each number, its standard deviation under
    `<key>_std` (0 with one seed), the seeds, and the per-seed summaries."""
    metric = metric or store.get_meta("metric", "em")
    per_method: dict[str, list[dict]] = {}
    for method, seed in store.runs():
        per_method.setdefault(method, []).append(summarize_seed(store, method, seed, metric, kinds))
    # the order of the experiment's `methods` list (a method re-run later keeps its place)
    place = {label: i for i, label in enumerate(store.get_meta("method_order") or [])}
    per_method = dict(sorted(per_method.items(), key=lambda kv: place.get(kv[0], len(place))))
    out: dict[str, dict[str, Any]] = {}
    for method, seeds in per_method.items():
        done = [s for s in seeds if s["complete"]]
        entry: dict[str, Any] = {"seeds": [s["seed"] for s in done], "incomplete_seeds": [s["seed"] for s in seeds if not s["complete"]]}
        for key in numbers.keys("learning"):
            entry[key], entry[f"{key}_std"] = numbers.mean_std(s.get(key) for s in done)
        entry["fuar_no_gain_seeds"] = sum(1 for s in done if s.get("fuar") is None and s.get("fuar_defined", True))
        entry["fuar_defined"] = any(s.get("fuar_defined", True) for s in done)
        entry["not_applied"] = done[0]["not_applied"] if done else {}
        entry["per_seed"] = seeds
        out[method] = entry
    return out


def run_summary(store: Store, summary: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """What a run's summary.json holds (`ckl run`, `ckl demo`): every learning number of
    the registry per method (means over complete seeds, `<key>_std` beside each), the
    unlearning numbers of methods that applied deletions, the run's metric, what it was
    measured on (threads, CPU, versions) and whether its base model missed its target.
    `summary`: `summarize(store)` when the caller has it already."""
    from ckl.results.unlearning import has_forget, summarize_unlearning

    summary = summarize(store) if summary is None else summary
    keys = numbers.keys("learning")
    out: dict[str, Any] = {
        "metric": store.get_meta("metric", "em"),
        "methods": {
            m: {"seeds": e["seeds"], **{k: e[k] for k in keys}, **{f"{k}_std": e[f"{k}_std"] for k in keys}}
            for m, e in summary.items()
        },
    }
    unlearners = [m for m, e in summary.items() if e["seeds"] and "forget" not in e["not_applied"]]
    if unlearners and has_forget(store):
        out["unlearning"] = summarize_unlearning(store, methods=unlearners)
    out["environments"] = store.get_meta("environments") or []
    out["weak_base"] = store.get_meta("weak_base")
    return out
