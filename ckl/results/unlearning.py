"""Per-method unlearning numbers of a run (`ckl show`, docs/unlearning.md).

Read from the store, computed by the pure functions of `ckl.evaluate.unlearning`, on
the run's metric (exact match unless configured) over statement probes:

    forget_before / forget_after   accuracy on every forgotten fact, row 0 / row T
    floor                          never-seen accuracy: the `unseen` cohort at row 0 if
                                   the stream has one, else each stage's new facts just
                                   before that stage teaches them (rows j-1), pooled
    efficacy                       (before - after) / (before - floor)
    kept_before / kept_after,      invariant facts (everything no stage touched) and its
      retention                    after / before ratio
    kfr / krr                      ReLearn's knowledge forgetting / retention rates, exact-
                                   match forms: 1 - forget_after, kept_after
    boundary_*                     the same on the forgotten subjects' other facts
    attack_before / attack_after   re-probed forgotten facts before / after the
                                   relearning attack; attack_original: the same facts at
                                   row 0; recovered: (after - before) / (original - before)
    ma_*, el_*, answer_ppl_*,      text-target metrics of the forgotten facts at row 0
      distinct_*, ls_*             (`_before`) and row T (`_after`), with eval.unlearning
                                   (ls: ReLearn's Linguistic Score of the generated answers);
    kept_ma_after, kept_ls_after   MA and Linguistic Score of the kept (invariant) facts at row T
    refusal_after, kept_refusal_after  the share of forgotten / kept facts answered with a
                                   refusal at row T (SafeEraser's refusal rate on the kept)
    seconds                        wall time of all stages (the unlearning itself)
"""

from __future__ import annotations

from typing import Any

from ckl.data import cohorts
from ckl.evaluate import unlearning as U
from ckl.evaluate.metrics import kept_ratio
from ckl.results import numbers
from ckl.results.store import Store, metric_column


def _mean_of(outcomes: list[dict], key: str) -> float | None:
    return sum(o[key] for o in outcomes) / len(outcomes) if outcomes else None


def _pooled_notes(notes: dict, cohorts: list[str], key: str) -> float | None:
    """A text-target metric pooled over cohorts, weighted by how many facts each measured."""
    parts = [(notes[c][key], notes[c]["n"]) for c in cohorts if c in notes and notes[c].get(key) is not None]
    total = sum(n for _, n in parts)
    return sum(v * n for v, n in parts) / total if total else None


def unlearning_seed(store: Store, method: str, seed: int, metric: str = "em", kinds=("statement",)) -> dict[str, Any]:
    """The unlearning numbers of one (method, seed); None where not measurable."""
    T = int(store.get_meta("T"))
    key = metric_column(metric)
    infos = {i["row"]: i for i in store.stage_infos(method, seed)}
    if set(range(T + 1)) - {r for r, i in infos.items() if i["status"] == "ok"}:
        return {"complete": False}

    def rows(row: int, keep=lambda o: True) -> list[dict]:
        return [o for o in store.outcomes(method, seed, row) if o["kind"] in kinds and keep(o)]

    first, last = rows(0), rows(T)
    forget = lambda o: o["change"] == "forget"
    out: dict[str, Any] = {"complete": True}
    out["forget_before"] = _mean_of([o for o in first if forget(o)], key)
    out["forget_after"] = _mean_of([o for o in last if forget(o)], key)
    unseen = [o for o in first if o["cohort"] == cohorts.UNSEEN]
    if unseen:
        out["floor"] = _mean_of(unseen, key)
    else:  # the world's new facts just before their stage teaches them
        pre = [o for j in range(1, T + 1) for o in rows(j - 1) if o["cohort"] == cohorts.name(cohorts.STAGE, j) and o["change"] == "learn"]
        out["floor"] = _mean_of(pre, key)
    out["efficacy"] = U.forget_efficacy(out["forget_before"], out["forget_after"], out["floor"])
    inv = lambda o: o["cohort"] == cohorts.INVARIANT
    out["kept_before"], out["kept_after"] = _mean_of([o for o in first if inv(o)], key), _mean_of([o for o in last if inv(o)], key)
    out["retention"] = kept_ratio(out["kept_before"], out["kept_after"])
    # ReLearn's KFR and KRR in their exact-match forms (ckl.evaluate.unlearning)
    out["kfr"] = None if out["forget_after"] is None else 1 - out["forget_after"]
    out["krr"] = out["kept_after"]
    boundary = set(store.get_meta("boundary", []) or [])
    edge = lambda o: inv(o) and o["fact_id"] in boundary
    out["boundary_before"], out["boundary_after"] = _mean_of([o for o in first if edge(o)], key), _mean_of([o for o in last if edge(o)], key)
    out["boundary_retention"] = kept_ratio(out["boundary_before"], out["boundary_after"])
    attack = store.attacks(method, seed).get(T)
    if attack and attack["probe_ids"]:
        at_start = {o["probe_id"]: o["em"] for o in first}
        out["attack_original"] = sum(at_start[p] for p in attack["probe_ids"]) / len(attack["probe_ids"])
        out["attack_before"], out["attack_after"] = attack["accuracy_before"], attack["accuracy_after"]
        out["recovered"] = U.recovered_fraction(out["attack_original"], out["attack_before"], out["attack_after"])
        out["attack_unseen_before"], out["attack_unseen_after"] = attack.get("unseen_before"), attack.get("unseen_after")
        out["attack"] = attack["config"]
    notes0, notesT = (infos[0]["notes"] or {}).get("unlearning"), (infos[T]["notes"] or {}).get("unlearning")
    if notes0 and notesT:
        forget_cohorts = cohorts.names(cohorts.FORGET, T)
        for name in ("ma", "el", "answer_ppl", "distinct", "ls"):
            out[f"{name}_before"] = _pooled_notes(notes0, forget_cohorts, name)
            out[f"{name}_after"] = _pooled_notes(notesT, forget_cohorts, name)
        out["kept_ma_after"] = _pooled_notes(notesT, [cohorts.INVARIANT], "ma")
        out["kept_ls_after"] = _pooled_notes(notesT, [cohorts.INVARIANT], "ls")
        out["refusal_after"] = _pooled_notes(notesT, forget_cohorts, "refusal")
        out["kept_refusal_after"] = _pooled_notes(notesT, [cohorts.INVARIANT], "refusal")
    out["seconds"] = sum(i["seconds"] for r, i in infos.items() if r > 0)
    out.update(numbers.computed("unlearning", numbers.SeedView(store, method, seed, metric, tuple(kinds), T)))
    return out


