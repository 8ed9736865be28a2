"""Editing the default world's base model: single ROME edits and MEMIT batches (issue: editing that works).

Not a test. Given a stream directory and a model pretrained on it (`ckl world` + `ckl
pretrain`), it picks `--edits` invariant base facts of distinct people, each rewritten to
another candidate object, and measures
  - ROME, every edit applied alone to the unedited model, and
  - MEMIT, the same edits in batches of `--batch`, each batch applied to the unedited model,
with efficacy (statement probe of the new object, greedy exact match), paraphrase
efficacy (the held-out paraphrase probe of the new object), extraction efficacy (the
question probe, for people outside the QA half) and locality (the share of `--locality`
other people's invariant statement answers left unchanged). One line per editor:

    OMP_NUM_THREADS=2 .venv/bin/python bench/edit_world.py --stream W --model M [--edits 100 --batch 100]

With --stream-edits it edits an imported stream's own first edit records instead
(CounterFact, zsRE: docs/editing.md); locality then counts other records' facts.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import random
import time

import torch

from ckl.model import lm
from ckl.model.scoring import score_probes
from ckl.data.facts import ChangeRecord, Fact
from ckl.methods.base import StageContext, build_method, load_builtin
from ckl.data.stream import Change, Stream, make_probes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stream", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--edits", type=int, default=100)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--locality", type=int, default=300, help="other people's facts checked for unchanged answers")
    ap.add_argument("--subject-token", default="last", choices=("last", "first"))
    ap.add_argument("--editors", default="rome,memit")
    ap.add_argument("--stream-edits", action="store_true",
                    help="edit the stream's own first --edits edit records (an imported CounterFact/zsRE stream) instead of drawing invariant facts")
    ap.add_argument("--options", default="{}", help="JSON options for both editors, e.g. '{\"layer\": 0}'")
    args = ap.parse_args()

    stream = Stream.load(args.stream)
    base, tokenizer = lm.load(args.model)
    rng = random.Random(0)
    invariant = stream.invariant()
    by_subject: dict[str, list[Fact]] = {}
    for f in invariant:
        by_subject.setdefault(f.subject, []).append(f)
    if not args.stream_edits and args.edits > len(by_subject):
        raise SystemExit(f"--edits {args.edits}: the stream has only {len(by_subject)} people with invariant facts")
    if args.stream_edits:
        own = [r for r in stream.records() if r.kind == "edit"][: args.edits]
        records = [ChangeRecord(1, "edit", Fact(r.fact.id, r.fact.subject, r.fact.relation, r.fact.object, 1), r.old_object) for r in own]
        base_by_id = {f.id: f for f in stream.base}
        chosen = [base_by_id[r.fact.id] for r in records]
        subjects = [f.subject for f in chosen]
    else:
        subjects = rng.sample(sorted(by_subject), args.edits)
        chosen = [rng.choice(by_subject[s]) for s in subjects]
        records = []
        for f in chosen:
            new = rng.choice([c for c in stream.relations[f.relation].candidates if c != f.object])
            records.append(ChangeRecord(1, "edit", Fact(f.id, f.subject, f.relation, new, 1), f.object))
    edited = set(subjects)
    others = rng.sample([f for f in invariant if f.subject not in edited], args.locality)
    kinds = ("statement", "paraphrase", "question", "extraction")
    probes = make_probes([r.fact for r in records], stream.relations, "edit", 1, "edit", kinds, 10, qa_subjects=stream.qa_subjects)
    local = make_probes(others, stream.relations, "local", 0, "base", ("statement",), 10)
    before_local = score_probes(base, tokenizer, local).predicted
    known_before = float(score_probes(base, tokenizer, make_probes(chosen, stream.relations, "k", 0, "base", ("statement",), 10)).em.mean())
    print(json.dumps({"model": args.model, "threads": torch.get_num_threads(), "edits": len(records), "known_before": known_before}))

    def ctx_for(change):
        return StageContext(stream.relations, stream.base, 1, 0, tokenizer, None, change=change, general_text=stream.general_train,
                            background=stream.background, qa_subjects=stream.qa_subjects, model_dir=args.model)

    for name in args.editors.split(","):
        known = {f.name for f in dataclasses.fields(load_builtin()[name].config)}
        options = {k: v for k, v in ({"subject_token": args.subject_token} | json.loads(args.options)).items() if k in known}
        groups = [[r] for r in records] if name == "rome" else [records[i : i + args.batch] for i in range(0, len(records), args.batch)]
        totals: dict[str, float] = {}
        start = time.perf_counter()
        for group in groups:  # every group from the unedited model
            model = copy.deepcopy(base)
            change = Change(1, edit=tuple(group))
            model, _ = build_method(name, {name: options}).apply(model, change, ctx_for(change))
            s = score_probes(model, tokenizer, [p for p in probes if p.fact_id in {r.fact.id for r in group}])
            for k in kinds:
                hits = [bool(e) for e, p in zip(s.em, [p for p in probes if p.fact_id in {r.fact.id for r in group}]) if p.kind == k]
                if hits:
                    totals[k + "_hits"] = totals.get(k + "_hits", 0) + sum(hits)
                    totals[k + "_n"] = totals.get(k + "_n", 0) + len(hits)
            after = score_probes(model, tokenizer, local).predicted
            totals["locality"] = totals.get("locality", 0) + sum(a == b for a, b in zip(before_local, after)) / len(local)
        row = {"editor": name, "batch": 1 if name == "rome" else args.batch, "options": options,
               "seconds": round(time.perf_counter() - start, 1)}
        row |= {k: round(totals[k + "_hits"] / totals[k + "_n"], 3) for k in kinds if totals.get(k + "_n")}
        row["locality"] = round(totals["locality"] / len(groups), 3)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
