"""`ckl update`: apply new, changed and deleted facts to a model, and refuse to ship it
when it forgot too much.

The workflow, in order (everything that can be wrong with the inputs is checked in
steps 1-2, before the model is loaded, and ends with exit code 2 and nothing written):

    1. parse the gates; check --out is a new or empty directory outside --model
       (no gate at all is refused unless --no-gates asks to write the model unchecked)
    2. read and cross-check the fact files; build the method; refuse forget requests
       the method cannot apply
    3. load the model (read only: the input directory is never written)
    4. the keep-set: --keep, or facts of --facts that the model answers correctly now
       (a deterministic sample for --seed); it is held out of replay, so retention
       measures facts the method did not train on
    5. score every probe (learned, updated, stale, forget, keep; statement, paraphrase
       and question forms) before and after applying the change as one stage
    6. check the gates on the statement probes (greedy exact match)
    7. write OUT/report.json and OUT/report.html always; OUT/model (safetensors) only
       when every gate passes. When a gate fails the model is not written at all (so
       it cannot be shipped by mistake), unless --save-rejected asks for it in
       OUT/rejected_model.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckl.core.errors import DivergenceError, InputError
from ckl.data.facts import Fact, Probe, atomic_write_text
from ckl.evaluate.metrics import kept_ratio
from ckl.app.update.gates import Gate, check_measurable, parse_gate
from ckl.app.update.inputs import UpdateInputs, check_inputs, read_inputs
from ckl.data.check import raise_errors

KINDS = ("statement", "paraphrase", "question")
GATE_KIND = "statement"
MAX_CANDIDATES = 10
POOL_FACTOR = 5  # facts scored to find `keep_size` the model knows


@dataclass
class UpdateRequest:
    """What the user asked for: the one definition of `ckl update`'s options (the
    command's flags, defaults and help are built from these fields)."""

    model: Path = field(metadata={"help": "the Hugging Face model directory to update (never modified)"})
    out: Path = field(metadata={"help": "new directory for the updated model and the report"})
    relations: Path = field(metadata={"help": "relations.jsonl: templates to train and probe with"})
    method: str = field(default="replay", metadata={"help": "method expression, e.g. replay or lora+replay (see `ckl methods`)"})
    facts: Path | None = field(default=None, metadata={"help": "facts.jsonl: what the model knows now (for ids, replay and the keep-set)"})
    learn: Path | None = field(default=None, metadata={"help": "facts.jsonl of new facts"})
    update: Path | None = field(default=None, metadata={"help": "facts whose object changed (JSONL: id, object[, subject, relation, old_object])"})
    forget: Path | None = field(default=None, metadata={"help": "facts to unlearn (JSONL: id[, subject, relation, object])"})
    keep: Path | None = field(default=None, metadata={"help": "facts.jsonl that must stay known (default: sampled from --facts)"})
    corpus: Path | None = field(default=None, metadata={"help": "plain text to continue pretraining on (domain text), one document a line"})
    gates: list[str] = field(default_factory=list, metadata={"flag": "--gate", "metavar": "<condition>", "help": 'a condition to ship, e.g. "retention>=0.98" (repeatable)'})
    options: Path | None = field(default=None, metadata={"help": "YAML of method options, e.g. {train: {epochs: 20}, replay: {fraction: 0.5}}"})
    epochs: int | None = field(default=None, metadata={"help": "training epochs (overrides --options)"})
    lr: float | None = field(default=None, metadata={"help": "learning rate (overrides --options)"})
    keep_size: int = field(default=200, metadata={"help": "facts sampled into the keep-set"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    save_rejected: bool = field(default=False, metadata={"help": "when a gate fails, still write the model, to OUT/rejected_model"})
    batch_size: int = field(default=64, metadata={"help": "probes scored per batch"})
    no_gates: bool = field(default=False, metadata={"help": "write the model without checking any gate (otherwise at least one --gate is required)"})


@dataclass
class UpdateResult:
    passed: bool
    report: dict[str, Any]
    out: Path


# ------------------------------------------------------------------------ checks


def _check_out(out: Path, model: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(str(out), None, None, "--out must be a new or empty directory")
    model_r, out_r = model.resolve(), out.resolve()
    if out_r == model_r or model_r in out_r.parents:
        raise InputError(str(out), None, None, "--out must be outside the input model directory (it is never modified)")


def _method_options(req: UpdateRequest) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if req.options is not None:
        from ckl.run.config import parse_yaml
        from ckl.data.facts import read_input_text

        loaded, _ = parse_yaml(read_input_text(req.options), str(req.options))  # FIFOs, keys given twice, huge numbers refused
        if loaded is not None and not isinstance(loaded, dict):
            raise InputError(str(req.options), None, None, "expected a mapping of method options, e.g. {train: {epochs: 20}}")
        options = dict(loaded or {})
    train = dict(options.get("train") or {})
    if req.epochs is not None:
        train["epochs"] = req.epochs
    if req.lr is not None:
        train["lr"] = req.lr
    if train:
        options["train"] = train
    return options


def _build(req: UpdateRequest, options: dict[str, Any], inputs: UpdateInputs):
    from ckl.methods.base import build_method, load_builtin

    try:
        method = build_method(req.method, options, where="method")
    except ValueError as err:
        raise InputError(str(req.options) if req.options else "--method", None, None, str(err)) from None
    flags = {"learn": "--learn", "update": "--update", "forget": "--forget", "corpus": "--corpus"}
    for kind, flag in flags.items():
        if getattr(inputs.change, kind) and kind not in method.kinds:
            able = sorted(n for n, e in load_builtin().items() if kind in e.kinds)
            hint = f"methods that can: {', '.join(able)}" if able else "no installed method can"
            raise InputError(flag, None, None,
                             f"method {req.method!r} cannot apply {kind} requests ({hint}); "
                             f"choose such a method or leave out {flag}")
    if method.kept_outside_weights():  # the written directory would lack the modules the gates measured
        raise InputError("--method", None, None,
                         f"{', '.join(method.kept_outside_weights())} keeps what it learns outside the model's weights (adapters, a "
                         "hooked memory or prompt demonstrations), which a Hugging Face model directory cannot hold; "
                         "use a method that ends in the weights (e.g. replay, lora, olora, memit)")
    return method


def _measured(inputs: UpdateInputs) -> set[str]:
    change = inputs.change
    names = {"retention", "keep"}
    if change.learn:
        names.add("acquisition")
    if change.update:
        names.add("update")
        if any(r.old_object for r in change.update):
            names.add("stale")
    if change.forget:
        names.add("forget")
    return names


# ------------------------------------------------------------------------ probes


def _probes(inputs: UpdateInputs, keep: list[Fact]) -> list[Probe]:
    from ckl.data.stream import make_probes

    rel, ch = inputs.relations, inputs.change
    news = {r.fact.id: r.fact.object for r in ch.update}
    olds = {r.fact.id: r.old_object for r in ch.update if r.old_object}
    stale = [Fact(r.fact.id, r.fact.subject, r.fact.relation, r.old_object) for r in ch.update if r.old_object]
    return (
        make_probes(ch.learn, rel, "learn", 1, "learn", KINDS, MAX_CANDIDATES)
        + make_probes([r.fact for r in ch.update], rel, "update", 1, "update", KINDS, MAX_CANDIDATES, olds)
        + make_probes(stale, rel, "stale", 1, "update", KINDS, MAX_CANDIDATES, news)
        + make_probes(ch.forget, rel, "forget", 1, "forget", KINDS, MAX_CANDIDATES)
        + make_probes(keep, rel, "keep", 0, "base", KINDS, MAX_CANDIDATES)
    )


def _score(model, tokenizer, probes: list[Probe], batch_size: int) -> dict[str, dict[str, Any]]:
    from ckl.model.scoring import score_probes

    s = score_probes(model, tokenizer, probes, batch_size=batch_size)
    return {p.id: {"em": bool(e), "rank_ok": bool(r), "predicted": pred} for p, e, r, pred in zip(probes, s.em, s.rank_ok, s.predicted)}


def _sample_keep(model, tokenizer, inputs: UpdateInputs, size: int, seed: int, batch_size: int) -> list[Fact]:
    from ckl.data.stream import make_probes

    touched = inputs.change.touched()
    pool = [f for f in inputs.known if f.id not in touched]
    random.Random(seed).shuffle(pool)
    pool = pool[: size * POOL_FACTOR]
    probes = make_probes(pool, inputs.relations, "keep", 0, "base", (GATE_KIND,), MAX_CANDIDATES)
    scores = _score(model, tokenizer, probes, batch_size) if probes else {}
    known = {p.fact_id for p in probes if scores[p.id]["em"]}
    keep = [f for f in pool if f.id in known][:size]
    if not keep:
        raise InputError("--facts", None, None, f"the model answers none of {len(pool)} sampled facts correctly; give a --keep file")
    return keep


# ------------------------------------------------------------------------ measures


def _accuracy(probes: list[Probe], scores: dict, cohort: str, kind: str) -> float | None:
    hits = [scores[p.id]["em"] for p in probes if p.cohort == cohort and p.kind == kind]
    return sum(hits) / len(hits) if hits else None


def _cohort_table(probes: list[Probe], before: dict, after: dict) -> dict[str, dict[str, dict[str, Any]]]:
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for cohort in ("learn", "update", "stale", "forget", "keep"):
        for kind in KINDS:
            n = sum(1 for p in probes if p.cohort == cohort and p.kind == kind)
            if n:
                table.setdefault(cohort, {})[kind] = {
                    "n": n, "before": _accuracy(probes, before, cohort, kind), "after": _accuracy(probes, after, cohort, kind),
                }
    return table


def _measures(cohorts: dict) -> dict[str, dict[str, float | None]]:
    def acc(cohort: str, when: str) -> float | None:
        return cohorts.get(cohort, {}).get(GATE_KIND, {}).get(when)

    out = {name: {"before": acc(c, "before"), "after": acc(c, "after")}
           for name, c in (("acquisition", "learn"), ("update", "update"), ("stale", "stale"), ("forget", "forget"), ("keep", "keep"))}
    kb, ka = acc("keep", "before"), acc("keep", "after")
    out["retention"] = {"before": 1.0 if kb else None, "after": kept_ratio(kb, ka)}
    return out


def _problems(probes: list[Probe], before: dict, after: dict) -> dict[str, list[dict[str, Any]]]:
    def row(p: Probe) -> dict[str, Any]:
        return {"fact_id": p.fact_id, "prompt": p.prompt, "expected": p.answer, "answer": after[p.id]["predicted"],
                "ranked_first": after[p.id]["rank_ok"]}

    stmt = [p for p in probes if p.kind == GATE_KIND]
    return {
        "forgotten": [row(p) for p in stmt if p.cohort == "keep" and before[p.id]["em"] and not after[p.id]["em"]],
        "not_learned": [row(p) for p in stmt if p.cohort in ("learn", "update") and not after[p.id]["em"]],
        "still_stale": [row(p) for p in stmt if p.cohort == "stale" and after[p.id]["em"]],
        "not_forgotten": [row(p) for p in stmt if p.cohort == "forget" and after[p.id]["em"]],
    }


# ------------------------------------------------------------------------ the workflow


def run_update(req: UpdateRequest, say: Callable[[str], None] = print, progress=None) -> UpdateResult:
    """Run the whole update (module docstring); returns whether every gate passed.

    Raises:
        InputError: any problem with the inputs, before anything is written.
    """
    from ckl.model import lm
    from ckl.model import scoring
    from ckl.run.experiment import make_accelerator
    from ckl.methods.base import StageContext, apply_stage

    gates = [parse_gate(g) for g in req.gates]
    model_dir, out = Path(req.model), Path(req.out)
    if not (model_dir / "config.json").is_file():
        raise InputError(str(model_dir), None, None, "not a Hugging Face model directory (no config.json)")
    _check_out(out, model_dir)
    inputs = read_inputs(req.relations, req.facts, req.learn, req.update, req.forget, req.keep, req.corpus)
    findings = check_inputs(inputs, req.relations, req.facts, req.learn, req.update, req.forget, req.keep)
    raise_errors(findings)  # what loads but would make the update wrong: errors stop here, warnings print below
    for flag, value in (("--keep-size", req.keep_size), ("--batch-size", req.batch_size)):
        if value < 1:
            raise InputError(flag, None, None, f"must be >= 1, got {value}")
    options = _method_options(req)
    method = _build(req, options, inputs)
    check_measurable(gates, _measured(inputs))
    if not gates and not req.no_gates:  # the last input check: every other mistake is named first
        raise InputError("--gate", None, None, (
            "no gate given: the model would be written whatever it learned or forgot. Give at least one, "
            "e.g. --gate \"retention>=0.98\" --gate \"acquisition>=0.9\", or --no-gates to write it unchecked"))
    if gates and req.no_gates:
        raise InputError("--no-gates", None, None, "conflicts with --gate; give one or the other")

    model, tokenizer = lm.load(model_dir)
    change = inputs.change
    known = [*inputs.known, *change.learn, *(r.fact for r in change.update), *(inputs.keep or [])]
    lm.check_vocabulary(tokenizer, lm.stream_texts(inputs.relations, known, change.corpus), str(model_dir / "tokenizer"))
    for finding in findings:  # warnings, once every input check passed
        say(str(finding))
    accelerator = make_accelerator()
    model.to(accelerator.device)
    keep = inputs.keep if inputs.keep is not None else _sample_keep(model, tokenizer, inputs, req.keep_size, req.seed, req.batch_size)
    say(f"keep-set: {len(keep)} facts ({'given' if inputs.keep is not None else 'sampled from --facts, answered correctly now'})")
    probes = _probes(inputs, keep)
    before = _score(model, tokenizer, probes, req.batch_size)

    keep_ids = {f.id for f in keep}
    ctx = StageContext(
        relations=inputs.relations, base=[f for f in inputs.known if f.id not in keep_ids], stage=1, seed=req.seed,
        tokenizer=tokenizer, accelerator=accelerator, change=inputs.change,
        progress=(lambda e, s, loss: progress.train_step(s, loss)) if progress else None,
        known=scoring.known_fraction(tokenizer, inputs.relations),
    )
    ch = inputs.change
    corpus = f" and {len(ch.corpus)} corpus document(s)" if ch.corpus else ""
    say(f"applying {len(ch.learn)} new, {len(ch.update)} updated, {len(ch.forget)} forgotten fact(s){corpus} with {method.name}")
    if progress:
        progress.start(f"update ({method.name})", 1)
    error = None
    try:
        model, stats = apply_stage(method, model, ch, ctx)
    except DivergenceError as err:
        error, stats = str(err), None
    if progress:
        progress.advance()

    after = _score(model, tokenizer, probes, req.batch_size) if error is None else None
    report = _report(req, options, inputs, keep, probes, before, after, gates, stats, error)
    out.mkdir(parents=True, exist_ok=True)
    if report["passed"] or req.save_rejected:
        target = out / ("model" if report["passed"] else "rejected_model")
        lm.save(model, tokenizer, target)
        report["model_written"] = str(target)
    _write_report(out, report)
    _tell(report, out, say)
    return UpdateResult(report["passed"], report, out)


def _report(req, options, inputs, keep, probes, before, after, gates: list[Gate], stats, error) -> dict[str, Any]:
    ch = inputs.change
    report: dict[str, Any] = {
        "model": str(req.model), "method": req.method, "options": options, "seed": req.seed,
        "changes": {"learn": len(ch.learn), "update": len(ch.update), "forget": len(ch.forget), "corpus": len(ch.corpus)},
        "keep": {"size": len(keep), "source": str(req.keep) if req.keep else f"sampled from {req.facts}"},
        "error": error, "model_written": None,
    }
    if after is None:
        report.update(passed=False, gates=[], measures={}, cohorts={}, problems={}, cost={})
        return report
    cohorts = _cohort_table(probes, before, after)
    measures = _measures(cohorts)
    checked = [{"gate": g.text, "name": g.name, "op": g.op, "threshold": g.threshold,
                "value": measures[g.name]["after"], "passed": g.check(measures[g.name]["after"])} for g in gates]
    report.update(
        passed=all(g["passed"] for g in checked), gates=checked, measures=measures, cohorts=cohorts,
        problems=_problems(probes, before, after),
        cost={"seconds": stats.seconds, "trainable_params": stats.trainable_params, "total_params": stats.total_params,
              "tokens_seen": stats.tokens_seen, "steps": stats.steps},
    )
    return report


def _write_report(out: Path, report: dict[str, Any]) -> None:
    from ckl.app.update.page import update_page

    atomic_write_text(out / "report.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(out / "report.html", update_page(report))


def _tell(report: dict[str, Any], out: Path, say: Callable[[str], None]) -> None:
    for name in ("acquisition", "update", "stale", "forget", "keep", "retention"):
        m = report["measures"].get(name)
        if m and m["after"] is not None:
            before = "" if m["before"] is None else f"{m['before']:.3f} -> "
            say(f"  {name:<12} {before}{m['after']:.3f}")
    for g in report["gates"]:
        value = "not measured" if g["value"] is None else f"{g['value']:.3f}"
        say(f"  gate {g['gate']}: {'passed' if g['passed'] else 'FAILED'} (measured {value})")
    if report["error"]:
        say(f"update FAILED: {report['error']}")
    if report["passed"] and not report["gates"]:
        say(f"no gates checked (--no-gates): updated model in {report['model_written']}; report in {out / 'report.html'}")
        return
    if report["passed"]:
        say(f"all gates passed: updated model in {report['model_written']}; report in {out / 'report.html'}")
        return
    failed = ", ".join(f"{g['gate']} (measured {'none' if g['value'] is None else format(g['value'], '.3f')})" for g in report["gates"] if not g["passed"])
    where = f"written to {report['model_written']} for inspection only" if report["model_written"] else "not written (--save-rejected keeps it for inspection)"
    say(f"gate FAILED: {failed or report['error']}. The updated model is NOT to be shipped: {where}. Report: {out / 'report.html'}")
