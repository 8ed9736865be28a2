"""In-stage curves (`train.eval_every`): the points a study draws forgetting and acquisition
curves from, stored per probe with the run."""

import pytest

from ckl.core.errors import InputError
from ckl.data.facts import Probe
from ckl.results.store import CurvePoint, Outcome, Store
from ckl.run.config import ExperimentConfig, load_config
from ckl.run.curves import select_probes
from ckl.run.experiment import run_experiment

CURVE = {"eval_every": 3, "eval_cohorts": ["invariant", "stage"], "eval_sample": 6}


def _config(stream_dir, model_dir, train):
    return ExperimentConfig.from_dict({
        "name": "curves", "stream": str(stream_dir), "model": str(model_dir),
        "methods": [{"name": "naive", "skip": ["forget"], "train": train}],
        "eval": {"kinds": ["statement", "question"]},
    })


@pytest.fixture(scope="module")
def curve_run(tmp_path_factory, tiny_stream, tiny_model_dir):
    stream_dir = tmp_path_factory.mktemp("stream")
    tiny_stream.save(stream_dir)
    run_dir = tmp_path_factory.mktemp("run")
    run_experiment(_config(stream_dir, tiny_model_dir, {"epochs": 12, "lr": 3e-3, "batch_size": 4, **CURVE}), run_dir, say=lambda m: None)
    return run_dir, stream_dir


def test_a_curve_follows_each_stage_from_its_first_step_to_its_last(curve_run):
    run_dir, _ = curve_run
    with Store(run_dir) as store:
        assert store.curve_runs() == [("naive", 0)]
        points = store.curve("naive", 0)
        infos = store.stage_infos("naive", 0)
        for stage in (1, 2):
            rows = [p for p in points if p["stage"] == stage]
            steps = sorted({p["step"] for p in rows})
            assert steps[0] == 0 and steps[1:-1] == list(range(3, steps[-1], 3)), "step 0, then every third step"
            assert {p["cohort"] for p in rows} == {"invariant", "stage1", "stage2"}
            taught = f"stage{stage}"
            start = next(p["accuracy"] for p in rows if p["step"] == 0 and p["cohort"] == taught)
            end = next(p["accuracy"] for p in rows if p["step"] == steps[-1] and p["cohort"] == taught)
            assert end > start, "the taught cohort is learned along the curve"
            start_nll = next(p["nll"] for p in rows if p["step"] == 0 and p["cohort"] == taught)
            assert next(p["nll"] for p in rows if p["step"] == steps[-1] and p["cohort"] == taught) < start_nll
            assert infos[stage]["notes"]["curve_seconds"] > 0
        # the last point is the trained model the row scores (naive has no post-step)
        last = max(p["step"] for p in points if p["stage"] == 2)
        curve = {o["probe_id"]: (o["em"], round(o["logprob"], 4)) for o in store.curve_outcomes("naive", 0, 2) if o["step"] == last}
        row = {o["probe_id"]: (o["em"], round(o["logprob"], 4)) for o in store.outcomes("naive", 0, 2)}
        assert curve and all(row[pid] == value for pid, value in curve.items())
        # at most eval_sample probes per cohort and kind, the same ones at every point
        per_step = {}
        for o in store.curve_outcomes("naive", 0, 1):
            per_step.setdefault(o["step"], set()).add(o["probe_id"])
        assert len({frozenset(v) for v in per_step.values()}) == 1
        counts = {}
        for o in store.curve_outcomes("naive", 0, 1):
            if o["step"] == 0:
                counts[(o["cohort"], o["kind"])] = counts.get((o["cohort"], o["kind"]), 0) + 1
        assert max(counts.values()) == 6 and set(k for k, _ in counts) == {"invariant", "stage1", "stage2"}


def test_curves_are_off_by_default_and_cost_nothing_then(tmp_path, curve_run, tiny_model_dir):
    _, stream_dir = curve_run
    run_experiment(_config(stream_dir, tiny_model_dir, {"epochs": 2, "lr": 3e-3}), tmp_path, say=lambda m: None)
    with Store(tmp_path) as store:
        assert store.curve_runs() == [] and "curve_seconds" not in store.stage_infos("naive", 0)[1]["notes"]


def test_a_stage_computed_again_replaces_its_curve(tmp_path):
    probe = Probe("p1", "Alda was born in", "Port Elmira", (), "statement", "invariant", "f1", 0, "base")
    with Store(tmp_path / "r.sqlite") as store:
        store.add_probes([probe])
        store.record_curve("m", 0, 1, [CurvePoint(0, 0, None, 0.1, [Outcome("p1", False, False, -3.0, "")]),
                                       CurvePoint(5, 1, 0.7, 0.1, [Outcome("p1", True, True, -0.5, "")])])
        store.record_curve("m", 0, 1, [CurvePoint(0, 0, None, 0.1, [Outcome("p1", False, False, -2.0, "")])])
        assert [(p["step"], p["accuracy"], p["nll"]) for p in store.curve("m", 0)] == [(0, 0.0, 2.0)]


def test_every_method_of_a_seed_is_scored_on_the_same_sample(tiny_stream):
    probes = tiny_stream.probes(kinds=("statement", "question"))
    a = select_probes(probes, ("stage",), 3, seed=0)
    assert a == select_probes(probes, ("stage",), 3, seed=0)
    assert {p.cohort for p in a} == {"stage1", "stage2"}
    assert select_probes(probes, ("stage",), 3, seed=1) != a
    assert select_probes(probes, ("stage1",), 0, seed=0) == [p for p in probes if p.cohort == "stage1"]
    assert [p.id for p in a] == [p.id for p in probes if p in a], "in the run's probe order"


def test_a_bad_curve_option_names_its_file_line_and_place_in_the_config(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("name: x\nworld: {people: 30}\nmethods:\n  - name: naive\n    train: {eval_every: 5, eval_cohorts: [invarient]}\n")
    with pytest.raises(InputError) as err:
        load_config(path)
    assert (err.value.file, err.value.line, err.value.field) == (str(path), 5, "methods[0].train.eval_cohorts")
    assert "did you mean 'invariant'" in err.value.message


def test_the_report_draws_the_curves_on_one_step_axis_across_stages(curve_run):
    from ckl.report.data import gather
    from ckl.report.html import report_page

    run_dir, _ = curve_run
    data = gather([run_dir])
    rows = data.methods[0].training_curve
    first_end = max(r["step"] for r in rows if r["stage"] == 1)
    assert min(r["global_step"] for r in rows if r["stage"] == 2) == first_end, "stage 2 starts where stage 1 ended"
    assert {r["seed"] for r in rows} == {0}
    page = report_page(data)
    assert "Inside the stages" in page and page.count("<svg") >= 2