def summarize_unlearning(store: Store, metric: str | None = None, kinds=("statement",), methods=None) -> dict[str, dict[str, Any]]:
    """Per method (all, or those named in `methods`): the mean over complete seeds of each
    number (None if never measured)."""
    metric = metric or store.get_meta("metric", "em")
    per_method: dict[str, list[dict]] = {}
    for method, seed in store.runs():
        if methods is not None and method not in methods:
            continue
        per_method.setdefault(method, []).append(unlearning_seed(store, method, seed, metric, kinds))
    out = {}
    for method, seeds in per_method.items():
        done = [s for s in seeds if s["complete"]]
        entry: dict[str, Any] = {"seeds": len(done)}
        for k in numbers.keys("unlearning"):
            entry[k] = numbers.mean_std(s.get(k) for s in done)[0]
        out[method] = entry
    return out


def has_forget(store: Store) -> bool:
    """Whether the run's stream has deletion requests (its probes have a forget cohort)."""
    return any(p.change == "forget" for p in store.probes())


def _row(entry: dict) -> list[str]:
    return [n.format(entry.get(n.key)) for n in numbers.columns("unlearning")]


def unlearning_markdown(summary: dict[str, dict[str, Any]]) -> str:
    cols = numbers.columns("unlearning")
    lines = ["| method | " + " | ".join(n.label for n in cols) + " |", "|---|" + "---|" * len(cols)]
    for method, entry in summary.items():
        lines.append(f"| {method} | " + " | ".join(_row(entry)) + " |")
    return "\n".join(lines)


# The text-target columns (measured with eval.unlearning): in a terminal they get a table
# of their own, so that neither table squeezes its headers at ordinary widths.
TEXT_COLUMNS = frozenset({"ma_after", "el_after", "answer_ppl_after", "distinct_after", "kept_ma_after", "ls_after", "kept_ls_after"})


def unlearning_table(summary: dict[str, dict[str, Any]], title: str = ""):
    """The unlearning key table for a terminal: the forgetting columns, then (when any
    method measured them) the text-target columns in a second table."""
    from rich.console import Group
    from rich.table import Table

    cols = numbers.columns("unlearning")
    groups = [[n for n in cols if n.key not in TEXT_COLUMNS], [n for n in cols if n.key in TEXT_COLUMNS]]
    tables = []
    for k, group in enumerate(groups):
        if k and not any(entry.get(n.key) is not None for entry in summary.values() for n in group):
            continue  # no text-target metrics in this run
        table = Table(title=(title if k == 0 else f"{title}: text-target metrics" if title else None) or None, header_style="bold")
        table.add_column("method")
        for n in group:
            table.add_column(n.label, justify="right")
        for method, entry in summary.items():
            table.add_row(method, *[n.format(entry.get(n.key)) for n in group])
        tables.append(table)
    return Group(*tables)
